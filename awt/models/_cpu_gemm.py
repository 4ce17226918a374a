"""Dense layers' matrix products through MKL's sgemm on XLA:CPU.

XLA:CPU (JAX 0.10) runs float32 matrix products at the shapes of a
LeNet-300-100 batch of 128 at 0.5-0.9 of the rate of the MKL sgemm
PyTorch calls (``benchmarks/README.md``, issue 17): 258 µs against 245 for
fc1's forward (128x784 . 784x300), 315 against 187 for its input gradient,
62-71 against 31-34 for fc2's two products, measured on a 2-core Xeon.
Those products are 80-90% of an MLP's PGD-10 training step. This module
gives them to MKL instead, through an XLA FFI custom call:

* ``awt_gemm`` is a JAX primitive ``c = op(a) @ op(b)`` (``op`` transposes
  the last two axes when ``transpose_a`` / ``transpose_b``) with equal
  leading batch axes. It is bilinear, so its JVP and transposes are
  ``awt_gemm`` again (``ad.defbilinear``): forward mode, reverse mode and
  any mix of them (Hessian-vector products, the NTK's Jacobians) all run
  through MKL. ``vmap`` folds an unbatched weight into one product
  (``[E, B, K] @ [K, N]`` as ``[E B, K] @ [K, N]``) and otherwise loops
  over the batch in the handler.
* On the CPU it lowers to the handler of ``_cpu_gemm.cc``: one sequential
  MKL sgemm per block of columns (rows), as many blocks as XLA's intra-op
  pool has threads, run by the calling thread and helper threads of the
  handler's own that spin for 2 ms after each product (yielding their core
  to any runnable thread) before they sleep. MKL's OpenMP threads would
  compete with XLA's for the same cores (measured on a plain-JAX copy of
  the MLP's PGD-10 step: 8.9-11.7 ms with them against 8.2-8.5 ms with
  blocks on XLA's pool); blocks on XLA's pool waited for its sleeping
  threads to wake (1.03-1.25x slower steps than the helpers in 8 of 8
  process pairs). Elsewhere it lowers to ``jnp.matmul`` at full float32
  precision.
* The handler is compiled on first use with the C++ compiler (``$CXX`` or
  ``g++``) against the installed jaxlib's FFI headers, and cached in
  ``$AWT_CACHE_DIR`` (default ``~/.cache/awt``) under a name hashed from
  the source, the jaxlib version and the compiler; MKL comes from the
  ``mkl`` wheel (``pip install 'awt[mkl]'``) or ``$AWT_MKL_LIB``.

:func:`dot_general` is a drop-in for ``lax.dot_general`` in ``nn.Dense``
(``dot_general=``): float32 ``[..., K] @ [K, N]`` products go to MKL,
everything else (other dtypes, contractions, empty arrays) to
``lax.dot_general``. ``Classifier.dense_impl`` ("auto", "xla", "mkl")
chooses it; "auto" is "mkl" exactly when ``jax.default_backend()`` is the
CPU and the handler loads, so GPUs and TPUs keep XLA's products, and a
machine without MKL or a compiler runs as before. The numbers are those
of ``lax.dot_general`` up to float32 rounding (the order of each dot
product's additions differs): ``tests/test_cpu_gemm.py``.
"""

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import math
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
from jax import lax

try:
  from jax.extend.core import Primitive
  from jax.interpreters import ad, batching, mlir
except ImportError as e:  # A JAX without these: every dense layer uses XLA.
  Primitive = None
  _API_MISSING = f"this JAX lacks the primitive API: {e}"
else:
  _API_MISSING = None

DENSE_IMPLS = ("auto", "xla", "mkl")

TARGET = "awt_sgemm"

# MKL_Set_Threading_Layer's code for MKL_THREADING_SEQUENTIAL.
_MKL_SEQUENTIAL = 1

_SOURCE = pathlib.Path(__file__).with_suffix(".cc")


class Unavailable(ValueError):
  """The MKL path cannot be loaded on this machine; the message says why.

  A ``ValueError``: asking for ``dense_impl="mkl"`` there is a bad option
  value, which the binaries report in one line.
  """


