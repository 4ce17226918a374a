r"""Empirical and adversarial NTKs, kernel comparisons, spectra, dynamics.

The empirical neural tangent kernel of a network ``f(params, x) -> [N, K]``
with parameters :math:`\theta \in \mathbb{R}^P` is

.. math::
  \Theta(x_1, x_2) = J(x_1) J(x_2)^\top, \qquad
  J(x) = \partial f(\theta, x) / \partial \theta \in \mathbb{R}^{N K \times P},

computed with neural-tangents (through :mod:`awt._nt`, the one importer of
it) as ``[N1, N2, K, K]`` (``trace_axes=()``) or traced over the logits,
``[N1, N2]`` = :math:`\frac1K \sum_k J_k(x_1) J_k(x_2)^\top` (NT's trace is
the *mean* over the traced axis). The adversarial NTK is the same kernel at
adversarial points :math:`\tilde X = X + \delta`, the kernel the AWT search
matches between a sparse student and the dense teacher (docs/design.md, "The AWT
search").

Which of NT's two working implementations is cheaper depends on the network
and the batch; ``implementation="auto"`` decides with the cost model of
:func:`cost_model` (after Novak et al. 2022, Table 1), evaluated from shapes
only, so it also works on traced arguments inside ``jit``/``grad``.

References:
  Jacot, Gabriel & Hongler, "Neural Tangent Kernel: Convergence and
  Generalization in Neural Networks", NeurIPS 2018.
  Lee, Xiao, Schoenholz, Bahri, Novak, Sohl-Dickstein & Pennington, "Wide
  Neural Networks of Any Depth Evolve as Linear Models Under Gradient
  Descent", NeurIPS 2019.
  Novak, Sohl-Dickstein & Schoenholz, "Fast Finite Width Neural Tangent
  Kernel", ICML 2022.
"""

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from awt import models
from awt._nt import IMPLEMENTATIONS, nt
from awt._nt import implementation as _nt_implementation

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]

AUTO = "auto"
# awt's own: the Dense layers factored (structured_fn), for flax networks.
STRUCTURED = "structured"
# Names accepted by ``implementation=``: "auto", NT's working ones and
# "structured".
IMPLEMENTATION_NAMES = (AUTO, *IMPLEMENTATIONS, STRUCTURED)

# Constants of the cost model (units: FLOPs; see cost_model). One VJP costs
# ~3 forward passes (Griewank & Walther 2008, Sec. 4.6: reverse mode <= 4x,
# ~3x for matmul/conv networks: forward, input gradient, weight gradient).
_VJP_COST = 3.0
# FLOPs per forward FLOP of one NTK-vector product (one pair of inputs, one
# logit: a VJP through one input and a JVP through the other, the primal
# passes shared across logits). XLA's compiled counts on CPU are 1.1x the
# forward FLOPs for Dense layers (it reassociates the rank-one weight
# cotangents into inner products) and 1.8x for convolutions, which also run
# at about half the FLOP rate batched this way (measured on LeNet-5,
# 2026-11-23, 2-core CPU): 1 and 4.
_VP_DENSE_COST = 1.0
_VP_CONV_COST = 4.0
# FLOP-equivalents per Jacobian entry that jacobian_contraction writes and
# reads back: on the 2-core CPU, materializing [N, K, P] Jacobians (tens of
# ns per float32 entry) dominated the contraction for N <= 100. With 64 the
# model reproduces the faster implementation in every CPU measurement of
# benchmarks/README_ntk.md (LeNet-5: crossover at N ~ 3, measured Jacobian
# contraction faster from N = 4 on; Dense MLPs: NTK-vector products).
_JACOBIAN_ENTRY_COST = 64.0


def _check_implementation(name: str) -> None:
  if name not in IMPLEMENTATION_NAMES:
    raise ValueError(
      f"unknown NTK implementation {name!r}; known: "
      f"{', '.join(IMPLEMENTATION_NAMES)}"
    )


def _canonical_trace_axes(trace_axes) -> tuple[int, ...]:
  """(-1,) or () for outputs ``[N, K]``; the batch axis cannot be traced."""
  axes = tuple(int(a) for a in trace_axes)
  if axes in ((-1,), (1,)):
    return (-1,)
  if axes == ():
    return ()
  raise ValueError(
    f"trace_axes must be (-1,) (mean over logits) or () (full [N1, N2, K, K]"
    f" kernel), got {trace_axes!r}"
  )


