r"""FLOPs of everything a process runs under ``jax.jit``, loops included.

XLA's cost analysis (``compiled.cost_analysis()["flops"]``) counts a loop
body once, not times its trip count, so it cannot count a search whose
steps run inside ``lax.scan`` / ``fori_loop``. This counter works on the
jaxpr instead:

* ``dot_general`` and ``awt_gemm`` (the MKL product of
  ``awt.models._cpu_gemm``, a custom call XLA's cost analysis does not
  see): ``awt.models.matmul_flops``, ``2 |out| k``;
  ``conv_general_dilated``: 2 per multiply-add that reads an input element
  (as XLA: taps on padding or on the holes of an input dilation, as in a
  strided convolution's input gradient, are not counted; otherwise the
  formula of ``awt.ntk._count_flops``, ``2 |out| |kernel| / out_features``);
* elementwise arithmetic (``add``, ``mul``, ``max``, ``select_n``,
  comparisons, ...): 1 per output element; reductions (``reduce_sum``,
  ``reduce_max``, ``argmax``, ...): 1 per input element; transcendentals
  (``exp``, ``log``, ``tanh``, ...) are counted apart, as XLA does;
  data movement (``reshape``, ``transpose``, ``broadcast_in_dim``,
  ``gather``, slices, ...) is free;
* ``scan``: its body times ``length`` (a ``fori_loop`` with static bounds
  is a ``scan``); ``cond``: the most expensive branch; ``while``: its body
  once, and the loop is counted in ``unbounded_loops`` (a data-dependent
  trip count cannot be known from the program); ``pjit``, ``custom_jvp``,
  ``custom_vjp``, ``remat`` and the like: their body.

:func:`install` replaces ``jax.jit`` by a wrapper (install it before the
measured library is imported, so that module-level ``@jax.jit`` and
``functools.partial(jax.jit, ...)`` decorations pick it up). Each call of a
wrapped function with concrete (non-tracer) arguments adds the FLOPs of
its jaxpr (``jitted.trace(...)``, cached per argument shapes, dtypes and
static values) to :data:`COUNTER`; calls from inside another traced
function are part of that function's jaxpr and are not counted again.
Work the outputs do not need is dropped first (``dce_jaxpr``), as XLA
drops it. Work outside ``jax.jit`` (op-by-op dispatch of ``jnp`` calls in
Python) is not counted: in the ticket searches it is data preparation and
bookkeeping.

The result is a "jaxpr FLOP count with loop trip counts": it agrees with
XLA's cost analysis on loop-free programs (``tests/test_flops.py``: within
10% on an MLP's and LeNet-5's forward+backward pass, where matrix products
and convolutions are > 90% of both counts) and is exactly ``length`` times
the body's count on a loop.
"""

import dataclasses
import math
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax._src.interpreters import partial_eval as pe

_REAL_JIT = jax.jit

# Elementwise arithmetic: one FLOP per output element (XLA's HloCostAnalysis
# charges elementwise ops one FLOP per element).
ELEMENTWISE = frozenset(
  {
    "add",
    "add_any",
    "sub",
    "mul",
    "div",
    "rem",
    "neg",
    "abs",
    "sign",
    "max",
    "min",
    "floor",
    "ceil",
    "round",
    "select_n",
    "clamp",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "and",
    "or",
    "not",
    "xor",
    "square",
    "integer_pow",
    "pow",
    "nextafter",
    "is_finite",
    "shift_left",
    "shift_right_logical",
    "shift_right_arithmetic",
  }
)
# Transcendentals: counted apart, as XLA's cost analysis does.
TRANSCENDENTAL = frozenset(
  {
    "exp",
    "exp2",
    "log",
    "log1p",
    "expm1",
    "tanh",
    "logistic",
    "sqrt",
    "rsqrt",
    "cbrt",
    "sin",
    "cos",
    "tan",
    "erf",
    "erfc",
    "erf_inv",
    "lgamma",
    "digamma",
    "atan2",
    "acos",
    "asin",
    "atan",
    "sinh",
    "cosh",
  }
)
# Reductions: one FLOP per input element.
REDUCTIONS = frozenset(
  {
    "reduce_sum",
    "reduce_max",
    "reduce_min",
    "reduce_prod",
    "reduce_and",
    "reduce_or",
    "argmax",
    "argmin",
    "cumsum",
    "cummax",
    "cumlogsumexp",
    "reduce_precision",
  }
)


