"""Image-sized uniform draws from threefry keys, in straight-line code.

``jax.random.uniform`` on a threefry key lowers, on CPU only, to a rolled
5-iteration loop over the image-sized state (JAX chose compile time over
speed there). PGD's random start is one such draw per training step, and on
CPU that loop took 9% of LeNet-300-100's PGD-10 training step (``python -m
benchmarks.profile_step --model=mlp``: 1.1 of 11.7 ms in ``u32`` adds and
copies). ``uniform`` below computes the same numbers, bit for bit, with the
20 rounds unrolled, which XLA fuses into one elementwise pass.

Not used elsewhere: JAX's own Philox-4x32 would lower unrolled too, but its
``mulhi`` fails to lower under ``pmap`` on JAX 0.10, and RngBitGenerator
keys give a batch's examples bits that depend on the batch (vmap uses the
first key), which breaks the attacks' per-example-key contract.
"""

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(v: jax.Array, r: int) -> jax.Array:
  return (v << np.uint32(r)) | (v >> np.uint32(32 - r))


def threefry2x32(
  key: jax.Array, x0: jax.Array, x1: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 with 20 rounds, unrolled.

  Salmon, Moraes, Dror & Shaw, *Parallel Random Numbers: As Easy as 1, 2,
  3*, SC 2011, Sec. 4 (Threefry-2x32-20: rotations R = 13, 15, 26, 6, 17,
  29, 16, 24; a key injection after every 4 rounds, with the parity word
  0x1BD11BDA).

  Args:
    key: uint32 ``[2]``.
    x0, x1: uint32 counters of one shape.

  Returns:
    The two uint32 output words, shaped like the counters.
  """
  ks = (key[0], key[1], key[0] ^ key[1] ^ _PARITY)
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = _rotl(x1, r) ^ x0
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x0, x1


def uniform(
  key: jax.Array, shape: tuple[int, ...], minval=0.0, maxval=1.0
) -> jax.Array:
  """float32 ``shape`` uniform in ``[minval, maxval)``.

  Equal bit for bit to ``jax.random.uniform(key, shape, jnp.float32, minval,
  maxval)`` for a raw threefry key under ``jax_threefry_partitionable``
  (JAX's default): counter ``i`` is the flat index as two words, the bits
  are the XOR of the hash's two words, and their top 23 bits become the
  mantissa of a float in ``[1, 2)``.

  Args:
    key: raw uint32 ``[2]`` threefry key (or a typed threefry key).
    shape: fewer than 2**32 elements.
    minval, maxval: scalars.
  """
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  size = int(np.prod(shape))
  if size >= 2**32:
    raise ValueError(f"uniform draws fewer than 2**32 numbers, got {size}")
  lo = jnp.arange(size, dtype=jnp.uint32).reshape(shape)
  b0, b1 = threefry2x32(key, jnp.zeros_like(lo), lo)
  mantissa = ((b0 ^ b1) >> np.uint32(9)) | np.uint32(0x3F800000)
  floats = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - 1.0
  minval = jnp.asarray(minval, jnp.float32)
  maxval = jnp.asarray(maxval, jnp.float32)
  return jnp.maximum(minval, floats * (maxval - minval) + minval)


def normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """float32 ``shape`` standard normal, equal bit for bit to
  ``jax.random.normal(key, shape)`` (``sqrt(2) erf^-1(u)``, ``u`` uniform in
  ``(-1, 1)``), under the same conditions as ``uniform``."""
  lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
  u = uniform(key, shape, lo, 1.0)
  return np.float32(np.sqrt(2)) * jax.lax.erf_inv(u)