def _abstract(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _count_flops(jaxpr) -> tuple[float, float]:
  """(dense, conv) FLOPs of the dot_general / conv ops of a jaxpr.

  Sub-jaxprs (jit, custom_jvp, cond branches, loop bodies) are counted once.
  A dot_general (or awt_gemm) costs ``awt.models.matmul_flops``;
  a convolution 2 * |out| * |kernel| / out_features (the multiply-adds per
  output).
  """
  dense = conv = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    product = models.matmul_flops(eqn)
    if product is not None:
      dense += product
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
      size = math.prod(eqn.outvars[0].aval.shape)
      conv += 2.0 * size * math.prod(rhs) / out_features
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          d, c = _count_flops(sub)
          dense, conv = dense + d, conv + c
  return dense, conv


def forward_flops(
  apply_fn: ApplyFn, params: PyTree, x: jax.Array
) -> tuple[float, float]:
  """FLOPs of one example's forward pass in matmuls and in convolutions.

  Counted on the jaxpr of ``apply_fn(params, x[:1])`` from shapes only
  (``params`` and ``x`` may be tracers or ``ShapeDtypeStruct``s); other ops
  (activations, pooling, normalization) are not counted.

  Args:
    apply_fn: ``(params, x [N, ...]) -> [N, K]``.
    params: the parameter pytree.
    x: ``[N, ...]`` inputs; only the shape of one example is used.

  Returns:
    ``(dense, conv)``: FLOPs (2 per multiply-add) of the ``dot_general`` and
    ``conv_general_dilated`` ops for one example.
  """
  one = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
  closed = jax.make_jaxpr(apply_fn)(_abstract(params), one)
  return _count_flops(closed.jaxpr)


def cost_model(
  apply_fn: ApplyFn,
  params: PyTree,
  x1: jax.Array,
  x2: jax.Array | None = None,
  trace_axes: tuple[int, ...] = (-1,),
) -> dict[str, float]:
  r"""Estimated cost, in FLOPs, of each empirical-NTK implementation.

  The forms are those of Novak et al. (2022), Table 1, for a generic network
  with ``N`` inputs, ``O = K`` logits, ``P`` parameters and one forward pass
  costing ``[FP]``: Jacobian contraction ``N O [FP] + N^2 O^2 P`` (the
  contraction is ``N^2 O P`` when traced over the logits) and NTK-vector
  products ``N^2 O [FP]``, with constants and a memory-traffic term added:

  .. math::
    C_{JC} = 3 N_J K\,[FP] + 2 N_1 N_2 K_c P + \mu\, N_J K P, \qquad
    C_{VP} = N_1 N_2 K\,(c_d [FP]_{dense} + c_c [FP]_{conv})

  where ``N_J = N1 + N2`` Jacobians (``N1`` when ``x2`` is None), ``K_c = K``
  traced and ``K^2`` for the full kernel, ``3`` the cost of a VJP in forward
  passes, ``mu = 64`` FLOP-equivalents per Jacobian entry written and read
  (the ``N K P`` memory of Table 1, which dominated on CPU), ``c_d = 1`` and
  ``c_c = 4`` the cost per forward FLOP of one NTK-vector product through
  matmuls and convolutions (measured on a 2-core CPU with XLA, see the
  module constants). ``[FP]`` comes from :func:`forward_flops`. The model
  is crude (CPU-calibrated, counts only matmuls and convolutions): it picks
  NTK-vector products for Dense networks (where ``[FP] ~ 2P``) and for
  tiny batches, Jacobian contraction for convolutional networks
  (``[FP] >> P``) on larger batches.

  Args:
    apply_fn: ``(params, x [N, ...]) -> [N, K]``.
    params: the parameter pytree (shapes only are used).
    x1: ``[N1, ...]`` inputs.
    x2: ``[N2, ...]`` inputs, or None for ``x2 = x1``.
    trace_axes: ``(-1,)`` (traced over logits) or ``()``.

  Returns:
    ``{"jacobian_contraction": C_JC, "ntk_vector_products": C_VP,
    "jacobian_bytes": 4 N_J K P}`` (the last: float32 memory of the
    Jacobians that Jacobian contraction holds).

  References:
    Novak, Sohl-Dickstein & Schoenholz, "Fast Finite Width Neural Tangent
    Kernel", ICML 2022, Table 1 (and Sec. 3.1-3.2).
  """
  trace_axes = _canonical_trace_axes(trace_axes)
  n1 = x1.shape[0]
  n2 = n1 if x2 is None else x2.shape[0]
  n_jac = n1 if x2 is None else n1 + n2
  p = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
  out = jax.eval_shape(
    apply_fn, _abstract(params), jax.ShapeDtypeStruct(x1.shape, x1.dtype)
  )
  k = math.prod(out.shape[1:])
  k_c = k if trace_axes else k * k
  dense, conv = forward_flops(apply_fn, params, x1)
  fp = dense + conv
  jacobian_entries = float(n_jac) * k * p
  jc = (
    _VJP_COST * n_jac * k * fp
    + 2.0 * n1 * n2 * k_c * p
    + _JACOBIAN_ENTRY_COST * jacobian_entries
  )
  vp = float(n1) * n2 * k * (_VP_DENSE_COST * dense + _VP_CONV_COST * conv)
  return {
    "jacobian_contraction": jc,
    "ntk_vector_products": vp,
    "jacobian_bytes": 4.0 * jacobian_entries,
  }


def choose_implementation(
  apply_fn: ApplyFn,
  params: PyTree,
  x1: jax.Array,
  x2: jax.Array | None = None,
  trace_axes: tuple[int, ...] = (-1,),
) -> str:
  """The empirical-NTK implementation ``"auto"`` uses: the cheaper one.

  NT's own ``AUTO`` (XLA cost analysis of every implementation) fails on
  current JAX and includes the broken structured-derivatives method; this
  choice uses :func:`cost_model` instead, from shapes only.

  Args:
    apply_fn: ``(params, x [N, ...]) -> [N, K]``.
    params: the parameter pytree.
    x1: ``[N1, ...]`` inputs (with ``batch_size``, one block).
    x2: ``[N2, ...]`` inputs, or None for ``x2 = x1``.
    trace_axes: ``(-1,)`` or ``()``.

  Returns:
    ``"jacobian_contraction"`` or ``"ntk_vector_products"``.
  """
  costs = cost_model(apply_fn, params, x1, x2, trace_axes)
  return min(IMPLEMENTATIONS, key=lambda name: costs[name])


def _blocks(x: jax.Array, size: int) -> jax.Array:
  """[N, ...] -> [ceil(N / size), size, ...], zero-padding the last block."""
  n = x.shape[0]
  num = -(-n // size)
  pad = [(0, num * size - n)] + [(0, 0)] * (x.ndim - 1)
  return jnp.pad(x, pad).reshape(num, size, *x.shape[1:])


def _swap_block(blocks: jax.Array) -> jax.Array:
  """Theta(b, a) from Theta(a, b), for stacked blocks [M, B, B(, K, K)]."""
  blocks = jnp.swapaxes(blocks, 1, 2)
  return jnp.swapaxes(blocks, 3, 4) if blocks.ndim == 5 else blocks


def empirical_fn(
  apply_fn: ApplyFn,
  *,
  trace_axes: tuple[int, ...] = (-1,),
  implementation: str = AUTO,
  batch_size: int | None = None,
) -> Callable[[PyTree, jax.Array, jax.Array | None], jax.Array]:
  r"""A jitted ``kernel(params, x1, x2=None)``: the empirical NTK.

  Build it once and call it many times (same shapes do not recompile);
  :func:`empirical` is the one-call form. See :func:`empirical` for the
  math, shapes and ``batch_size``.

  Args:
    apply_fn: ``(params, x [N, ...]) -> [N, K]``, examples independent
      (no batch statistics: the NTK is vmapped over examples).
    trace_axes: ``(-1,)`` for ``[N1, N2]`` (mean over logits) or ``()``
      for the full ``[N1, N2, K, K]`` kernel.
    implementation: ``"auto"``, ``"jacobian_contraction"``,
      ``"ntk_vector_products"`` or ``"structured"`` (:func:`structured_fn`,
      for ``flax.linen`` networks).
    batch_size: block size, or None to compute the kernel in one piece.

  Returns:
    ``kernel(params, x1, x2=None) -> [N1, N2]`` or ``[N1, N2, K, K]``.

  Raises:
    ValueError: unknown implementation, bad ``trace_axes`` or
      ``batch_size < 1``.
  """
  _check_implementation(implementation)
  trace_axes = _canonical_trace_axes(trace_axes)
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")

  if implementation == STRUCTURED:
    structured = structured_fn(apply_fn, trace_axes=trace_axes)

  def ntk_fn(params, x1, x2):
    name = implementation
    if name == STRUCTURED:
      return structured(params, x1, x2)
    if name == AUTO:
      name = choose_implementation(apply_fn, params, x1, x2, trace_axes)
    fn = nt.empirical_ntk_fn(
      apply_fn,
      trace_axes=trace_axes,
      vmap_axes=0,
      implementation=_nt_implementation(name),
    )
    return fn(x1, x2, params)

  def kernel(params, x1, x2=None):
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    if batch_size is None or max(n1, n2) <= batch_size:
      return ntk_fn(params, x1, x2)
    b1 = _blocks(x1, batch_size)
    b2 = b1 if x2 is None else _blocks(x2, batch_size)
    nb1, nb2 = b1.shape[0], b2.shape[0]
    if x2 is None:  # Symmetric: only blocks (i, j) with i <= j.
      rows, cols = np.triu_indices(nb1)
    else:
      rows, cols = (a.ravel() for a in np.indices((nb1, nb2)))
    rows, cols = jnp.asarray(rows), jnp.asarray(cols)
    # One compiled block kernel, run sequentially over the block pairs.
    out = jax.lax.map(
      lambda ij: ntk_fn(params, b1[ij[0]], b2[ij[1]]), (rows, cols)
    )
    grid = jnp.zeros((nb1, nb2, *out.shape[1:]), out.dtype)
    if x2 is None:
      grid = grid.at[cols, rows].set(_swap_block(out))
    grid = grid.at[rows, cols].set(out)
    # [nb1, nb2, B, B, ...] -> [nb1 * B, nb2 * B, ...], then drop padding.
    grid = jnp.swapaxes(grid, 1, 2)
    grid = grid.reshape(nb1 * batch_size, nb2 * batch_size, *out.shape[3:])
    return grid[:n1, :n2]

  return jax.jit(kernel)


def _is_dense_call(context) -> bool:
  return isinstance(context.module, nn.Dense) and context.method_name == (
    "__call__"
  )


def dense_layers(
  apply_fn: ApplyFn, params: PyTree, x: jax.Array
) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
  """The ``nn.Dense`` layers :func:`structured_fn` factors, and their outputs.

  A Dense layer qualifies when ``apply_fn`` calls it exactly once per
  forward pass, on a ``[batch, d_in]`` input; its parameters are
  ``params[path]["kernel"]`` (and ``["bias"]``). Found by tracing
  ``apply_fn`` once (``jax.eval_shape``) with ``flax.linen``'s method
  interceptor, so nothing runs. A jitted ``apply_fn`` whose trace is
  cached is not re-traced: then no layer is found, and the kernel is a
  plain Jacobian contraction (the same values, at its cost).

  Args:
    apply_fn: ``(params, x [N, ...]) -> [N, K]``, built on ``flax.linen``.
    params: its parameters.
    x: ``[N, ...]`` example inputs (shapes only).

  Returns:
    ``{path: output aval [1, d_out]}`` per qualifying layer, in call order.
  """
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if _is_dense_call(context):
      calls.append((tuple(context.module.path), args[0].shape, out))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda p, v: apply_fn(p, v), params, x[:1])
  paths = [path for path, _, _ in calls]
  return {
    path: jax.ShapeDtypeStruct(out.shape, out.dtype)
    for path, shape, out in calls
    if len(shape) == 2 and paths.count(path) == 1
  }


def structured_fraction(apply_fn: ApplyFn, params: PyTree, x) -> float:
  """The share of ``params``' entries in :func:`dense_layers`' layers."""
  flat = traverse_util.flatten_dict(params)
  layers = dense_layers(apply_fn, params, x)
  inside = sum(v.size for k, v in flat.items() if k[:-1] in layers)
  return inside / max(1, sum(v.size for v in flat.values()))


def structured_fn(
  apply_fn: ApplyFn, *, trace_axes: tuple[int, ...] = (-1,)
) -> Callable[[PyTree, jax.Array, jax.Array | None], jax.Array]:
  r"""A jitted ``kernel(params, x1, x2=None)``: the empirical NTK with its
  Dense layers factored, no Jacobian of their weights.

  For a Dense layer :math:`z_l = a_l W_l + b_l` the Jacobian of logit
  :math:`c` in :math:`W_l` is the outer product
  :math:`a_l \otimes \delta_{l,c}`, :math:`\delta_{l,c} = \partial f_c /
  \partial z_l`, and in :math:`b_l` it is :math:`\delta_{l,c}`, so

  .. math::
    \Theta_{ij,cd} = \sum_{l\ \mathrm{Dense}} \bigl(a_l(x_i) \cdot
      a_l(x_j) + [b_l]\bigr) \bigl(\delta_{l,c}(x_i) \cdot
      \delta_{l,d}(x_j)\bigr) + J_r(x_i)_c \cdot J_r(x_j)_d,

  with :math:`J_r` the Jacobian in the remaining parameters
  (convolutions, normalization; ``[b_l]`` is 1 with a bias, else 0): the
  structured-derivatives form of Novak et al. (ICML 2022, Section 3) for
  Dense layers, which neural-tangents' ``STRUCTURED_DERIVATIVES`` computes
  in general and which fails on this JAX (``awt/_nt.py``). Per example,
  one ``jax.jacrev`` (``K`` backward passes) gives the :math:`\delta`
  (as the gradient of a zero perturbation added to each Dense output,
  through ``flax.linen.intercept_methods``) and :math:`J_r`; the layers'
  inputs are recorded on the way. Cost: ``O(N K P)`` for that plus
  ``O(N1 N2 K^2 (\sum_l d_l + P_r))``, against ``O(N1 N2 K^2 P)`` for a
  full Jacobian contraction — for LeNet-300-100 and LeNet-5, whose weights
  are almost all Dense, about a tenth of the FLOPs (``benchmarks/README.md``).
  Differentiable in ``params``; equal to ``empirical_fn``'s kernels to
  float32 rounding (``tests/test_ntk_structured.py``).

  Args:
    apply_fn: ``(params, x [N, ...]) -> [N, K]`` built on ``flax.linen``
      (``model.apply``), examples independent; which Dense layers are
      factored: :func:`dense_layers`.
    trace_axes: ``(-1,)`` for ``[N1, N2]`` (mean over logits) or ``()``
      for ``[N1, N2, K, K]``.

  Returns:
    ``kernel(params, x1, x2=None) -> [N1, N2]`` or ``[N1, N2, K, K]``.

  Raises:
    ValueError: (when called) ``apply_fn`` did not go through the Dense
      layers found when it was traced again (e.g. a cached jitted trace).

  References:
    Novak, Sohl-Dickstein & Schoenholz, "Fast Finite Width Neural Tangent
    Kernel", ICML 2022.
  """
  trace_axes = _canonical_trace_axes(trace_axes)

  def per_example(flat, x, layers):
    """``(J_r [K, P_r], deltas [K, d_out] each, inputs [d_in] each)``;
    ``flat``: the parameters, ``flax.traverse_util.flatten_dict``-ed."""
    fixed = {k: v for k, v in flat.items() if k[:-1] in layers}
    rest = {k: v for k, v in flat.items() if k[:-1] not in layers}

    def logits(rest, eps):
      inputs = {}

      def perturb(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = tuple(context.module.path)
        if _is_dense_call(context) and path in eps:
          inputs[path] = args[0][0]
          out = out + eps[path]
        return out

      merged = traverse_util.unflatten_dict({**rest, **fixed})
      with nn.intercept_methods(perturb):
        out = apply_fn(merged, x[None])[0]
      if set(inputs) != set(eps):
        raise ValueError(
          "structured NTK: apply_fn did not call the Dense layers "
          f"{sorted(set(eps) - set(inputs))} when traced again (is it a "
          "jitted function with a cached trace?)"
        )
      return out, inputs

    eps = {path: jnp.zeros(a.shape, a.dtype) for path, a in layers.items()}
    (j_rest, j_eps), inputs = jax.jacrev(logits, (0, 1), has_aux=True)(
      rest, eps
    )
    k = next(iter(jax.tree.leaves((j_rest, j_eps)))).shape[0]
    j_r = jnp.concatenate(
      [v.reshape(k, -1) for v in j_rest.values()] + [jnp.zeros((k, 0))],
      axis=1,
    )
    deltas = [j_eps[path][:, 0, :] for path in layers]
    return j_r, deltas, [inputs[path] for path in layers]

  def contract(p, q, gram=None):
    """``sum_z gram[i, j] p[i, c, z] q[j, d, z]``, or its logit mean."""
    if trace_axes:
      k = jnp.einsum("icz,jcz->ij", p, q) / p.shape[1]
      return k if gram is None else gram * k
    k = jnp.einsum("icz,jdz->ijcd", p, q)
    return k if gram is None else gram[:, :, None, None] * k

  def kernel(params, x1, x2=None):
    layers = dense_layers(apply_fn, params, x1)
    flat = traverse_util.flatten_dict(params)
    features = jax.vmap(lambda x: per_example(flat, x, layers))
    j1, d1, a1 = features(x1)
    j2, d2, a2 = (j1, d1, a1) if x2 is None else features(x2)
    k = contract(j1, j2)
    for path, p, q, u, v in zip(layers, d1, d2, a1, a2, strict=True):
      bias = 1.0 if path + ("bias",) in flat else 0.0
      k = k + contract(p, q, u @ v.T + bias)
    return k

  return jax.jit(kernel)


def empirical(
  apply_fn: ApplyFn,
  params: PyTree,
  x1: jax.Array,
  x2: jax.Array | None = None,
  *,
  trace_axes: tuple[int, ...] = (-1,),
  implementation: str = AUTO,
  batch_size: int | None = None,
) -> jax.Array:
  r"""The empirical NTK of ``apply_fn`` at ``params`` between two batches.

  .. math::
    \Theta(x_1, x_2)_{ab,kl} = \sum_p \frac{\partial f_k(x_{1a})}{\partial
    \theta_p} \frac{\partial f_l(x_{2b})}{\partial \theta_p}, \qquad
    \Theta^{tr}_{ab} = \frac1K \sum_k \Theta_{ab,kk}

  computed by ``nt.empirical_ntk_fn(..., vmap_axes=0)`` with the chosen
  implementation (``"auto"``: :func:`choose_implementation`, per block).
  With ``batch_size``, ``x1`` and ``x2`` are cut into blocks of
  ``batch_size`` examples (the last zero-padded) and the kernel is assembled
  block by block in one ``lax.map`` over block pairs (one compiled block
  kernel, blocks computed sequentially), so the implementation's working
  memory is that of one ``[B, B]`` block; for ``x2=None`` only the blocks on
  and above the diagonal are computed. Differentiable in ``params``; usable
  inside ``jit``. Each call compiles: to call many times, build the kernel
  once with :func:`empirical_fn`.

  Args:
    apply_fn: ``(params, x [N, ...]) -> [N, K]`` logits, examples
      independent (for flax: ``lambda p, x: model.apply(p, x)``, closing
      over ``batch_stats`` if any).
    params: the pytree the NTK differentiates with respect to.
    x1: ``[N1, ...]`` inputs, e.g. ``[N1, H, W, C]`` float32 in [0, 1].
    x2: ``[N2, ...]`` inputs, or None for ``x2 = x1``.
    trace_axes: ``(-1,)``: mean over logits, ``[N1, N2]``; ``()``: the full
      kernel ``[N1, N2, K, K]``.
    implementation: ``"auto"``, ``"jacobian_contraction"``,
      ``"ntk_vector_products"`` or ``"structured"``.
    batch_size: block size ``B`` (need not divide N1 or N2), or None.

  Returns:
    ``[N1, N2]`` (traced) or ``[N1, N2, K, K]`` float32 kernel.

  Raises:
    ValueError: unknown implementation, bad ``trace_axes`` or
      ``batch_size < 1``.

  Examples:
    >>> import jax.numpy as jnp
    >>> f = lambda p, x: x.reshape(x.shape[0], -1) @ p  # J = x per logit.
    >>> x = jnp.array([[1.0, 0.0], [1.0, 2.0]])
    >>> empirical(f, jnp.ones((2, 3)), x)  # = x x^T
    Array([[1., 1.],
           [1., 5.]], dtype=float32)

  References:
    Jacot, Gabriel & Hongler, "Neural Tangent Kernel", NeurIPS 2018, Eq. (3)
    (finite-width form). Novak, Sohl-Dickstein & Schoenholz, "Fast Finite
    Width Neural Tangent Kernel", ICML 2022 (the implementations).
  """
  kernel = empirical_fn(
    apply_fn,
    trace_axes=trace_axes,
    implementation=implementation,
    batch_size=batch_size,
  )
  return kernel(params, x1, x2)


def adversarial(
  apply_fn: ApplyFn,
  params: PyTree,
  x: jax.Array,
  y: jax.Array,
  key: jax.Array,
  *,
  attack: Callable[..., jax.Array],
  attack_params: PyTree | None = None,
  **empirical_kw,
) -> tuple[jax.Array, jax.Array]:
  r"""The empirical NTK at adversarial points, and the points.

  .. math::
    \tilde X = \mathrm{attack}(z \mapsto f(\theta_a, z), X, y), \qquad
    \Theta(\tilde X, \tilde X; \theta)

  with :math:`\theta_a` = ``attack_params`` (e.g. the dense teacher's, as
  in the AWT search) or ``params``. The attack's points are held fixed
  (``stop_gradient``): gradients with respect to ``params`` flow through the
  kernel only, as in adversarial training (Madry et al. 2018).

  Args:
    apply_fn: ``(params, x [N, H, W, C]) -> [N, K]`` logits.
    params: parameters of the kernel.
    x: ``[N, H, W, C]`` float32 in [0, 1].
    y: ``[N]`` int32 labels.
    key: PRNG key (or per-example keys ``[N, 2]``) for the attack.
    attack: an awt attack with its settings bound, ``attack(logits_fn, x, y,
      key) -> x_adv``, e.g. ``functools.partial(awt.attacks.pgd, eps=0.3,
      step_size=0.01, steps=40)``.
    attack_params: parameters to attack, or None for ``params``.
    **empirical_kw: ``trace_axes``, ``implementation``, ``batch_size`` of
      :func:`empirical`.

  Returns:
    ``(kernel, x_adv)``: ``[N, N]`` (or ``[N, N, K, K]``) and
    ``x_adv: [N, H, W, C]`` float32 in [0, 1].

  References:
    Shi, Zheng, Ding, Gao & Zhang, "Finding Dynamics Preserving Adversarial
    Winning Tickets", AISTATS 2022 (the adversarial NTK).
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial
    Attacks", ICLR 2018.
  """
  target = params if attack_params is None else attack_params
  x_adv = attack(lambda z: apply_fn(target, z), x, y, key)
  x_adv = jax.lax.stop_gradient(x_adv)
  return empirical(apply_fn, params, x_adv, None, **empirical_kw), x_adv


def to_matrix(k: jax.Array) -> jax.Array:
  """A kernel as a matrix: ``[N1, N2, K, L]`` -> ``[N1 K, N2 L]``.

  Row ``a K + k``, column ``b L + l``; a traced ``[N1, N2]`` kernel is
  returned as is.

  Args:
    k: ``[N1, N2]`` or ``[N1, N2, K, L]``.

  Returns:
    ``[N1, N2]`` or ``[N1 K, N2 L]``.

  Raises:
    ValueError: for a kernel of another rank.
  """
  if k.ndim == 2:
    return k
  if k.ndim != 4:
    raise ValueError(f"kernel must be [N1, N2] or [N1, N2, K, K]: {k.shape}")
  n1, n2, c1, c2 = k.shape
  return jnp.transpose(k, (0, 2, 1, 3)).reshape(n1 * c1, n2 * c2)


def relative_distance(k1: jax.Array, k2: jax.Array) -> jax.Array:
  r"""Relative Frobenius distance of ``k1`` to the reference ``k2``.

  .. math:: d(K_1, K_2) = \|K_1 - K_2\|_F / \|K_2\|_F

  The ``ntk_distance_at_init`` of a ticket run (``k2``: the dense net's).

  Args:
    k1: kernel, any shape.
    k2: reference kernel, the same shape.

  Returns:
    Scalar float32 >= 0 (0 iff equal).
  """
  return jnp.linalg.norm((k1 - k2).ravel()) / jnp.linalg.norm(k2.ravel())


def _center(k: jax.Array) -> jax.Array:
  """H K H with H = I - 1 1^T / n, as row and column mean removal."""
  k = k - jnp.mean(k, axis=0, keepdims=True)
  return k - jnp.mean(k, axis=1, keepdims=True)


def alignment(
  k1: jax.Array, k2: jax.Array, centered: bool = False
) -> jax.Array:
  r"""Kernel alignment: the cosine of two kernels in Frobenius inner product.

  .. math::
    A(K_1, K_2) = \frac{\langle K_1, K_2\rangle_F}{\|K_1\|_F \|K_2\|_F},
    \qquad A_c(K_1, K_2) = A(H K_1 H, H K_2 H),\ H = I - \tfrac1n 1 1^\top

  In [-1, 1]; 1 iff one kernel is a positive multiple of the other; scale
  invariant. The centered form (Cortes et al.) removes the feature-space
  mean first.

  Args:
    k1: ``[N, N]`` (or ``[N, N, K, K]``, taken as :func:`to_matrix`).
    k2: same shape.
    centered: centered alignment (square matrices only).

  Returns:
    Scalar float32.

  References:
    Cristianini, Shawe-Taylor, Elisseeff & Kandola, "On Kernel-Target
    Alignment", NeurIPS 2002, Definition 1.
    Cortes, Mohri & Rostamizadeh, "Algorithms for Learning Kernels Based on
    Centered Alignment", JMLR 2012, Definitions 1-2.
  """
  k1, k2 = to_matrix(k1), to_matrix(k2)
  if centered:
    k1, k2 = _center(k1), _center(k2)
  inner = jnp.vdot(k1, k2)
  return inner / (jnp.linalg.norm(k1.ravel()) * jnp.linalg.norm(k2.ravel()))


def _symmetric(k: jax.Array) -> jax.Array:
  k = to_matrix(k)
  if k.shape[0] != k.shape[1]:
    raise ValueError(f"spectra need a square kernel, got {k.shape}")
  return 0.5 * (k + k.T)


def _eigh_descending(k: jax.Array) -> tuple[jax.Array, jax.Array]:
  evals, evecs = jnp.linalg.eigh(_symmetric(k))
  return evals[::-1], evecs[:, ::-1]


def eigenvalues(k: jax.Array) -> jax.Array:
  """Eigenvalues of a symmetric kernel, in descending order.

  Args:
    k: ``[N, N]`` (or ``[N, N, K, K]`` as ``[N K, N K]``); symmetrized as
      ``(K + K^T) / 2`` against rounding.

  Returns:
    ``[N]`` (or ``[N K]``) float32, descending.
  """
  return _eigh_descending(k)[0]


def condition_number(k: jax.Array) -> jax.Array:
  r"""Condition number :math:`\lambda_{max} / \lambda_{min}` of a PSD kernel.

  It bounds the speed of NTK gradient descent: the slowest mode converges
  at rate :math:`\eta \lambda_{min}` with :math:`\eta < 2/\lambda_{max}`
  (Lee et al. 2019, Sec. 2.2; Xiao et al. 2020).

  Args:
    k: ``[N, N]`` (or ``[N, N, K, K]``) symmetric.

  Returns:
    Scalar float32; ``inf`` when the smallest eigenvalue is <= 0.
  """
  evals = eigenvalues(k)
  return jnp.where(evals[-1] > 0, evals[0] / evals[-1], jnp.inf)


def effective_rank(k: jax.Array) -> jax.Array:
  r"""Effective rank: exp of the entropy of the normalized spectrum.

  .. math::
    \mathrm{erank}(K) = \exp\Big(-\sum_i p_i \log p_i\Big), \qquad
    p_i = \lambda_i / \sum_j \lambda_j

  with :math:`0 \log 0 = 0` and negative (rounding) eigenvalues set to 0.
  Between 1 (rank one) and n (identity).

  Args:
    k: ``[N, N]`` (or ``[N, N, K, K]``) symmetric PSD.

  Returns:
    Scalar float32 in [1, N].

  References:
    Roy & Vetterli, "The Effective Rank: A Measure of Effective
    Dimensionality", EUSIPCO 2007, Definition 1 (Eq. 2-3).
  """
  evals = jnp.maximum(eigenvalues(k), 0.0)
  p = evals / jnp.sum(evals)
  safe = jnp.where(p > 0, p, 1.0)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(safe), 0.0)))


