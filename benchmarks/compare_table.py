r"""A markdown table of ``benchmarks.compare`` records: one row per task.

  python -m benchmarks.compare_table RECORDS.jsonl [MORE.jsonl ...]

``benchmarks.compare`` prints it on stderr when it ends; this rebuilds it
from saved records. A row gives, for one ``KIND:MODEL`` task, the median
and range over the pairs (one number when the range is one) of awt's
images/s over the fastest PyTorch peer's (issue 17's measure), the median
ratio against each peer, awt's images/s, the GFLOP/s of awt and of the
fastest peer (awt's FLOP count for both: the same network, attack and
batch), and the 1024³ float32 matmul rate each side's worker measured
(XLA / PyTorch, a range over the peers' workers): how far each step runs
from what the machine's matmul reaches. A peer that failed shows as
"failed"; a later record of a task's peer replaces an earlier one.
"""

from benchmarks import _common
from experiments import _main


def _span(values, digits: int = 3) -> str:
  """``lo–hi`` of numbers, each to ``digits`` significant digits; one
  number when they print the same."""
  lo, hi = (_common.table_number(v, digits) for v in (min(values), max(values)))
  return lo if lo == hi else f"{lo}–{hi}"


def rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
  """``(peer names, rows)`` of the ``benchmark: compare`` records.

  A row is ``[task, vs fastest, {peer: median ratio or "failed"}, awt
  img/s, awt GFLOP/s, fastest peer's GFLOP/s, matmul XLA / torch]`` as
  strings, tasks in the order they first appear.
  """
  tasks, peers = {}, []
  for r in records:
    if r.get("benchmark") != "compare":
      continue
    task = f"{r['task']}:{r['model']}"
    tasks.setdefault(task, {})[r["peer"]] = r
    if r["peer"] != "fastest" and r["peer"] not in peers:
      peers.append(r["peer"])
  out = []
  for task, by_peer in tasks.items():
    fastest = by_peer.get("fastest", {})
    if "ratio_median" not in fastest:
      out.append([task, "no peer ran", {}, "–", "–", "–", "–"])
      continue
    ratios = {
      p: "failed" if "error" in r else f"{r['ratio_median']:.2f}"
      for p, r in by_peer.items()
      if p != "fastest"
    }
    torch_peaks = [
      r["peer_matmul_gflop_per_s"]
      for p, r in by_peer.items()
      if p != "fastest" and "error" not in r
    ]
    lo, hi = fastest["ratio_min"], fastest["ratio_max"]
    spread = f" ({lo:.2f}–{hi:.2f})" if f"{lo:.2f}" != f"{hi:.2f}" else ""
    out.append(
      [
        task,
        f"**{fastest['ratio_median']:.2f}**{spread}",
        ratios,
        _span(fastest["ours_images_per_s"]),
        _span(fastest["ours_gflop_per_s"]),
        _span(fastest["peer_gflop_per_s"]),
        f"{_common.table_number(fastest['matmul_gflop_per_s'])} / "
        f"{_span(torch_peaks)}",
      ]
    )
  return peers, out


def machines(records: list[dict]) -> list[str]:
  """One line per distinct machine and JAX setup of compare records.

  E.g. ``"Machine: Intel(R) Xeon(R) Processor (family 6 model 167), 2
  CPUs; jax 0.10.2 (dense_impl mkl); torch 2.14.1, 2 threads"``. The
  PyTorch versions are those of the peer records of that setup (the
  ``fastest`` summaries carry none); fields no record has are left out.
  """
  setups: dict[str, list[str]] = {}
  for r in records:
    if r.get("benchmark") != "compare" or "cpu" not in r:
      continue
    setup = r["cpu"] + (f" ({r['cpu_id']})" if r.get("cpu_id") else "")
    if r.get("num_cpu"):
      setup += f", {r['num_cpu']} CPUs"
    if r.get("jax"):
      setup += f"; jax {r['jax']}"
      if r.get("dense_impl"):
        setup += f" (dense_impl {r['dense_impl']})"
    torches = setups.setdefault(setup, [])
    if r.get("torch"):
      torch = f"torch {r['torch']}"
      if r.get("threads"):
        torch += f", {r['threads']} threads"
      if torch not in torches:
        torches.append(torch)
  return [
    "Machine: " + "; ".join([setup, *torches])
    for setup, torches in setups.items()
  ]


def markdown(peers: list[str], table: list[list]) -> str:
  """The rows as a markdown table."""
  head = ["task", "awt / fastest peer"]
  head += [p.removeprefix("torch-") for p in peers]
  head += ["awt img/s", "awt GFLOP/s", "peer GFLOP/s", "matmul XLA / torch"]
  return _common.markdown_table(
    head,
    [
      [task, vs_fastest] + [ratios.get(p, "–") for p in peers] + rest
      for task, vs_fastest, ratios, *rest in table
    ],
  )


def main(argv):
  if len(argv) < 2:
    raise ValueError("give the JSON-lines files of benchmarks.compare")
  records = _common.read_records(argv[1:])
  print("\n".join([*machines(records), markdown(*rows(records))]), flush=True)


if __name__ == "__main__":
  _main.run(main)