@dataclasses.dataclass
class Flops:
  """FLOP counts by kind (2 per multiply-add in ``matmul`` and ``conv``).

  Attributes:
    matmul: ``dot_general`` FLOPs.
    conv: ``conv_general_dilated`` FLOPs.
    elementwise: elementwise arithmetic and reductions.
    transcendentals: exp, log, tanh, ... (elements).
    unbounded_loops: ``while`` loops seen (each counted once).
  """

  matmul: float = 0.0
  conv: float = 0.0
  elementwise: float = 0.0
  transcendentals: float = 0.0
  unbounded_loops: int = 0

  @property
  def total(self) -> float:
    """``matmul + conv + elementwise`` (XLA's "flops" counts these)."""
    return self.matmul + self.conv + self.elementwise

  def __add__(self, other: "Flops") -> "Flops":
    return Flops(
      *(
        getattr(self, f.name) + getattr(other, f.name)
        for f in dataclasses.fields(self)
      )
    )

  def scaled(self, factor: float) -> "Flops":
    """The count of ``factor`` runs (``unbounded_loops`` kept)."""
    return Flops(
      self.matmul * factor,
      self.conv * factor,
      self.elementwise * factor,
      self.transcendentals * factor,
      self.unbounded_loops,
    )

  def as_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out["total"] = self.total
    return out


def _size(var) -> int:
  return math.prod(getattr(var.aval, "shape", ()))


def _leaf(eqn) -> Flops:
  """The FLOPs of one equation without sub-programs."""
  name = eqn.primitive.name
  # Imported here, not at the top: install() must run before awt loads.
  from awt import models

  product = models.matmul_flops(eqn)
  if product is not None:
    return Flops(matmul=product)
  if name == "conv_general_dilated":
    return Flops(conv=_conv_flops(eqn))
  if name in ELEMENTWISE:
    return Flops(elementwise=float(_size(eqn.outvars[0])))
  if name in TRANSCENDENTAL:
    return Flops(transcendentals=float(_size(eqn.outvars[0])))
  if name in REDUCTIONS:
    return Flops(elementwise=float(sum(_size(v) for v in eqn.invars)))
  return Flops()


def _taps(size: int, out: int, kernel: int, stride, pad_lo, lhs, rhs) -> int:
  """(output position, kernel tap) pairs of one spatial dimension that read
  an input element (not padding, not a hole of ``lhs`` dilation)."""
  o = np.arange(out)[:, None] * stride + np.arange(kernel)[None, :] * rhs
  p = o - pad_lo
  valid = (p >= 0) & (p <= (size - 1) * lhs) & (p % lhs == 0)
  return int(valid.sum())


def _conv_flops(eqn) -> float:
  """``2 x`` the multiply-adds of a convolution that read input elements.

  As XLA's cost analysis: taps that fall on padding or on the holes of an
  input (lhs) dilation -- the transposed convolutions of a strided
  convolution's input gradient -- are not counted.
  """
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  out = eqn.outvars[0].aval.shape
  dn = eqn.params["dimension_numbers"]
  p = eqn.params
  taps = 1
  for i, (ld, rd, od) in enumerate(
    zip(dn.lhs_spec[2:], dn.rhs_spec[2:], dn.out_spec[2:], strict=True)
  ):
    taps *= _taps(
      lhs[ld],
      out[od],
      rhs[rd],
      p["window_strides"][i],
      p["padding"][i][0],
      p["lhs_dilation"][i],
      p["rhs_dilation"][i],
    )
  # Each output element sums the kernel's input features (per group) over
  # its taps.
  return (
    2.0
    * out[dn.out_spec[0]]
    * out[dn.out_spec[1]]
    * (rhs[dn.rhs_spec[1]] * taps)
  )


def _subjaxprs(value):
  """The jaxprs in one equation parameter (a jaxpr, or a tuple of them)."""
  for sub in value if isinstance(value, (tuple, list)) else (value,):
    sub = getattr(sub, "jaxpr", sub)
    if hasattr(sub, "eqns"):
      yield sub


