"""benchmarks/_hlo.py: which instruction a profiled event is counted as."""

from benchmarks import _hlo

# The shape of XLA:CPU's optimized HLO text (jaxlib 0.10), trimmed: a loop
# fusion whose root is a bitcast of a pad, one holding a dot, and a plain
# instruction; op names as JAX writes them for a flax layer's backward pass.
_TEXT = """\
HloModule jit_step, entry_computation_layout={(f32[4,6]{1,0})->f32[4,8]{1,0}}

%fused_pad (param_0: f32[4,6]) -> f32[24,1] {
  %param_0 = f32[4,6]{1,0} parameter(0)
  %constant = f32[] constant(0)
  %pad.1 = f32[4,8]{1,0} pad(%param_0, %constant), padding=0_0x1_1, \
metadata={op_name="jit(step)/transpose(jvp(Net))/conv1/pad"}
  %bitcast.2 = f32[32]{0} bitcast(%pad.1)
  ROOT %bitcast.3 = f32[32,1]{1,0} bitcast(%bitcast.2)
}

%fused_dot (param_0.1: f32[4,6], param_1: f32[6,8]) -> f32[4,8] {
  %param_0.1 = f32[4,6]{1,0} parameter(0)
  %param_1 = f32[6,8]{1,0} parameter(1)
  %dot.1 = f32[4,8]{1,0} dot(%param_0.1, %param_1), \
lhs_contracting_dims={1}, rhs_contracting_dims={0}, \
metadata={op_name="jit(step)/jvp(Net)/fc1/dot_general"}
  ROOT %maximum.1 = f32[4,8]{1,0} maximum(%dot.1, %dot.1)
}

ENTRY %main (x: f32[4,6]) -> f32[4,8] {
  %x = f32[4,6]{1,0} parameter(0)
  %pad_bitcast_fusion = f32[32,1]{1,0} fusion(%x), kind=kLoop, \
calls=%fused_pad
  %w = f32[6,8]{1,0} constant({...})
  %dot_fusion = f32[4,8]{1,0} fusion(%x, %w), kind=kOutput, calls=%fused_dot
  ROOT %copy.7 = f32[4,8]{1,0} copy(%dot_fusion), \
metadata={op_name="jit(step)/jvp(Net)/fc1/copy"}
}
""".replace("\\\n", "")


def test_parse_reads_instructions_computations_and_first_operands():
  instructions, computations = _hlo.parse(_TEXT)
  assert instructions["pad.1"][:2] == ("pad", "f32[4,8]{1,0}")
  assert instructions["bitcast.3"][4] == "bitcast.2"
  assert instructions["pad_bitcast_fusion"][3] == "fused_pad"
  assert instructions["constant"][4] is None
  members, root = computations["fused_pad"]
  assert root == "bitcast.3" and members[0] == "param_0"
  assert computations["main"][1] == "copy.7"


def test_a_fusion_rooted_in_bitcasts_counts_as_what_they_view():
  instructions, computations = _hlo.parse(_TEXT)
  op = _hlo.classify("pad_bitcast_fusion", instructions, computations, 4)
  assert op["opcode"] == "pad"
  assert op["shape"] == "f32[4,8]{1,0}"
  assert (op["role"], op["layer"]) == ("backward", "conv1")


def test_a_fusion_with_a_dot_counts_as_the_dot_and_plain_ops_as_themselves():
  instructions, computations = _hlo.parse(_TEXT)
  dot = _hlo.classify("dot_fusion", instructions, computations, 4)
  assert (dot["opcode"], dot["role"], dot["layer"]) == (
    "dot",
    "forward",
    "fc1",
  )
  copy = _hlo.classify("copy.7", instructions, computations, 4)
  assert (copy["opcode"], copy["layer"]) == ("copy", "fc1")


def test_trace_counts_each_trip_of_a_loop_body_and_not_the_loop():
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  @jax.jit
  def power(a, n):
    return jax.lax.fori_loop(0, n, lambda _, y: jnp.tanh(y @ a), a)

  a, trips = jnp.eye(16) / 2, 5  # trips an argument: XLA cannot unroll
  jax.block_until_ready(power(a, trips))
  text = power.lower(a, trips).compile().as_text()
  instructions, computations = _hlo.parse(text)
  events, wall = _hlo.trace(
    lambda: jax.block_until_ready(power(a, trips)), instructions
  )
  kinds = [
    _hlo.representative(name, instructions, computations)[0]
    for name, _ in events
  ]
  assert " while(" in text
  assert not [name for name, _ in events if name.startswith("while")]
  assert kinds.count("dot") == trips
  assert wall > 0 and all(ns >= 0 for _, ns in events)