def _mkl_library() -> pathlib.Path:
  """The path of MKL's single dynamic library, ``libmkl_rt.so.*``."""
  override = os.environ.get("AWT_MKL_LIB")
  if override:
    path = pathlib.Path(override)
    if not path.is_file():
      raise Unavailable(f"AWT_MKL_LIB={override} is not a file")
    return path
  try:
    files = importlib.metadata.files("mkl") or []
  except importlib.metadata.PackageNotFoundError:
    raise Unavailable(
      "the mkl package is not installed (pip install 'awt[mkl]')"
    ) from None
  for f in files:
    if f.name.startswith("libmkl_rt.so"):
      path = pathlib.Path(f.locate()).resolve()
      if path.is_file():
        return path
  raise Unavailable("the mkl package has no libmkl_rt.so")


def cache_dir() -> pathlib.Path:
  """The compiled handlers' folder: ``$AWT_CACHE_DIR`` or ``~/.cache/awt``."""
  root = os.environ.get("AWT_CACHE_DIR")
  if root:
    return pathlib.Path(root)
  xdg = os.environ.get("XDG_CACHE_HOME")
  return (pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache") / "awt"


def _build(path: pathlib.Path | None = None) -> pathlib.Path:
  """Compiles ``_cpu_gemm.cc`` (or ``path``, a variant of it, as
  ``benchmarks/gemm_variants.py`` builds) once per source, jaxlib and
  compiler; the cached library's path."""
  path = _SOURCE if path is None else path
  compiler = shutil.which(os.environ.get("CXX", "g++"))
  if compiler is None:
    raise Unavailable(
      f"no C++ compiler {os.environ.get('CXX', 'g++')!r} to build the handler"
    )
  source = path.read_bytes()
  key = hashlib.sha256(
    source + jaxlib.__version__.encode() + compiler.encode()
  ).hexdigest()[:16]
  out = cache_dir() / f"libawt_gemm-{key}.so"
  if out.is_file():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  # Compiled to a private name, then renamed: processes racing to build the
  # same handler each rename a complete library.
  with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
    built = pathlib.Path(tmp) / out.name
    cmd = [
      compiler,
      "-O2",
      "-std=c++17",
      "-shared",
      "-fPIC",
      "-w",
      f"-I{jax.ffi.include_dir()}",
      str(path),
      "-o",
      str(built),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      first = (proc.stderr.strip().splitlines() or ["(no output)"])[0]
      raise Unavailable(f"building the sgemm handler failed: {first}")
    os.replace(built, out)
  return out


@functools.cache
def _load() -> str | None:
  """Loads MKL and the handler, registers the FFI target; None or why not.

  Cached: the FFI registry and the loaded libraries are per process.
  """
  if _API_MISSING is not None:
    return _API_MISSING
  try:
    sgemm = sgemm_address()
    lib = ctypes.CDLL(str(_build()))
    lib.awt_set_sgemm(ctypes.c_void_p(sgemm))
  except (Unavailable, OSError) as e:
    return str(e)
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.AwtSgemm), "cpu")
  return None


def sgemm_address() -> int:
  """MKL's ``cblas_sgemm`` (``$AWT_MKL_LIB`` or the ``mkl`` wheel's), MKL
  set to run sequentially; the function's address.

  Raises:
    Unavailable: no MKL library, or one without those symbols.
    OSError: the library does not load.
  """
  path = _mkl_library()
  mkl = ctypes.CDLL(str(path))
  try:
    mkl.MKL_Set_Threading_Layer(_MKL_SEQUENTIAL)
    return ctypes.cast(mkl.cblas_sgemm, ctypes.c_void_p).value
  except AttributeError as e:
    raise Unavailable(f"{path} is not MKL: {e}") from None


def unavailable_reason() -> str | None:
  """None when the MKL path loads on this machine, else one line saying why."""
  return _load()


def resolve(impl: str) -> str:
  """``"xla"`` or ``"mkl"``: the products ``impl`` means on this backend.

  Args:
    impl: one of ``DENSE_IMPLS``; ``"auto"`` is ``"mkl"`` exactly when
      ``jax.default_backend()`` is the CPU and :func:`unavailable_reason`
      is None.

  Returns:
    ``"xla"`` or ``"mkl"``.

  Raises:
    ValueError: for an unknown ``impl``.
    Unavailable: for ``"mkl"`` on a machine where it cannot load.
  """
  if impl not in DENSE_IMPLS:
    raise ValueError(
      f"unknown dense_impl {impl!r}; known: {', '.join(DENSE_IMPLS)}"
    )
  if impl == "xla":
    return "xla"
  if jax.default_backend() != "cpu":
    if impl == "mkl":
      raise Unavailable(
        f"dense_impl='mkl' needs the CPU backend, not {jax.default_backend()}"
      )
    return "xla"
  reason = _load()
  if reason is None:
    return "mkl"
  if impl == "mkl":
    raise Unavailable(f"dense_impl='mkl': {reason}")
  _log_fallback(reason)
  return "xla"