def topk_eigenvector_overlap(k1: jax.Array, k2: jax.Array, k: int) -> jax.Array:
  r"""Overlap of the top-``k`` eigenspaces of two symmetric kernels.

  .. math::
    O_k(K_1, K_2) = \frac1k \|U_1^\top U_2\|_F^2 = \frac1k \sum_{i,j \le k}
    \cos^2(u_{1i}, u_{2j})

  with :math:`U_a \in \mathbb{R}^{n \times k}` the top-``k`` eigenvectors:
  the mean squared cosine of the principal angles between the subspaces,
  1 iff they coincide, 0 iff orthogonal. The NTK's top eigenvectors are the
  directions gradient descent learns first (Lee et al. 2019, Eq. 9).

  Args:
    k1: ``[N, N]`` (or ``[N, N, K, K]``) symmetric.
    k2: same shape.
    k: subspace dimension, ``1 <= k <= N``.

  Returns:
    Scalar float32 in [0, 1].
  """
  u1 = _eigh_descending(k1)[1][:, :k]
  u2 = _eigh_descending(k2)[1][:, :k]
  return jnp.sum(jnp.square(u1.T @ u2)) / k


def _trace_axes_of(k_train_train: jax.Array) -> tuple[int, ...]:
  """(-1,) for a traced kernel [N, N], () for a full one [N, N, K, K]."""
  if k_train_train.ndim == 2:
    return (-1,)
  if k_train_train.ndim == 4:
    return ()
  raise ValueError(
    f"k_train_train must be [N, N] or [N, N, K, K]: {k_train_train.shape}"
  )


