"""The one importer of neural-tangents: makes NT 0.6.5 load on current JAX.

neural-tangents 0.6.5 (its last release) imports names that current JAX moved
or removed, and its package ``__init__`` imports the TensorFlow-only module
``neural_tangents.experimental``. Before importing it, this module

1. puts back each name NT needs that JAX no longer has at the old path,
   taking it from its current home, and only when the old path lacks it: a
   name JAX still has is never replaced, and a name found in none of its
   candidate homes is skipped (JAX 0.11 may keep some elsewhere again);
2. installs a small ``jax.util`` module when ``import jax.util`` fails;
3. puts a stub for ``neural_tangents.experimental`` into ``sys.modules``, so
   neither TensorFlow nor tf2jax is ever imported. ``nt.experimental`` (NT's
   TensorFlow export) is therefore unavailable through ``awt``: reading any
   attribute of it raises ``AttributeError``.

Nothing else is patched. Every other module of ``awt`` uses NT through this
one: ``from awt._nt import nt``.

With these, the jacobian-contraction and NTK-vector-product empirical NTKs,
``stax`` infinite-width kernels, ``nt.predict`` and ``nt.linearize`` work;
``NtkImplementation.STRUCTURED_DERIVATIVES`` fails inside JAX's
``ad.linearize`` (changed signature) and ``NtkImplementation.AUTO`` fails in
its FLOP estimate, so neither is offered in ``IMPLEMENTATIONS``.

``nt.predict.gradient_descent_mse`` needs a concrete ``k_train_train``: it
solves with it under ``jax.core.eval_context()``, which on current JAX raises
``UnexpectedTracerError`` for a kernel traced by ``jit`` or ``grad``. Compute
the kernel first, then call it outside the transformation (``t``,
``fx_train_0`` and ``k_test_train`` may be traced).

NT's ``trace_axes`` averages over the traced output axes: with ``K`` logits,
``trace_axes=(-1,)`` gives ``(1/K) sum_k J_k J_k^T``, the mean over logits.

References:
  Novak et al., "Neural Tangents: Fast and Easy Infinite Neural Networks in
  Python", ICLR 2020.
  Novak et al., "Fast Finite Width Neural Tangent Kernel", ICML 2022
  (the empirical-NTK implementations).
"""

import importlib
import sys
import types
import warnings

import jax
import jax.core
import jax.interpreters.ad


class _RemovedPrimitive:
  """Stands in for a primitive JAX removed; NT only uses it as a dict key.

  NT's structured-derivative rule tables are keyed by primitive, including
  ``ad.zeros_like_p``. No traced equation ever carries this object, so the
  rule registered under it is never looked up.
  """

  def __init__(self, name: str):
    self.name = name

  def __repr__(self) -> str:
    return f"<removed primitive {self.name}>"


def _find(homes: tuple[str, ...], name: str):
  """Returns ``name`` from the first importable module in ``homes``, or None."""
  for home in homes:
    try:
      module = importlib.import_module(home)
    except ImportError:
      continue
    if hasattr(module, name):
      return getattr(module, name)
  return None


_CORE_HOMES = ("jax.extend.core", "jax._src.core")
_AD_HOMES = ("jax._src.interpreters.ad",)

# (module NT reads from, name, current homes), one row per name NT needs.
_ALIASES = (
  # Jaxpr graph types: imported at module level by NT's empirical.py and
  # utils/rules.py; removed from jax.core in JAX 0.10.
  (jax.core, "Jaxpr", _CORE_HOMES),
  (jax.core, "JaxprEqn", _CORE_HOMES),
  (jax.core, "Literal", _CORE_HOMES),
  (jax.core, "Var", _CORE_HOMES),
  (jax.core, "Primitive", _CORE_HOMES),
  # Imported at module level by NT; still in jax.core on JAX 0.10.
  (jax.core, "AbstractValue", _CORE_HOMES),
  (jax.core, "ShapedArray", _CORE_HOMES),
  (jax.core, "Value", _CORE_HOMES),
  # Used at call time by nt.predict and stax.GlobalSelfAttention; still in
  # jax.core on 0.10.
  (jax.core, "eval_context", _CORE_HOMES),
  # Imported at module level by NT; still in jax.interpreters.ad on 0.10.
  (jax.interpreters.ad, "UndefinedPrimal", _AD_HOMES),
  (jax.interpreters.ad, "Zero", _AD_HOMES),
)


def _restore_aliases() -> None:
  """Sets each name of ``_ALIASES`` that JAX lacks, from its current home.

  A name JAX still has but deprecates warns when read; the presence checks
  ignore that warning (NT's own import of the name still shows it).
  """
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    for module, name, homes in _ALIASES:
      if not hasattr(module, name):
        value = _find(homes, name)
        if value is not None:
          setattr(module, name, value)
    # zeros_like_p is gone from JAX; NT's utils/rules.py uses it as a dict key
    # at import time only (see _RemovedPrimitive).
    if not hasattr(jax.interpreters.ad, "zeros_like_p"):
      jax.interpreters.ad.zeros_like_p = _RemovedPrimitive("zeros_like_p")


def _install_jax_util() -> None:
  """Installs a ``jax.util`` module holding ``safe_map``, ``safe_zip``.

  NT's empirical.py does ``from jax.util import safe_map, safe_zip``; the
  module ``jax.util`` is gone, both functions live in ``jax._src.util``.
  """
  try:
    importlib.import_module("jax.util")
  except ImportError:
    util = types.ModuleType("jax.util", "safe_map, safe_zip for NT (awt._nt).")
    for name in ("safe_map", "safe_zip"):
      value = _find(("jax._src.util",), name)
      if value is not None:
        setattr(util, name, value)
    sys.modules["jax.util"] = util


def _experimental_getattr(name: str):
  raise AttributeError(
    f"neural_tangents.experimental.{name} is unavailable through awt: "
    "awt._nt keeps NT's TensorFlow-only experimental module from loading"
  )


def _stub_experimental() -> None:
  """Puts a stub for ``neural_tangents.experimental`` into ``sys.modules``.

  NT's ``__init__`` runs ``from . import experimental``, which imports
  TensorFlow and tf2jax; a module already in ``sys.modules`` is used instead.
  """
  if "neural_tangents.experimental" not in sys.modules:
    stub = types.ModuleType(
      "neural_tangents.experimental",
      "Stub installed by awt._nt: NT's TensorFlow export is not loaded.",
    )
    stub.__getattr__ = _experimental_getattr
    sys.modules["neural_tangents.experimental"] = stub


_restore_aliases()
_install_jax_util()
_stub_experimental()

import neural_tangents as nt  # noqa: E402

stax = nt.stax
predict = nt.predict

# Empirical-NTK implementations that work on current JAX, by name.
IMPLEMENTATIONS = {
  "jacobian_contraction": nt.NtkImplementation.JACOBIAN_CONTRACTION,
  "ntk_vector_products": nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
}


def implementation(name: str) -> nt.NtkImplementation:
  """Returns the empirical-NTK implementation registered under ``name``.

  Args:
    name: a key of ``IMPLEMENTATIONS``.

  Returns:
    The ``nt.NtkImplementation`` to pass to ``nt.empirical_ntk_fn``.

  Raises:
    ValueError: for a name not in ``IMPLEMENTATIONS``.
  """
  if name not in IMPLEMENTATIONS:
    raise ValueError(
      f"unknown NTK implementation {name!r}; known: "
      f"{', '.join(IMPLEMENTATIONS)}"
    )
  return IMPLEMENTATIONS[name]


__all__ = ["IMPLEMENTATIONS", "implementation", "nt", "predict", "stax"]
