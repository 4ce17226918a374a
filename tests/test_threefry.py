"""The attacks' unrolled threefry draws equal ``jax.random``'s bit for bit.

The reference is JAX's own threefry (its primitive, counter layout and
bits-to-float conversion); equality down to the bit means switching to the
unrolled form changed no attack's random start or training run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awt.attacks import _threefry


def test_hash_equals_jax_threefry_on_a_known_answer_and_random_counters():
  # Known answer of Threefry-2x32-20 (Random123's kat_vectors):
  # key (0x13198a2e, 0x03707344), counter (0x243f6a88, 0x85a308d3).
  key = jnp.array([0x13198A2E, 0x03707344], jnp.uint32)
  ctr = (
    jnp.array([0x243F6A88], jnp.uint32),
    jnp.array([0x85A308D3], jnp.uint32),
  )
  ours = _threefry.threefry2x32(key, *ctr)
  assert [int(w[0]) for w in ours] == [0xC4923A9C, 0x483DF7A0]
  counters = jax.random.bits(jax.random.PRNGKey(1), (2, 50), jnp.uint32)
  ref = jax.extend.random.threefry_2x32(key, counters.reshape(-1))
  ours = jnp.concatenate(_threefry.threefry2x32(key, *counters))
  np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("shape", [(7,), (3, 8, 8, 1), (2, 28, 28, 3)])
def test_uniform_and_normal_equal_jax_random_bit_for_bit(shape):
  key = jax.random.PRNGKey(11)
  np.testing.assert_array_equal(
    _threefry.uniform(key, shape, -0.3, 0.3),
    jax.random.uniform(key, shape, minval=-0.3, maxval=0.3),
  )
  np.testing.assert_array_equal(
    _threefry.normal(key, shape), jax.random.normal(key, shape)
  )


def test_typed_keys_and_vmapped_keys_draw_what_single_raw_keys_draw():
  keys = jax.random.split(jax.random.PRNGKey(5), 4)
  batched = jax.jit(jax.vmap(lambda k: _threefry.uniform(k, (6, 6, 1))))(keys)
  one = _threefry.uniform(jax.random.wrap_key_data(keys[2]), (6, 6, 1))
  np.testing.assert_array_equal(batched[2], one)
  np.testing.assert_array_equal(
    batched[2], jax.random.uniform(keys[2], (6, 6, 1))
  )


def test_the_draw_is_straight_line_code_on_cpu():
  """No while loop: the rolled loop is what made jax.random slow on CPU."""
  f = jax.jit(lambda k: _threefry.uniform(k, (8, 8, 1)))
  hlo = f.lower(jax.random.PRNGKey(0)).compile().as_text()
  assert "while" not in hlo
  ref = jax.jit(lambda k: jax.random.uniform(k, (8, 8, 1)))
  if jax.default_backend() == "cpu":  # the reason the module exists
    assert "while" in ref.lower(jax.random.PRNGKey(0)).compile().as_text()