def _predict(
  predict_fn, ts, k_train_train, k_test_train, y_train, fx_train_0, fx_test_0
):
  """Runs an ``nt.predict`` function; missing starting outputs are zeros."""
  ts = jnp.asarray(ts, k_train_train.dtype)
  fx_train_0 = _zeros_if_none(fx_train_0, y_train.shape, y_train.dtype)
  if k_test_train is None:
    return predict_fn(ts, fx_train_0, None, None), None
  fx_test_0 = _zeros_if_none(
    fx_test_0, _test_shape(k_test_train, y_train), y_train.dtype
  )
  return predict_fn(ts, fx_train_0, fx_test_0, k_test_train)


def _zeros_if_none(fx, shape, dtype):
  return jnp.zeros(shape, dtype) if fx is None else fx


def _test_shape(k_test_train, y_train):
  return (k_test_train.shape[0], *y_train.shape[1:])


def linearized_mse_predictions(
  k_train_train: jax.Array,
  k_test_train: jax.Array | None,
  y_train: jax.Array,
  ts: jax.Array,
  *,
  learning_rate: float,
  fx_train_0: jax.Array | None = None,
  fx_test_0: jax.Array | None = None,
  diag_reg: float = 0.0,
) -> tuple[jax.Array, jax.Array | None]:
  r"""Outputs of the linearized network under MSE gradient flow, in closed form.

  For the loss :math:`L = \frac{1}{2 N K} \|f(X) - Y\|^2` and gradient flow
  at rate ``learning_rate`` :math:`\eta` (time ``t`` in steps):

  .. math::
    f_t(X) = Y + e^{-\eta t \Theta / (N K)} (f_0(X) - Y), \quad
    f_t(x) = f_0(x) - \Theta(x, X) \Theta^{-1}
      (I - e^{-\eta t \Theta/(NK)}) (f_0(X) - Y)

  through ``nt.predict.gradient_descent_mse`` (eigendecomposition of
  :math:`\Theta`). At :math:`t = \infty` the test output is kernel
  regression, :math:`f_0(x) + \Theta(x, X) \Theta^{-1} (Y - f_0(X))`.
  ``k_train_train`` must be concrete (not traced by ``jit``/``grad``): NT
  decomposes it eagerly.

  Args:
    k_train_train: ``[N, N]`` (traced kernel, acting as :math:`\Theta
      \otimes I_K`) or ``[N, N, K, K]`` (exact finite-width dynamics).
    k_test_train: ``[M, N]`` or ``[M, N, K, K]``, or None (no test outputs).
    y_train: ``[N, K]`` float32 targets.
    ts: ``[T]`` times in steps (``inf`` allowed), increasing.
    learning_rate: ``eta``.
    fx_train_0: ``[N, K]`` outputs at ``t = 0``; None for zeros.
    fx_test_0: ``[M, K]`` outputs at ``t = 0``; None for zeros.
    diag_reg: ridge added to the kernel's diagonal, relative to its mean
      trace.

  Returns:
    ``(fx_train [T, N, K], fx_test [T, M, K] or None)``.

  References:
    Lee et al., "Wide Neural Networks of Any Depth Evolve as Linear Models
    Under Gradient Descent", NeurIPS 2019, Eq. (9)-(10).
  """
  trace_axes = _trace_axes_of(k_train_train)
  predict_fn = nt.predict.gradient_descent_mse(
    k_train_train,
    y_train,
    learning_rate=learning_rate,
    diag_reg=diag_reg,
    trace_axes=trace_axes,
  )
  return _predict(
    predict_fn, ts, k_train_train, k_test_train, y_train, fx_train_0, fx_test_0
  )