@functools.cache
def _log_fallback(reason: str) -> None:
  logging.getLogger(__name__).info(
    "dense layers use XLA's matmul on this CPU: %s", reason
  )


# ---------------------------------------------------------------------------
# The primitive.

gemm_p = Primitive("awt_gemm") if Primitive is not None else None


def gemm(
  a: jax.Array,
  b: jax.Array,
  transpose_a: bool = False,
  transpose_b: bool = False,
) -> jax.Array:
  """``op(a) @ op(b)`` through MKL on the CPU (``lax.dot_general`` elsewhere).

  Args:
    a: ``[..., m, k]`` float32, or ``[..., k, m]`` when ``transpose_a``.
    b: ``[..., k, n]`` float32, or ``[..., n, k]`` when ``transpose_b``;
      the same leading axes as ``a``.
    transpose_a: use ``a``'s last two axes swapped.
    transpose_b: use ``b``'s last two axes swapped.

  Returns:
    ``[..., m, n]`` float32.
  """
  return gemm_p.bind(
    a, b, transpose_a=bool(transpose_a), transpose_b=bool(transpose_b)
  )


def _abstract_eval(a, b, *, transpose_a, transpose_b):
  if a.ndim != b.ndim or a.ndim < 2 or a.shape[:-2] != b.shape[:-2]:
    raise TypeError(
      f"awt_gemm needs operands of one rank >= 2 with equal batch axes, got "
      f"{a.shape} and {b.shape}"
    )
  if a.dtype != jnp.float32 or b.dtype != jnp.float32:
    raise TypeError(f"awt_gemm is float32 only, got {a.dtype} and {b.dtype}")
  m, k = a.shape[-2:][::-1] if transpose_a else a.shape[-2:]
  k2, n = b.shape[-2:][::-1] if transpose_b else b.shape[-2:]
  if k != k2:
    raise TypeError(
      f"awt_gemm contracts {k} with {k2} ({a.shape} @ {b.shape}, transposes "
      f"{transpose_a}, {transpose_b})"
    )
  return a.update(shape=(*a.shape[:-2], m, n), dtype=jnp.float32)


def _reference(a, b, *, transpose_a, transpose_b):
  """The same product by ``jnp.matmul`` (the non-CPU lowering)."""
  if transpose_a:
    a = jnp.swapaxes(a, -1, -2)
  if transpose_b:
    b = jnp.swapaxes(b, -1, -2)
  return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


def _transpose_a(ct, a, b, *, transpose_a, transpose_b):
  """``a``'s cotangent: ``ct @ op(b)^T`` (its transpose if ``transpose_a``)."""
  del a
  if transpose_a:
    return gemm(b, ct, transpose_b, True)
  return gemm(ct, b, False, not transpose_b)


def _transpose_b(ct, a, b, *, transpose_a, transpose_b):
  """``b``'s cotangent: ``op(a)^T @ ct`` (its transpose if ``transpose_b``)."""
  del b
  if transpose_b:
    return gemm(ct, a, True, transpose_a)
  return gemm(a, ct, not transpose_a, False)


def _batch(args, dims, *, transpose_a, transpose_b):
  a, b = args
  dim_a, dim_b = dims
  if dim_b is None and not transpose_a and b.ndim == 2:
    # The rows of every batch element against one matrix: one product.
    a = jnp.moveaxis(a, dim_a, 0)
    rows = a.reshape(-1, a.shape[-1])
    out = gemm(rows, b, False, transpose_b)
    return out.reshape(*a.shape[:-1], out.shape[-1]), 0
  size = a.shape[dim_a] if dim_a is not None else b.shape[dim_b]

  def front(x, dim):
    if dim is None:
      return jnp.broadcast_to(x, (size, *x.shape))
    return jnp.moveaxis(x, dim, 0)

  return gemm(front(a, dim_a), front(b, dim_b), transpose_a, transpose_b), 0


