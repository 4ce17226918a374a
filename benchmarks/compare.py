r"""awt against PyTorch, timed alternately in one invocation: ratios ours/peer.

  python -m benchmarks.compare [--tasks=KIND:MODEL,...] \
    [--peers=eager,compile,torchattacks] [--pairs=5] [--batch=128] \
    [--at_steps=10] [--eval_steps=40] [--block_s=3] [--threads=0] \
    [--scan_length=0]

The default tasks are train_step:mlp, train_step:lenet5, train_step:conv4,
pgd_eval:mlp and pgd_eval:lenet5 (the issue's targets). A task is
``train_step:MODEL`` (one PGD-k adversarial-training step: awt's
``make_train_step`` against ``_torch_common.train_runner``) or
``pgd_eval:MODEL`` (awt's evaluation PGD against
``_torch_common.pgd_eval_runner``), on the same random inputs, budgets and
optimizer (``benchmarks._common``).

The PyTorch peers (``--peers``, all three by default):

* ``eager``: PyTorch eager, the attack written by hand
  (``_torch_common.pgd_linf``: awt's PGD, best-iterate selection in
  ``pgd_eval``);
* ``compile``: the same under ``torch.compile`` (the network is compiled);
* ``torchattacks``: PyTorch eager, the attack by ``torchattacks.PGD(net,
  eps, alpha, steps, random_start=True)``, what PyTorch users run. It
  returns the last iterate, not awt's best one, so in ``pgd_eval`` it does
  slightly less work (no per-step bookkeeping, no forward pass at the final
  point); it switches the network to eval mode during the attack, which
  changes nothing for mlp, lenet5 and conv4 (no BatchNorm, no dropout).

How it is timed, and why this way: the machines drift by several percent
within minutes and other jobs come and go, so separate runs of the two
programs do not give a ratio. Each side runs in its own long-lived worker
subprocess (``--worker``): its framework, thread pools and compiled program
are its own, JAX never shares a process with torch, and each compiles and
warms up once. Then the driver asks the workers in turn for one timed block
each (calls timed one by one for ``--block_s`` seconds, at least one call),
``--pairs`` times, reversing the order every other pair; the idle workers
wait on their stdin (no spinning threads), with ``--settle_s`` of quiet
between blocks. A pair's ratio is ours/peer of the block medians' images/s,
both measured within seconds of each other; a task's line gives the median
and range over the pairs, with the 1-minute load average of every block.
Torch uses ``--threads`` intra-op threads (0: every core, as XLA does).

Prints, per task, one JSON line per peer (``"peer": "torch-eager"``, ...)
and one line ``"peer": "fastest"``: per pair, ours over the fastest live
peer of that pair (``fastest_peers`` names it; the issue's targets count
against the fastest PyTorch peer). A peer that failed (torch or
torchattacks missing, torch.compile failing) gives a line with ``"error"``
and is left out of ``fastest``. At the end a markdown table of every task
goes to stderr (``benchmarks.compare_table``, which rebuilds it from saved
records). The FLOP fields:

* ``flops_per_call``: FLOPs of one call of awt's compiled function by
  ``benchmarks._flops.count`` (its jaxpr, loop bodies times their trip
  counts: k PGD steps count k times); ``images_per_call`` images;
* ``xla_flops_per_call``: XLA's cost analysis of the compiled executable,
  which counts a while loop's body once, so PGD's ``fori_loop`` is
  undercounted (its k steps count as one; a ``--scan_length`` scan's S
  steps too);
* ``ours_gflop_per_s``, ``xla_cost_gflop_per_s``, ``peer_gflop_per_s``: per
  pair, ``flops_per_call`` (resp. ``xla_flops_per_call``) over the seconds
  per call of the block median, i.e. FLOPs per image times images/s. The
  peer does the same work (same network, attack and batch), so it gets the
  same FLOP count per image;
* ``matmul_gflop_per_s``, ``peer_matmul_gflop_per_s``: the machine's best
  float32 matmul rate (1024 x 1024 matrices) measured once per task in the
  JAX worker (``jnp.dot``) and in the peer's worker (``torch.mm``): what
  the step's FLOP rate can be held against.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import flags

from benchmarks import _common, compare_table
from experiments import _main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("train_step", "pgd_eval")
PEERS = ("eager", "compile", "torchattacks")
DEFAULT_TASKS = [
  "train_step:mlp",
  "train_step:lenet5",
  "train_step:conv4",
  "pgd_eval:mlp",
  "pgd_eval:lenet5",
]

flags.DEFINE_list("tasks", DEFAULT_TASKS, "KIND:MODEL, KIND in " + str(KINDS))
flags.DEFINE_list("peers", list(PEERS), "PyTorch peers: " + ", ".join(PEERS))
flags.DEFINE_integer("pairs", 5, "Alternating (ours, peer) blocks per task.")
flags.DEFINE_integer("batch", 128, "Images per call.")
flags.DEFINE_integer("at_steps", 10, "PGD steps of the training attack.")
flags.DEFINE_integer("eval_steps", 40, "PGD steps of the evaluation.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute.")
flags.DEFINE_float("block_s", 3.0, "Seconds of timed calls per block.")
flags.DEFINE_integer("max_calls", 50, "At most this many calls per block.")
flags.DEFINE_float("settle_s", 0.5, "Seconds of quiet between blocks.")
flags.DEFINE_integer("threads", 0, "torch threads; 0: os.cpu_count().")
flags.DEFINE_integer(
  "scan_length", 0, "awt's step: 0 one jitted step per call; S a lax.scan."
)
flags.DEFINE_string("worker", None, "Internal: jax or a peer.")
flags.DEFINE_string("task", None, "Internal: the worker's KIND:MODEL.")


def parse_task(task: str) -> tuple[str, str]:
  """``"KIND:MODEL"`` -> ``(kind, model)``.

  Raises:
    ValueError: one line naming the bad task.
  """
  kind, _, model = task.partition(":")
  if kind not in KINDS or model not in _common.TASKS:
    raise ValueError(
      f"bad task {task!r}: want KIND:MODEL with KIND in {', '.join(KINDS)} "
      f"and MODEL in {', '.join(_common.TASKS)}"
    )
  return kind, model


def _build(side: str, kind: str, model: str, f) -> _common.Runner:
  """The worker's Runner, built and warmed up."""
  steps = f.at_steps if kind == "train_step" else f.eval_steps
  if side == "jax":
    from benchmarks import _jax  # noqa: PLC0415 (worker only)

    if kind == "train_step":
      runner = _jax.train_runner(
        model,
        batch=f.batch,
        steps=steps,
        dtype=f.dtype,
        scan_length=f.scan_length,
      )
    else:
      runner = _jax.pgd_eval_runner(model, batch=f.batch, steps=steps)
    runner.call()
    runner.info.update(_jax.versions())
    runner.info["matmul_gflop_per_s"] = _jax.matmul_gflop_per_s()
    return runner
  from benchmarks.peers import _torch_common  # noqa: PLC0415 (worker only)

  _torch_common.setup_threads(f.threads)
  compiled = side == "compile"
  peer = dict(
    batch=f.batch,
    steps=steps,
    compiled=compiled,
    attack="torchattacks" if side == "torchattacks" else "hand",
  )
  if kind == "train_step":
    runner = _torch_common.train_runner(model, dtype=f.dtype, **peer)
  else:
    runner = _torch_common.pgd_eval_runner(model, **peer)
  warm_s = _torch_common.warm_up(runner.call, compiled)
  runner.compile_s = warm_s if compiled else 0.0
  runner.info.update(_torch_common.versions())
  runner.info["matmul_gflop_per_s"] = _torch_common.matmul_gflop_per_s()
  return runner


