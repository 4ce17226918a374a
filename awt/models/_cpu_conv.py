"""Convolution and max pooling lowered for XLA:CPU, chosen by backend.

XLA:CPU (JAX 0.10) runs the input gradient of a convolution inside a
``lax.fori_loop`` (PGD's loop) through its generic convolution path, and
lowers the max-pool gradient (``select_and_scatter``) to scatter fusions;
together they were 54-65% of a LeNet-5 / Conv-4 PGD-10 training step
(``benchmarks/README.md``, issue 17). On the CPU this module replaces them
with lowerings XLA:CPU runs fast, computing the same numbers up to float
rounding:

* **slice-and-matmul** for a conv with a narrow patch
  (``kh * kw * C_in <= MATMUL_MAX_PATCH``: LeNet-5's convs, Conv-4's first):
  the ``kh * kw`` shifted (strided) slices of the padded input concatenated
  on the channel axis, times the kernel reshaped to
  ``[kh * kw * C_in, C_out]``; its gradients are JAX's autodiff of that, a
  matmul and the slices' transposes (pads), no convolution at all. A conv
  with at most ``CHANNEL_MAJOR_MAX_IN`` inputs and
  ``CHANNEL_MAJOR_MAX_OUT`` outputs (LeNet-5's) is computed channel-major,
  its input moved there by a matmul with the identity, so that its input
  gradient is a matmul too (:func:`_channel_major_conv`);
* **flipped-kernel input gradient** for wider patches: XLA's forward
  convolution, with a ``jax.custom_vjp`` whose input gradient is an
  ordinary convolution of the (zero-interleaved, for strides > 1) output
  gradient with the spatially flipped, in/out-transposed kernel, and whose
  kernel gradient is one matmul per kernel row of shifted input slices
  with the output gradient, summed over cache-sized chunks of the batch
  (XLA:CPU's own kernel gradient, a convolution contracting the batch,
  runs 100-250x slower inside a ``lax.scan``, where awt trains). Both
  convolutions are computed an output row taller and cropped where that
  is cheap, which moves them from YNNPACK to Eigen, 1.05-1.85x faster on
  Conv-4's layers (:func:`_xla_conv`);
* **max pooling without scatter** (:func:`max_pool`): non-overlapping
  windows as a reshape and a max; its ``custom_jvp`` takes each window's
  tangent at the window's first maximum (row-major order), found with
  equality masks against the broadcast max, so its gradient is a masked
  broadcast. That is the element
  ``nn.max_pool``'s gradient (``select_and_scatter`` with ``>=``) picks, so
  ties are broken the same way; a window holding a NaN gets no gradient.

Forward mode: the pooling and the slice-and-matmul conv support
``jax.jvp``; the flipped-kernel conv is a ``custom_vjp``, so ``jax.jvp`` /
``jax.jacfwd`` of a model with a wide conv raises under ``"cpu"`` (use
``"xla"``), while forward-over-reverse (GraSP's Hessian-vector products)
works.

``impl`` (``model.conv_impl``, default ``"auto"``) chooses: ``"xla"`` is
``nn.Conv`` / ``nn.max_pool`` unchanged, ``"cpu"`` this module's lowerings,
``"auto"`` the latter exactly when ``jax.default_backend() == "cpu"`` at
trace time, so GPUs and TPUs keep XLA's convolutions (cuDNN, the TPU
compiler). Parameters are the same either way: every conv is an
``nn.Conv`` (``kernel`` ``[kh, kw, C_in, C_out]``, ``bias``, the same
initializers), only its ``conv_general_dilated`` differs.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "xla", "cpu")

# Widest patch kh * kw * C_in lowered to slice-and-matmul; wider ones use
# the flipped-kernel input gradient. Measured on 2 cores, batch 128, 10
# forward + input-gradient steps in a fori_loop (ms, XLA autodiff ->
# slice-and-matmul -> flipped kernel): 28x28x1 5x5 149 -> 77 -> 148;
# 14x14x6 5x5 233 -> 41 -> 55; 32x32x3 3x3 347 -> 252 -> 420; 32x32x64 3x3
# 6,872 -> 7,480 -> 3,709; 16x16x64 3x3 (to 128) 7,280 -> 3,559 -> 1,941.
MATMUL_MAX_PATCH = 256

# Slice-and-matmul convs with at most this many input and output channels
# are computed channel-major (_channel_major_conv): fewer inputs than the 8
# float32 of an AVX2 vector, whose NHWC patch matrix interleaves blocks
# narrower than a vector, and few outputs, whose transpose back to NHWC is
# cheap. Measured on 2 cores of an AVX2 CPU, batch 128: ten forwards and
# input gradients of one layer in a fori_loop, channel-major / NHWC time
# (median of 10-20 alternated calls): 28x28, 1 -> 6, 5x5 0.58; 14x14 and
# 10x10, 6 -> 16, 5x5 0.85 and 0.96; 32x32, 3 -> 16, 3x3 0.88; but 3 -> 32
# 1.03, 3 -> 64 1.00, 8 -> 16 1.10, 16 -> 16 1.18-1.24. The whole LeNet-5
# PGD-10 step (both convs channel-major) took 0.64x the time, Conv-4's
# (its first conv, 3 -> 64, too) 1.04x.
CHANNEL_MAJOR_MAX_IN = 7
CHANNEL_MAJOR_MAX_OUT = 16

# Bytes of one chunk's patch rows in the kernel gradient (_kernel_grad).
KERNEL_GRAD_CHUNK_BYTES = 6 * 2**20

# XLA:CPU leaves convolutions with at most this many input and output
# channels to Eigen (``_xla_conv``).
YNN_MAX_NARROW_CHANNELS = 16

_NHWC = ("NHWC", "HWIO", "NHWC")


def resolve(impl: str) -> str:
  """``"xla"`` or ``"cpu"``: the lowering ``impl`` means on this backend.

  Args:
    impl: one of ``CONV_IMPLS``; ``"auto"`` is ``"cpu"`` exactly when
      ``jax.default_backend()`` is the CPU.

  Returns:
    ``"xla"`` or ``"cpu"``.

  Raises:
    ValueError: for an unknown ``impl``.
  """
  if impl not in CONV_IMPLS:
    raise ValueError(
      f"unknown conv_impl {impl!r}; known: {', '.join(CONV_IMPLS)}"
    )
  if impl == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "xla"
  return impl


def conv(features: int, kernel_size, *, impl: str = "auto", **conv_kw):
  """An ``nn.Conv`` whose convolution is lowered as ``impl`` says.

  Args:
    features: output channels.
    kernel_size: ``(kh, kw)``.
    impl: one of ``CONV_IMPLS``.
    **conv_kw: further ``nn.Conv`` fields (``padding``, ``strides``,
      ``use_bias``, ``dtype``, ``kernel_init``, ``name``, ...).

  Returns:
    An ``nn.Conv``: the same parameters (names, shapes, initializers) for
    every ``impl``.
  """
  if resolve(impl) == "cpu":
    conv_kw["conv_general_dilated_cls"] = _CpuConvGeneralDilated
  return nn.Conv(features, kernel_size, **conv_kw)


class _CpuConvGeneralDilated:
  """What ``nn.Conv`` instantiates from ``conv_general_dilated_cls``."""

  def __call__(self, *args, **kwargs) -> jax.Array:
    return conv_general_dilated(*args, **kwargs)


def conv_general_dilated(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision=None,
  preferred_element_type=None,
) -> jax.Array:
  """``lax.conv_general_dilated`` with the CPU lowerings of this module.

  The 2-D NHWC / HWIO case without dilation or groups (every conv of awt's
  models) is lowered by slice-and-matmul when ``kh * kw * C_in <=
  MATMUL_MAX_PATCH``, else with the flipped-kernel input gradient; any
  other call goes to ``lax.conv_general_dilated`` unchanged.

  Args:
    lhs: [B, H, W, C_in] (with NHWC dimension numbers).
    rhs: [kh, kw, C_in, C_out].
    window_strides: ``(sh, sw)``.
    padding: "SAME", "VALID" or ``((top, bottom), (left, right))``.
    lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
      batch_group_count, precision, preferred_element_type: as in
      ``lax.conv_general_dilated``.

  Returns:
    [B, H', W', C_out], the convolution.
  """
  args = (lhs, rhs, window_strides, padding)
  kw = dict(
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
  plain = (
    lhs.ndim == 4
    and rhs.ndim == 4
    and feature_group_count == 1
    and batch_group_count == 1
    and preferred_element_type is None
    and all(d == 1 for d in (lhs_dilation or (1, 1)) + (rhs_dilation or (1, 1)))
    and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  )
  if not plain:
    return lax.conv_general_dilated(*args, **kw)
  kh, kw_, cin, _ = rhs.shape
  strides = tuple(window_strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw_), strides, padding)
  pads = tuple(tuple(p) for p in padding)
  if kh * kw_ * cin <= MATMUL_MAX_PATCH:
    return _slice_matmul_conv(lhs, rhs, strides, pads, precision)
  return _flipped_grad_conv(lhs, rhs, strides, pads, precision)


def _xla_conv(x, w, strides, pads, precision):
  """``lax.conv_general_dilated``, NHWC / HWIO, run by Eigen, not YNNPACK.

  XLA:CPU (jaxlib 0.10) hands a 2-D float32 (or float64, not bfloat16)
  NHWC convolution with more than ``YNN_MAX_NARROW_CHANNELS`` input or
  output channels to YNNPACK unless its output is larger than its input in
  a spatial dimension
  (``IsConvolutionOpSupportedByYnn``, ``xla/backends/cpu/ynn_support.cc``);
  otherwise Eigen's spatial convolution runs it. On this project's 2-core
  CPU, at batch 128, Eigen was 1.03-4.2x faster on every 3x3 conv of
  Conv-4 / VGG / ResNet shapes timed, 1.7-1.9x on Conv-4's layers with 64
  channels and 4.2x on a 'VALID' one; a few small problems (4x4x128 ->
  128, or 8x8x64 at batch 8) lost 14% (``python -m
  benchmarks.conv_backend``, ``benchmarks/README.md``). So a stride-1 conv
  whose height would not grow is computed ``extra`` output rows taller
  (more bottom padding, ``extra = H - H' + 1``: one row for 'SAME') and
  cropped back, when those rows add at most a quarter of its work
  (``4 * extra <= H'``); the kept rows are the same sums, so the value
  equals XLA's up to float rounding.

  Args:
    x: [B, H, W, C_in].
    w: [kh, kw, C_in, C_out].
    strides: ``(sh, sw)``.
    pads: ``((top, bottom), (left, right))``.
    precision: ``lax.Precision``, or None.

  Returns:
    [B, H', W', C_out].
  """
  (top, bottom), cols = pads
  out_h = (x.shape[1] + top + bottom - w.shape[0]) // strides[0] + 1
  extra = x.shape[1] - out_h + 1
  tall = (
    strides[0] == 1
    and x.dtype in (jnp.float32, jnp.float64)
    and max(w.shape[2:]) > YNN_MAX_NARROW_CHANNELS
    and 0 < 4 * extra <= out_h
  )
  if tall:
    pads = ((top, bottom + extra), cols)
  y = lax.conv_general_dilated(
    x, w, strides, pads, dimension_numbers=_NHWC, precision=precision
  )
  return y[:, :out_h] if tall else y


def _shifted_slices(x, kernel_hw, strides, pads) -> list[list[jax.Array]]:
  """``[i][j]``: the padded input's slice that kernel tap ``(i, j)`` sees.

  Args:
    x: [B, H, W, C_in].
    kernel_hw: ``(kh, kw)``.
    strides: ``(sh, sw)``.
    pads: ``((top, bottom), (left, right))``.

  Returns:
    ``kh`` lists of ``kw`` arrays [B, H', W', C_in]: entry ``[i][j]`` is
    ``x_p[:, i + sh * o_h, j + sw * o_w, :]`` over the output positions.
  """
  kh, kw = kernel_hw
  sh, sw = strides
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  b, hp, wp, cin = xp.shape
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  return [
    [
      lax.slice(
        xp,
        (0, i, j, 0),
        (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, cin),
        (1, sh, sw, 1),
      )
      for j in range(kw)
    ]
    for i in range(kh)
  ]


def _slice_matmul_conv(x, w, strides, pads, precision):
  """The conv as one matmul of shifted input slices with the kernel.

  .. math::
    y[b, o_h, o_w, :] = \\sum_{i, j} x_p[b, s_h o_h + i, s_w o_w + j, :]
    W[i, j] = \\mathrm{concat}_{i, j}(\\text{slices}) \\cdot
    W_{[k_h k_w C_{in}, C_{out}]}

  Args:
    x: [B, H, W, C_in].
    w: [kh, kw, C_in, C_out].
    strides: ``(sh, sw)``.
    pads: ``((top, bottom), (left, right))``.
    precision: ``lax.Precision`` of the matmul, or None.

  Returns:
    [B, H', W', C_out].
  """
  kh, kw, cin, cout = w.shape
  if cin <= CHANNEL_MAJOR_MAX_IN and cout <= CHANNEL_MAJOR_MAX_OUT:
    return _channel_major_conv(x, w, strides, pads, precision)
  rows = _shifted_slices(x, (kh, kw), strides, pads)
  patches = jnp.concatenate([s for row in rows for s in row], axis=-1)
  return jnp.dot(patches, w.reshape(kh * kw * cin, cout), precision=precision)


def _separable_patches(x, kernel_hw, strides, pads) -> jax.Array:
  """Every kernel tap's shifted slice of padded images, rows before columns.

  ``out[i, j, n, o_h, o_w] = x_p[n, s_h o_h + i, s_w o_w + j]``: the
  ``kh`` row-shifted slices ``[kh, N, H', W_p]`` are stacked first and the
  ``kw`` column-shifted slices of that second, the same values as the
  ``kh * kw`` slices of ``x_p`` stacked at once. XLA:CPU runs the one-step
  stack as a concatenate of ``kh * kw`` operands and this one as a loop
  fusion: in LeNet-5's PGD-10 training step (profiled on 2 cores of a
  Xeon, ``benchmarks/README.md``, 2026-12-03) the patches of conv1 and
  conv2 took 10 and 6 ms per step against 16 and 10, the gradient's sums
  of pads 22-23 ms either way, and the step ran 1.07x as fast.

  Args:
    x: [N, H, W] (channel-major images).
    kernel_hw: ``(kh, kw)``.
    strides: ``(sh, sw)``.
    pads: ``((top, bottom), (left, right))``.

  Returns:
    [kh, kw, N, H', W'].
  """
  kh, kw = kernel_hw
  sh, sw = strides
  # [kh, N, H', W_p, 1]: the row-shifted slices (one column tap each).
  rows = jnp.stack(
    [r[0] for r in _shifted_slices(x[..., None], (kh, 1), (sh, 1), pads)]
  )
  _, n, ho, wp, _ = rows.shape
  (cols,) = _shifted_slices(
    rows.reshape(kh * n, ho, wp, 1), (1, kw), (1, sw), ((0, 0), (0, 0))
  )
  return jnp.stack([c.reshape(kh, n, ho, -1) for c in cols], axis=1)


def _channel_major_conv(x, w, strides, pads, precision):
  """Slice-and-matmul with the channels leading: ``W^T [C_out, K] . P [K, N]``.

  The input is moved to ``[C_in, B, H, W]``; its ``kh * kw`` shifted slices
  (:func:`_separable_patches`) are stacked on leading axes, a patch matrix
  ``P`` of ``[kh * kw * C_in, B * H' * W']`` whose rows are whole images (a
  concatenation along the slowest axis, where NHWC's interleaves
  ``kh * kw`` narrow channel blocks), and the output ``[C_out, B H' W']``
  is moved back to NHWC.

  For ``C_in > 1`` the move to channel-major is a matmul with the
  ``C_in x C_in`` identity rather than a transpose: the same numbers (one
  nonzero term per sum; an inf in one channel of a pixel turns that
  pixel's other channels into NaN), but its transpose in the backward pass
  is a matmul as well, so the input gradient is computed once and stored.
  As the transposes of slices, the pads that make up that gradient are
  otherwise fused by XLA:CPU into their consumer — in LeNet-5 the
  gradient of the 2x2 max pooling below the conv, a broadcast — and
  recomputed once for every element of each pooling window: four times.
  On 2 cores of an AVX2 CPU that fusion was the step's largest item
  (``benchmarks/README.md``); the identity matmul costs
  ``2 * B * H * W * C_in^2`` FLOPs per pass.

  Arguments and result as :func:`_slice_matmul_conv`: x [B, H, W, C_in],
  w [kh, kw, C_in, C_out] -> [B, H', W', C_out].
  """
  kh, kw, cin, cout = w.shape
  b, h, w_in, _ = x.shape
  if cin == 1:
    xc = x.reshape(1, b * h * w_in)
  else:
    xc = lax.dot_general(
      jnp.eye(cin, dtype=x.dtype),
      x.reshape(b * h * w_in, cin),
      (((1,), (1,)), ((), ())),
      precision=lax.Precision.HIGHEST,
    )
  # [C_in * B, H, W]: each channel of each image is one "image" here.
  patches = _separable_patches(
    xc.reshape(cin * b, h, w_in), (kh, kw), strides, pads
  )
  *_, ho, wo = patches.shape
  y = jnp.dot(
    w.reshape(kh * kw * cin, cout).T,
    patches.reshape(kh * kw * cin, b * ho * wo),
    precision=precision,
  )
  return y.reshape(cout, b, ho, wo).transpose(1, 2, 3, 0)


def _kernel_grad(x, g, kernel_shape, strides, pads, precision):
  """The conv's kernel gradient as dots, the batch contracted in chunks.

  .. math::
    \\frac{\\partial L}{\\partial W[i, j]} = \\sum_{b, o_h, o_w}
    x_p[b, s_h o_h + i, s_w o_w + j, :]^\\top g[b, o_h, o_w, :]

  XLA:CPU (JAX 0.10) lowers its own kernel gradient (a convolution that
  contracts the batch) inside a while loop to a path 100-250x slower than
  outside one (2.6-6.1 s for one Conv-4 layer at batch 32 inside a
  ``lax.scan``, where awt runs its training epochs: ``benchmarks/README.md``,
  issue 17), so this is dots (:func:`_kernel_grad_dots`). Their patch
  matrices are as large as the layer's input times ``kw``, so the batch is
  contracted ``chunk`` images at a time in a ``lax.scan`` that sums the
  chunks' gradients in float32, ``chunk`` chosen so that one chunk's patch
  rows take about ``KERNEL_GRAD_CHUNK_BYTES`` and stay in cache: on
  Conv-4's three wide layers at batch 128 that ran at 75-136 GFLOP/s
  against 40-81 whole and 27-58 for XLA's own (``python -m
  benchmarks.conv_backend``). A batch that is not a multiple of ``chunk``
  has its last images contracted after the scan.

  Args:
    x: [B, H, W, C_in], the conv's input.
    g: [B, H', W', C_out], the gradient of its output.
    kernel_shape: ``(kh, kw, C_in, C_out)``.
    strides: ``(sh, sw)``.
    pads: ``((top, bottom), (left, right))``.
    precision: ``lax.Precision`` of the matmuls, or None.

  Returns:
    [kh, kw, C_in, C_out], float32 or wider.
  """
  _, kw, cin, _ = kernel_shape
  b, ho, wo, _ = g.shape
  row_bytes = ho * wo * kw * cin * x.dtype.itemsize
  chunk = max(1, KERNEL_GRAD_CHUNK_BYTES // row_bytes)
  grad = functools.partial(
    _kernel_grad_dots,
    kernel_shape=kernel_shape,
    strides=strides,
    pads=pads,
    precision=precision,
  )
  n = b // chunk
  if n <= 1:
    return grad(x, g)
  split = lambda v: v[: n * chunk].reshape(n, chunk, *v.shape[1:])
  dw, _ = lax.scan(
    lambda acc, xg: (acc + grad(*xg), None),
    jnp.zeros(kernel_shape, jnp.promote_types(x.dtype, jnp.float32)),
    (split(x), split(g)),
  )
  if n * chunk < b:
    dw = dw + grad(x[n * chunk :], g[n * chunk :])
  return dw


def _kernel_grad_dots(x, g, *, kernel_shape, strides, pads, precision):
  """The kernel gradient as one dot per kernel row.

  Row ``i``'s ``kw`` shifted slices, concatenated on the channel axis, are
  a ``[B H' W', kw C_in]`` patch matrix ``P_i``, and
  ``dW[i]^T = g_{[B H' W', C_out]}^T P_i``: ``kh`` dots, no convolution.
  ``g`` is transposed once, not ``P_i``: it is ``kw C_in / C_out`` times
  smaller (XLA:CPU's dot copies an operand whose contracted axis is its
  leading one). Per row, not one ``[B H' W', kh kw C_in]`` matrix: a third
  of the memory, equally fast. Arguments and result as :func:`_kernel_grad`
  (keyword-only after ``g``, for its ``functools.partial``).
  """
  kh, kw, cin, cout = kernel_shape
  acc = jnp.promote_types(x.dtype, jnp.float32)
  g_t = g.reshape(-1, cout).T
  return jnp.stack(
    [
      jnp.dot(
        g_t,
        jnp.concatenate(row, axis=-1).reshape(-1, kw * cin),
        precision=precision,
        preferred_element_type=acc,
      ).T.reshape(kw, cin, cout)
      for row in _shifted_slices(x, (kh, kw), strides, pads)
    ]
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _flipped_grad_conv(x, w, strides, pads, precision):
  """XLA's conv whose input gradient is a conv with the flipped kernel.

  Arguments and result as :func:`_xla_conv`: x [B, H, W, C_in], w [kh, kw,
  C_in, C_out] -> [B, H', W', C_out].
  """
  return _xla_conv(x, w, strides, pads, precision)


def _flipped_grad_fwd(x, w, strides, pads, precision):
  return _xla_conv(x, w, strides, pads, precision), (x, w)


def _flipped_grad_bwd(strides, pads, precision, res, g):
  """Input gradient by the transposed-conv identity; kernel gradient by dots.

  With ``g_s`` the output gradient with ``s - 1`` zeros interleaved and
  padded by ``kh - 1 - top`` above and up to the input's size below,
  ``dx = conv(g_s, flip(W)^T)``, VALID, stride 1: the transpose of
  ``x -> conv(x, W)`` (Dumoulin & Visin, "A guide to convolution
  arithmetic for deep learning", 2016, Section 4). The zero interleaving
  and any negative margin (a crop) are a ``lax.pad``; the positive margins
  are the conv's own padding, so that ``_xla_conv`` sees the conv's true
  input size.
  """
  x, w = res
  kh, kw, _, _ = w.shape
  edges, conv_pads = [(0, 0, 0)], []
  for size, k, s, (lo, hi), out in zip(
    x.shape[1:3], (kh, kw), strides, pads, g.shape[1:3], strict=True
  ):
    padded = size + lo + hi
    margins = (k - 1 - lo, padded - (out - 1) * s - 1 - hi)
    edges.append((*(min(m, 0) for m in margins), s - 1))
    conv_pads.append(tuple(max(m, 0) for m in margins))
  edges.append((0, 0, 0))
  g_s = lax.pad(g, jnp.zeros((), g.dtype), edges)
  w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
  dx = _xla_conv(g_s, w_t, (1, 1), tuple(conv_pads), precision)
  dw = _kernel_grad(x, g, w.shape, strides, pads, precision)
  return dx, dw.astype(w.dtype)


_flipped_grad_conv.defvjp(_flipped_grad_fwd, _flipped_grad_bwd)


def max_pool(x: jax.Array, window: int, impl: str = "auto") -> jax.Array:
  """``window`` x ``window`` max pooling, stride ``window``, 'VALID'.

  Args:
    x: [B, H, W, C].
    window: side k of the square, non-overlapping window.
    impl: one of ``CONV_IMPLS``: ``"xla"`` is ``nn.max_pool``; ``"cpu"``
      a reshape-and-max whose gradient has no scatter (module docstring).

  Returns:
    [B, H // k, W // k, C].
  """
  if resolve(impl) == "xla":
    return nn.max_pool(x, (window, window), strides=(window, window))
  return _window_max(x, window)


def _windows(x: jax.Array, k: int) -> jax.Array:
  """[B, H, W, C] -> [B, H // k, k, W // k, k, C] (trailing rows dropped)."""
  b, h, w, c = x.shape
  x = x[:, : h // k * k, : w // k * k]
  return x.reshape(b, h // k, k, w // k, k, c)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _window_max(x: jax.Array, k: int) -> jax.Array:
  """The max over each non-overlapping k x k window; [B, H // k, W // k, C]."""
  return jnp.max(_windows(x, k), axis=(2, 4))


@_window_max.defjvp
def _window_max_jvp(k, primals, tangents):
  """The tangent at each window's first maximum, in row-major order.

  ``first`` is the smallest row-major index ``i * k + j`` at which the
  window equals its max. The tangent map is a select with that mask and a
  sum over the window, so its transpose (the gradient JAX derives) is a
  broadcast and a select: no scatter.
  """
  (x,), (t,) = primals, tangents
  win = _windows(x, k)
  y = jnp.max(win, axis=(2, 4))
  idx = (jnp.arange(k)[:, None] * k + jnp.arange(k)[None, :]).reshape(
    1, 1, k, 1, k, 1
  )
  at_max = win == y[:, :, None, :, None, :]
  first = jnp.min(jnp.where(at_max, idx, k * k), axis=(2, 4), keepdims=True)
  zero = jnp.zeros((), t.dtype)
  return y, jnp.sum(jnp.where(idx == first, _windows(t, k), zero), axis=(2, 4))