@functools.cache
def _eager(transpose_a: bool, transpose_b: bool):
  """One jitted ``awt_gemm`` per transpose pair, for calls outside ``jit``
  (a new ``jax.jit`` per call would retrace and recompile every time)."""
  return jax.jit(
    functools.partial(
      gemm_p.bind, transpose_a=transpose_a, transpose_b=transpose_b
    )
  )


def _cpu_lowering(ctx, a, b, **params):
  """The FFI call, after loading the handler it calls (where nothing has
  resolved a ``dense_impl`` yet, e.g. :func:`gemm` called directly)."""
  reason = _load()
  if reason is not None:
    raise Unavailable(f"awt_gemm on the CPU: {reason}")
  return jax.ffi.ffi_lowering(TARGET)(ctx, a, b, **params)


def _register() -> None:
  """Gives ``gemm_p`` its shape rule, autodiff, vmap and lowerings."""
  gemm_p.def_abstract_eval(_abstract_eval)
  gemm_p.def_impl(lambda a, b, **params: _eager(**params)(a, b))
  ad.defbilinear(gemm_p, _transpose_a, _transpose_b)
  batching.primitive_batchers[gemm_p] = _batch
  mlir.register_lowering(
    gemm_p, mlir.lower_fun(_reference, multiple_results=False)
  )
  mlir.register_lowering(gemm_p, _cpu_lowering, platform="cpu")


if _API_MISSING is None:
  try:
    _register()
  except AttributeError as e:
    _API_MISSING = f"this JAX lacks part of the primitive API: {e}"


def dot_general(
  lhs: jax.Array,
  rhs: jax.Array,
  dimension_numbers,
  precision=None,
  preferred_element_type=None,
  **kw,
) -> jax.Array:
  """``lax.dot_general``, with float32 ``[..., K] @ [K, N]`` through MKL.

  The signature of ``lax.dot_general``, so it can be ``nn.Dense``'s
  ``dot_general``. Products of that form (``nn.Dense``'s own) with float32
  operands and no empty axis become one :func:`gemm` on the rows of
  ``lhs``; any other call is passed to ``lax.dot_general`` unchanged.
  ``precision`` is moot for them: sgemm is full float32.
  """
  (contract_lhs, contract_rhs), (batch_lhs, batch_rhs) = dimension_numbers
  if (
    tuple(contract_lhs) == (lhs.ndim - 1,)
    and tuple(contract_rhs) == (0,)
    and not batch_lhs
    and not batch_rhs
    and rhs.ndim == 2
    and lhs.ndim >= 1
    and lhs.dtype == jnp.float32
    and rhs.dtype == jnp.float32
    and preferred_element_type in (None, jnp.float32)
    and not kw
    and 0 not in lhs.shape
    and 0 not in rhs.shape
  ):
    rows = lhs.reshape(-1, lhs.shape[-1])
    return gemm(rows, rhs).reshape(*lhs.shape[:-1], rhs.shape[1])
  return lax.dot_general(
    lhs,
    rhs,
    dimension_numbers,
    precision=precision,
    preferred_element_type=preferred_element_type,
    **kw,
  )


def matmul_flops(eqn) -> float | None:
  """FLOPs of a jaxpr equation that is a matrix product, else None.

  ``2 * |out| * k`` for a ``dot_general`` (``k`` the product of the
  contracted ``lhs`` dimensions) and for an ``awt_gemm`` (``k`` the last
  axis of ``a``, or its second-to-last when ``transpose_a``): one multiply
  and one add per term. XLA's cost analysis does not see into the
  ``awt_gemm`` custom call, so FLOP counts read from jaxprs
  (``awt.ntk``'s implementation choice, ``benchmarks/_flops.py``) take
  both formulas from here.

  Args:
    eqn: a ``jax.extend.core.JaxprEqn`` (e.g. ``jax.make_jaxpr(f)(x).eqns[i]``).

  Returns:
    The FLOPs as a float, or None when ``eqn`` is neither product.
  """
  name = eqn.primitive.name
  if name == "dot_general":
    (contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    k = math.prod(lhs[d] for d in contract)
  elif name == "awt_gemm":  # c = op(a) @ op(b); a is [..., m, k] or [..., k, m]
    a = eqn.invars[0].aval.shape
    k = a[-2] if eqn.params["transpose_a"] else a[-1]
  else:
    return None
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
