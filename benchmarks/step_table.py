r"""A markdown table of PGD-AT step records: awt against its PyTorch peers.

  python -m benchmarks.step_table RECORDS.jsonl [MORE.jsonl ...]

Reads the JSON lines of ``benchmarks/train_step.py`` (``framework: jax``)
and ``benchmarks/peers/torch_pgd_at.py`` (``framework: torch``) and prints
one table row per (model, dtype) of any record: awt's images/s, its
GFLOP/s and that as a fraction of its device's matmul rate, each PyTorch
configuration's images/s (eager or ``torch.compile``, NCHW or
channels-last; bfloat16 is autocast there), and awt's speed over the
fastest of them. ``benchmarks/gpu.sh``
runs it on the records of the resnet18 GPU rows (issue 17).

GFLOP/s counts the FLOPs of awt's step (``flops_per_call``:
``benchmarks._flops.count``, the jaxpr with loop bodies times their trip
counts) for both frameworks: the same network, attack and batch. "of peak"
divides a framework's GFLOP/s by its own record's ``matmul_gflop_per_s``
(``--peak``: one large matrix product in the compute dtype on the same
device), so it reads "how near this step runs to what the device's matmul
reaches", not a fraction of the data sheet's number. A record with
``error`` (a failed ``torch.compile``) shows as its error; a missing value
as "–".
"""

from benchmarks import _common
from experiments import _main


def peer_label(record: dict) -> str:
  """``eager``, ``compile``, with ``+channels_last`` when it was."""
  label = record.get("mode", "eager")
  return label + ("+channels_last" if record.get("channels_last") else "")


def _gflop_per_s(record: dict, flops_per_call: float | None):
  if flops_per_call is None or "images_per_s" not in record:
    return None
  batch = record["input_shape"][0]
  return flops_per_call * record["images_per_s"] / batch / 1e9


def _fraction(gflop_per_s, record: dict):
  peak = record.get("matmul_gflop_per_s")
  return None if gflop_per_s is None or not peak else gflop_per_s / peak


def rows(records: list[dict]) -> tuple[list[str], list[list]]:
  """``(peer labels, rows)``: one row per (model, dtype) of any record.

  A row is ``[model, dtype, awt img/s, awt GFLOP/s, awt of peak, {label:
  (img/s or error, GFLOP/s, of peak)}, awt / fastest peer]``, None where
  awt has no record (then no GFLOP/s either: the FLOPs are awt's count);
  a later record of the same configuration replaces an earlier one.
  """
  steps = [r for r in records if r.get("benchmark") == "train_step"]
  ours, peers, labels = {}, {}, []
  for r in steps:
    key = (r["model"], r["dtype"])
    peers.setdefault(key, {})
    if r["framework"] == "jax":
      ours[key] = r
      continue
    label = peer_label(r)
    peers[key][label] = r
    if label not in labels:
      labels.append(label)
  out = []
  for (model, dtype), theirs_records in peers.items():
    r = ours.get((model, dtype), {})
    flops = r.get("flops_per_call")
    gflops = _gflop_per_s(r, flops)
    theirs, fastest = {}, None
    for label, p in theirs_records.items():
      if "error" in p:
        theirs[label] = (p["error"], None, None)
        continue
      g = _gflop_per_s(p, flops)
      theirs[label] = (p["images_per_s"], g, _fraction(g, p))
      fastest = max(fastest or 0.0, p["images_per_s"])
    ips = r.get("images_per_s")
    ratio = ips / fastest if ips and fastest else None
    out.append([model, dtype, ips, gflops, _fraction(gflops, r), theirs, ratio])
  return labels, out


def markdown(labels: list[str], table: list[list]) -> str:
  """The table as markdown: img/s (GFLOP/s, of peak) per framework."""
  head = ["model", "dtype", "awt img/s (GFLOP/s, of peak)"]
  head += [f"torch {label}" for label in labels] + ["awt / fastest torch"]
  num = _common.table_number
  cell = lambda i, g, f: f"{num(i)} ({num(g)}, {num(f, 2)})"
  lines = []
  for model, dtype, ips, gflops, frac, theirs, ratio in table:
    cells = [model, dtype, cell(ips, gflops, frac)]
    for label in labels:
      cells.append(cell(*theirs[label]) if label in theirs else "–")
    cells.append(num(ratio))
    lines.append(cells)
  return _common.markdown_table(head, lines)


def main(argv):
  if len(argv) < 2:
    raise ValueError("give the JSON-lines files of train_step / torch_pgd_at")
  print(markdown(*rows(_common.read_records(argv[1:]))), flush=True)


if __name__ == "__main__":
  _main.run(main)