def count_jaxpr(jaxpr) -> Flops:
  """FLOPs of a (closed) jaxpr, loop bodies times their trip counts.

  Args:
    jaxpr: a ``Jaxpr`` or ``ClosedJaxpr`` (``jax.make_jaxpr(f)(*args)``).

  Returns:
    The :class:`Flops` of one evaluation.
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = Flops()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "scan":
      body = count_jaxpr(eqn.params["jaxpr"])
      total = total + body.scaled(eqn.params["length"])
    elif name == "cond":
      branches = [count_jaxpr(b) for b in eqn.params["branches"]]
      total = total + max(branches, key=lambda f: f.total)
    elif name == "while":
      body = count_jaxpr(eqn.params["body_jaxpr"])
      cond = count_jaxpr(eqn.params["cond_jaxpr"])
      total = total + body + cond + Flops(unbounded_loops=1)
    else:
      subs = [s for v in eqn.params.values() for s in _subjaxprs(v)]
      if subs:
        # pjit, custom_jvp_call, custom_vjp_call, remat, ...: the body
        # (the first sub-program; custom rules are already applied).
        total = total + count_jaxpr(subs[0])
      else:
        total = total + _leaf(eqn)
  return total


def _dce(closed):
  """The jaxpr without the work its outputs do not need (XLA drops it too:
  e.g. the primal output ``jax.grad`` discards)."""
  jaxpr = getattr(closed, "jaxpr", closed)
  return pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0]


def count(fn: Callable, *args, **kwargs) -> Flops:
  """FLOPs of one call ``fn(*args, **kwargs)`` (traced, not run)."""
  return count_jaxpr(_dce(jax.make_jaxpr(fn)(*args, **kwargs)))


def compiled_flops(compiled) -> float:
  """XLA's cost analysis of a compiled executable (loops counted once).

  Args:
    compiled: ``jax.jit(fn).lower(*args).compile()``.

  Returns:
    Its ``cost_analysis()["flops"]``: a while loop's body (so a
    ``fori_loop`` or ``scan``) counts once, whatever its trip count.
  """
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):  # Older JAX: one dict per device.
    analysis = analysis[0]
  return float(analysis["flops"])


def xla_flops(fn: Callable, *args) -> float:
  """XLA's cost analysis of the compiled ``fn(*args)`` (loops counted once)."""
  return compiled_flops(_REAL_JIT(fn).lower(*args).compile())


# ---------------------------------------------------------------------------
# Counting every jitted call of a process.


@dataclasses.dataclass
class Counter:
  """The running total of the counted calls.

  Attributes:
    flops: the sum over calls.
    calls: jitted calls counted.
    traces: distinct (function, signature) pairs traced for counting.
    by_function: function name -> (calls, :class:`Flops` of them all).
    enabled: whether calls are counted now.
  """

  flops: Flops = dataclasses.field(default_factory=Flops)
  calls: int = 0
  traces: int = 0
  by_function: dict = dataclasses.field(default_factory=dict)
  enabled: bool = True

  def reset(self) -> None:
    self.flops, self.calls, self.traces = Flops(), 0, 0
    self.by_function = {}

  def summary(self) -> dict:
    return {**self.flops.as_dict(), "calls": self.calls, "traces": self.traces}


COUNTER = Counter()


def _signature(leaf) -> Any:
  if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
    return ("array", tuple(leaf.shape), str(leaf.dtype))
  try:
    hash(leaf)
  except TypeError:
    return ("object", type(leaf).__name__, id(leaf))
  return ("value", type(leaf).__name__, leaf)


class _Counted:
  """A ``jax.jit``-ed function that adds its FLOPs to ``COUNTER`` per call."""

  def __init__(self, fn, jitted):
    self._fn = fn
    self._jitted = jitted
    self._cache = {}
    self.__wrapped__ = fn
    self.__name__ = getattr(fn, "__name__", type(fn).__name__)
    self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
    self.__doc__ = getattr(fn, "__doc__", None)

  def __getattr__(self, name):
    return getattr(self._jitted, name)

  def __call__(self, *args, **kwargs):
    if COUNTER.enabled:
      leaves, treedef = jax.tree.flatten((args, kwargs))
      if not any(isinstance(x, jax.core.Tracer) for x in leaves):
        key = (treedef, tuple(_signature(x) for x in leaves))
        flops = self._cache.get(key)
        if flops is None:
          flops = count_jaxpr(_dce(self._jitted.trace(*args, **kwargs).jaxpr))
          self._cache[key] = flops
          COUNTER.traces += 1
        COUNTER.flops = COUNTER.flops + flops
        COUNTER.calls += 1
        name = self.__qualname__
        calls, mine = COUNTER.by_function.get(name, (0, Flops()))
        COUNTER.by_function[name] = (calls + 1, mine + flops)
    return self._jitted(*args, **kwargs)


def counting_jit(fn=None, /, **kwargs):
  """``jax.jit`` whose concrete calls are counted (same signature)."""
  if fn is None:
    return lambda f: counting_jit(f, **kwargs)
  return _Counted(fn, _REAL_JIT(fn, **kwargs))


def install() -> None:
  """Replaces ``jax.jit`` by :func:`counting_jit` for this process.

  Must run before the measured modules are imported (they bind ``jax.jit``
  at decoration time).

  Raises:
    RuntimeError: ``awt`` is imported already.
  """
  if any(m == "awt" or m.startswith("awt.") for m in sys.modules):
    raise RuntimeError("install the FLOP counter before importing awt")
  jax.jit = counting_jit