def cross_entropy(fx: jax.Array, y: jax.Array) -> jax.Array:
  r"""Mean over examples of the softmax cross-entropy with soft labels.

  .. math:: L = -\frac1N \sum_n \sum_k y_{nk} \log \mathrm{softmax}(f_n)_k

  Args:
    fx: ``[N, K]`` logits.
    y: ``[N, K]`` one-hot (or soft) labels.

  Returns:
    Scalar.
  """
  return -jnp.sum(y * jax.nn.log_softmax(fx, axis=-1)) / fx.shape[0]


def linearized_ce_predictions(
  k_train_train: jax.Array,
  k_test_train: jax.Array | None,
  y_train: jax.Array,
  ts: jax.Array,
  *,
  learning_rate: float,
  fx_train_0: jax.Array | None = None,
  fx_test_0: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None]:
  r"""Outputs of the linearized network under cross-entropy gradient flow.

  .. math::
    \frac{d f_t(X)}{dt} = -\eta\, \Theta(X, X)\, \nabla_{f} L(f_t(X)),
    \quad \frac{d f_t(x)}{dt} = -\eta\, \Theta(x, X)\, \nabla_f L(f_t(X))

  with :math:`L` = :func:`cross_entropy` (mean over examples), integrated
  with NT's ODE solver (``nt.predict.gradient_descent``; no closed form).
  A traced kernel ``[N, N]`` acts as :math:`\Theta \otimes I_K`.

  Args:
    k_train_train: ``[N, N]`` or ``[N, N, K, K]``.
    k_test_train: ``[M, N]`` or ``[M, N, K, K]``, or None.
    y_train: ``[N, K]`` one-hot labels.
    ts: ``[T]`` times in steps, increasing.
    learning_rate: ``eta``.
    fx_train_0: ``[N, K]`` logits at ``t = 0``; None for zeros.
    fx_test_0: ``[M, K]`` logits at ``t = 0``; None for zeros.

  Returns:
    ``(fx_train [T, N, K], fx_test [T, M, K] or None)``.

  References:
    Lee et al., "Wide Neural Networks of Any Depth Evolve as Linear Models
    Under Gradient Descent", NeurIPS 2019, Eq. (7)-(8) (general loss).
  """
  trace_axes = _trace_axes_of(k_train_train)
  predict_fn = nt.predict.gradient_descent(
    cross_entropy,
    k_train_train,
    y_train,
    learning_rate=learning_rate,
    trace_axes=trace_axes,
  )
  return _predict(
    predict_fn, ts, k_train_train, k_test_train, y_train, fx_train_0, fx_test_0
  )


