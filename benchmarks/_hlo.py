"""Reading XLA's optimized HLO text: what a profiled event's instruction is.

``benchmarks/profile_step.py`` and ``benchmarks/profile_awt.py`` name every
event of a ``jax.profiler`` trace after an HLO instruction of the compiled
program; :func:`parse` reads the program's text (``compiled.as_text()``),
:func:`trace` collects the events named after its instructions,
:func:`representative` says which instruction a fusion stands for and
:func:`classify` gives an event's opcode, role and layer.
"""

import glob
import re
import tempfile
import time

CONTAINERS = ("while", "call", "conditional", "ThunkExecutor", "$")
_DEF = re.compile(
  r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(\S+)\s+([\w\-]+)\((?:%([\w.\-]+))?"
)
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_LAYER = re.compile(r"\)/([\w]+)/[\w]+$")


def parse(text: str) -> tuple[dict, dict]:
  """``(instructions, computations)`` of an optimized HLO module's text.

  ``instructions[name] = (opcode, shape, op_name, called, operand)``
  (``operand``: the first operand's name, or None);
  ``computations[name] = (instruction names in order, ROOT name)``.
  """
  instructions, computations, comp = {}, {}, None
  for line in text.splitlines():
    if line and not line[0].isspace() and "{" in line:
      comp = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
      computations[comp] = ([], None)
      continue
    m = _DEF.match(line)
    if not m or comp is None:
      continue
    name, shape, opcode, operand = m.groups()
    op_name = _OP_NAME.search(line)
    called = _CALLS.search(line)
    instructions[name] = (
      opcode,
      shape,
      op_name.group(1) if op_name else "",
      called.group(1) if called else None,
      operand,
    )
    members, root = computations[comp]
    members.append(name)
    if line.lstrip().startswith("ROOT"):
      root = name
    computations[comp] = (members, root)
  return instructions, computations


def trace(run, instructions: dict) -> tuple[list[tuple[str, int]], float]:
  """Runs ``run()`` under ``jax.profiler``; its instructions' events.

  Returns ``(events, wall)``: ``events`` is ``(instruction name,
  duration in ns)`` for every traced event named after one of
  ``instructions`` (from :func:`parse`) that is not a container (a loop or
  call, whose time is its body's and would count twice); ``wall`` is the
  seconds ``run()`` took. ``run`` should block until its results are ready.
  """
  import jax  # noqa: PLC0415

  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp)
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    (path,) = glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)
    data = jax.profiler.ProfileData.from_file(path)
    events = [
      (ev.name, ev.duration_ns)
      for plane in data.planes
      for line in plane.lines
      for ev in line.events
      if ev.name in instructions and not ev.name.startswith(CONTAINERS)
    ]
  return events, wall


def representative(name: str, instructions: dict, computations: dict):
  """The instruction a fusion stands for: its convolution or dot, if it has
  one (a conv fused with its bias and ReLU is a convolution), else its
  root; an instruction that is no fusion stands for itself.

  A root that is a ``bitcast`` (a view: a reshape that moves no data)
  stands for what it views, followed inside the fusion: XLA names many
  copies, pads and concatenations ``*_bitcast_fusion`` with such a root.
  """
  opcode, _, _, called, _ = instructions[name]
  if opcode != "fusion" or called not in computations:
    return instructions[name]
  members, root = computations[called]
  for kind in ("convolution", "dot"):
    for member in members:
      inner = representative(member, instructions, computations)
      if inner[0] == kind:
        return inner
  root = root or members[-1]
  while instructions[root][0] == "bitcast" and instructions[root][4] in members:
    root = instructions[root][4]
  return representative(root, instructions, computations)


def classify(
  name: str, instructions: dict, computations: dict, batch: int
) -> dict:
  """Opcode, role and layer of the instruction an event is named after."""
  op_name = instructions[name][2]
  opcode, shape, inner_name, *_ = representative(
    name, instructions, computations
  )
  op_name = op_name or inner_name
  backward = "transpose(" in op_name or not op_name
  role = "backward" if backward else "forward"
  if opcode == "convolution":
    leading = re.search(r"\[(\d+)", shape)
    if not backward:
      role = "forward"
    elif leading and int(leading.group(1)) == batch:
      role = "input_grad"
    else:
      role = "filter_grad"
  layer = _LAYER.search(op_name)
  return {
    "op": name,
    "opcode": opcode,
    "role": role,
    "layer": layer.group(1) if layer else "",
    "shape": shape,
  }