def worker(f) -> None:
  """``--worker`` mode: build one side's runner, then serve timed blocks."""
  kind, model = parse_task(f.task)
  try:
    runner = _build(f.worker, kind, model, f)
  except (ImportError, RuntimeError) as e:
    msg = str(e).strip().splitlines()
    _common.serve(None, f"{type(e).__name__}: {msg[0] if msg else ''}")
    return
  _common.serve(runner)


class _Worker:
  """The driver's handle on one worker subprocess."""

  def __init__(self, side: str, task: str, f):
    self.side = side
    args = [
      f"--worker={side}",
      f"--task={task}",
      f"--batch={f.batch}",
      f"--at_steps={f.at_steps}",
      f"--eval_steps={f.eval_steps}",
      f"--dtype={f.dtype}",
      f"--threads={f.threads}",
      f"--scan_length={f.scan_length}",
    ]
    env = dict(os.environ, PYTHONPATH=ROOT)
    self.proc = subprocess.Popen(
      [sys.executable, "-m", "benchmarks.compare", *args],
      cwd=ROOT,
      env=env,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
    )
    self.ready = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      self.proc.wait()
      return {"error": f"worker exited with status {self.proc.returncode}"}
    return json.loads(line)

  def block(self, seconds: float, max_calls: int) -> dict:
    """One timed block: ``{"times": [...], "load": ...}``."""
    self.proc.stdin.write(f"run {seconds} {max_calls}\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.write("quit\n")
      self.proc.stdin.close()
      self.proc.wait()


def compare_task(task: str, f) -> list[dict]:
  """Runs one task's alternating pairs; its records (see :func:`_records`)."""
  kind, model = parse_task(task)
  steps = f.at_steps if kind == "train_step" else f.eval_steps
  _main.log(f"{task}: starting and compiling the workers")
  workers = [_Worker("jax", task, f)]
  if "error" in workers[0].ready:
    workers[0].close()
    raise RuntimeError(f"{task}: awt's side failed: {workers[0].ready}")
  for peer in f.peers:
    workers.append(_Worker(peer, task, f))
  live = [w for w in workers if "error" not in w.ready]
  ips = {w.side: [] for w in live}
  loads = {w.side: [] for w in live}
  try:
    for i in range(f.pairs):
      order = live if i % 2 == 0 else live[::-1]
      for w in order:
        time.sleep(f.settle_s)
        out = w.block(f.block_s, f.max_calls)
        if "times" not in out:
          raise RuntimeError(f"{task}: {w.side} worker failed: {out}")
        per_call = statistics.median(out["times"])
        ips[w.side].append(w.ready["images_per_call"] / per_call)
        loads[w.side].append(out["load"])
      _main.log(
        f"{task}: pair {i + 1}/{f.pairs}: "
        + ", ".join(f"{s} {v[-1]:.1f} img/s" for s, v in ips.items())
      )
  finally:
    for w in workers:
      w.close()
  return _records(kind, model, steps, workers, ips, loads, f)


def _gflop_per_s(flops_per_image: float, ips: list[float]) -> list[float]:
  """GFLOP/s per pair from images/s [P], to 4 significant digits."""
  return [_common.significant(flops_per_image * v / 1e9, 4) for v in ips]


def _records(kind, model, steps, workers, ips, loads, f) -> list[dict]:
  """The task's JSON records: one per peer, then ``"peer": "fastest"``."""
  ours = workers[0]
  info = ours.ready["info"]
  per_image = info["flops_per_call"] / ours.ready["images_per_call"]
  xla_per_image = info["xla_flops_per_call"] / ours.ready["images_per_call"]
  base = {
    "benchmark": "compare",
    "task": kind,
    "model": model,
    "input_shape": [f.batch, *_common.TASKS[model][0]],
    "attack_steps": steps,
    "dtype": f.dtype if kind == "train_step" else "float32",
    "ours": "jax-" + info["mode"],
  }
  timing = {
    "ours_images_per_s": [round(v, 1) for v in ips["jax"]],
    "ours_compile_s": round(ours.ready["compile_s"], 3),
    "images_per_call": ours.ready["images_per_call"],
    "flops_per_call": info["flops_per_call"],
    "xla_flops_per_call": info["xla_flops_per_call"],
    "ours_gflop_per_s": _gflop_per_s(per_image, ips["jax"]),
    "xla_cost_gflop_per_s": _gflop_per_s(xla_per_image, ips["jax"]),
    "matmul_gflop_per_s": info["matmul_gflop_per_s"],
    "load_ours": loads["jax"],
    "pairs": f.pairs,
    "block_s": f.block_s,
  }
  tail = {k: info[k] for k in ("jax", "jaxlib", "device", "dense_impl")}
  tail.update(_common.machine())
  records = []
  for w in workers[1:]:
    rec = {**base, "peer": "torch-" + w.side}
    if "error" in w.ready:
      rec["error"] = w.ready["error"]
    else:
      peer = w.ready["info"]
      rec.update(_common.ratio_fields(ips["jax"], ips[w.side]))
      rec.update(
        timing,
        peer_images_per_s=[round(v, 1) for v in ips[w.side]],
        peer_gflop_per_s=_gflop_per_s(per_image, ips[w.side]),
        peer_matmul_gflop_per_s=peer["matmul_gflop_per_s"],
        peer_compile_s=round(w.ready["compile_s"], 3),
        load_peer=loads[w.side],
      )
      for k in ("attack", "torch", "threads", "omp_wait_policy"):
        rec[k] = peer[k]
    records.append({**rec, **tail})
  rec = {**base, "peer": "fastest"}
  peers = {"torch-" + s: v for s, v in ips.items() if s != "jax"}
  if peers:
    fast = _common.fastest_peer(ips["jax"], peers)
    rec.update(
      fast,
      **timing,
      peer_images_per_s=[round(v, 1) for v in fast["peer_images_per_s"]],
      peer_gflop_per_s=_gflop_per_s(per_image, fast["peer_images_per_s"]),
    )
  else:
    rec["error"] = "no peer ran"
  records.append({**rec, **tail})
  return records


def main(argv):
  del argv
  f = flags.FLAGS
  if f.worker:
    worker(f)
    return
  for task in f.tasks:
    parse_task(task)
  for peer in f.peers:
    if peer not in PEERS:
      raise ValueError(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")
  counts = ("pairs", "batch", "at_steps", "eval_steps", "max_calls")
  _common.check_positive(**{n: getattr(f, n) for n in counts})
  records = []
  for task in f.tasks:
    for rec in compare_task(task, f):
      print(json.dumps(rec), flush=True)
      records.append(rec)
  table = compare_table.markdown(*compare_table.rows(records))
  print("\n".join([*compare_table.machines(records), table]), file=sys.stderr)


if __name__ == "__main__":
  _main.run(main)