@flax.struct.dataclass
class LinearizationComparison:
  """Outputs of a network and of its linearization along training.

  Attributes:
    steps: ``[T]`` int32 gradient steps, ``0, 1, ..., steps``.
    train_distance: ``[T]`` relative Frobenius distance of the network's
      train outputs to the linearized ones, at each step.
    test_distance: ``[T]`` the same on the test inputs.
    fx_train: ``[T, N, K]`` the network's train outputs.
    fx_test: ``[T, M, K]`` the network's test outputs.
    fx_train_lin: ``[T, N, K]`` the linearized train outputs.
    fx_test_lin: ``[T, M, K]`` the linearized test outputs.
  """

  steps: jax.Array
  train_distance: jax.Array
  test_distance: jax.Array
  fx_train: jax.Array
  fx_test: jax.Array
  fx_train_lin: jax.Array
  fx_test_lin: jax.Array


def mse(fx: jax.Array, y: jax.Array) -> jax.Array:
  r"""Half the mean squared error, :math:`\frac{1}{2 N K}\|f - y\|^2`.

  The normalization of ``nt.predict.gradient_descent_mse``.

  Args:
    fx: ``[N, K]`` outputs.
    y: ``[N, K]`` targets.

  Returns:
    Scalar.
  """
  return 0.5 * jnp.mean(jnp.square(fx - y))


def _gd_outputs(f, params0, x_train, y_train, x_test, learning_rate, steps):
  """Full-batch GD on ``mse``; outputs after 0..steps steps, one lax.scan."""

  def outputs(params):
    return f(params, x_train), f(params, x_test)

  def step(params, _):
    grads = jax.grad(lambda p: mse(f(p, x_train), y_train))(params)
    params = jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
    return params, outputs(params)

  _, (fx_train, fx_test) = jax.lax.scan(step, params0, None, length=steps)
  fx_train0, fx_test0 = outputs(params0)
  return (
    jnp.concatenate([fx_train0[None], fx_train]),
    jnp.concatenate([fx_test0[None], fx_test]),
  )


def compare_to_linearization(
  apply_fn: ApplyFn,
  params0: PyTree,
  x_train: jax.Array,
  y_train: jax.Array,
  x_test: jax.Array,
  *,
  learning_rate: float,
  steps: int,
  method: str = "linearize",
  implementation: str = AUTO,
  batch_size: int | None = None,
) -> LinearizationComparison:
  r"""Trains a network by gradient descent and compares it to its linearization.

  The network is trained with full-batch gradient descent on
  :func:`mse`, ``steps`` steps in one ``lax.scan``; its outputs after each
  step are compared with those of the linearized network

  .. math::
    f^{lin}(\theta, x) = f(\theta_0, x) + J(\theta_0, x)(\theta - \theta_0)

  trained the same way: ``method="linearize"`` runs the same discrete
  gradient descent on ``nt.linearize(apply_fn, params0)`` (isolating the
  network's nonlinearity), ``method="kernel"`` uses the closed-form gradient
  flow of :func:`linearized_mse_predictions` with the full finite-width
  kernel ``[N, N, K, K]`` at ``t = step`` (adds the discretization error,
  O(learning rate)). For wide networks in NTK parameterization the distance
  stays O(1/sqrt(width)) along training (Lee et al. 2019, Theorem 2.1).

  Args:
    apply_fn: ``(params, x [N, ...]) -> [N, K]``.
    params0: parameters at initialization.
    x_train: ``[N, ...]`` training inputs.
    y_train: ``[N, K]`` float32 targets (e.g. one-hot).
    x_test: ``[M, ...]`` held-out inputs.
    learning_rate: gradient-descent step size.
    steps: number of steps.
    method: ``"linearize"`` or ``"kernel"``.
    implementation: NTK implementation for ``method="kernel"``.
    batch_size: NTK block size for ``method="kernel"``.

  Returns:
    A :class:`LinearizationComparison` over steps ``0..steps``.

  Raises:
    ValueError: unknown method.

  References:
    Lee et al., "Wide Neural Networks of Any Depth Evolve as Linear Models
    Under Gradient Descent", NeurIPS 2019, Eq. (5)-(6), (9)-(10), Thm 2.1.
  """
  methods = ("linearize", "kernel")
  if method not in methods:
    raise ValueError(f"unknown method {method!r}; known: {', '.join(methods)}")
  run = jax.jit(_gd_outputs, static_argnums=(0, 6))
  fx_train, fx_test = run(
    apply_fn, params0, x_train, y_train, x_test, learning_rate, steps
  )
  if method == "linearize":
    f_lin = nt.linearize(apply_fn, params0)
    fx_train_lin, fx_test_lin = run(
      f_lin, params0, x_train, y_train, x_test, learning_rate, steps
    )
  else:
    kernel = empirical_fn(
      apply_fn,
      trace_axes=(),
      implementation=implementation,
      batch_size=batch_size,
    )
    fx_train_lin, fx_test_lin = linearized_mse_predictions(
      kernel(params0, x_train, None),
      kernel(params0, x_test, x_train),
      y_train,
      jnp.arange(steps + 1),
      learning_rate=learning_rate,
      fx_train_0=fx_train[0],
      fx_test_0=fx_test[0],
    )
  distance = jax.vmap(relative_distance)
  return LinearizationComparison(
    steps=jnp.arange(steps + 1),
    train_distance=distance(fx_train, fx_train_lin),
    test_distance=distance(fx_test, fx_test_lin),
    fx_train=fx_train,
    fx_test=fx_test,
    fx_train_lin=fx_train_lin,
    fx_test_lin=fx_test_lin,
  )


__all__ = [
  "AUTO",
  "STRUCTURED",
  "IMPLEMENTATION_NAMES",
  "LinearizationComparison",
  "adversarial",
  "alignment",
  "choose_implementation",
  "compare_to_linearization",
  "condition_number",
  "cost_model",
  "cross_entropy",
  "dense_layers",
  "effective_rank",
  "eigenvalues",
  "empirical",
  "empirical_fn",
  "forward_flops",
  "linearized_ce_predictions",
  "linearized_mse_predictions",
  "mse",
  "relative_distance",
  "structured_fn",
  "structured_fraction",
  "to_matrix",
  "topk_eigenvector_overlap",
]
