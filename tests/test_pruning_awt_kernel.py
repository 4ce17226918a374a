"""The sparse network's NTK ``J diag(m) Jᵀ`` against a plain-JAX reference."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from awt import masks, models, training
from awt.pruning import awt as pruning_awt


def _setup():
  model = models.get("mlp", 3, widths=(8, 6))
  params, batch_stats = training.init_variables(
    model, jax.random.PRNGKey(0), (4, 4, 1)
  )
  f = pruning_awt.eval_logits_fn(model, batch_stats)
  x = jax.random.uniform(jax.random.PRNGKey(1), (5, 4, 4, 1))
  mask = masks.random(jax.random.PRNGKey(2), params, 0.6)
  return f, params, mask, x


def _reference(f, params, mask, x):
  """mean_c sum_p m_p J[c, i, p] J[c, j, p], with J at params * mask."""
  eff = jax.tree.map(lambda p, m: p * m, params, mask)
  flat, unravel = jax.flatten_util.ravel_pytree(eff)
  m_flat, _ = jax.flatten_util.ravel_pytree(mask)
  jac = jax.jacrev(lambda w: f(unravel(w), x))(flat)  # [n, C, P]
  return jnp.einsum("icp,p,jcp->ij", jac, m_flat, jac) / jac.shape[1]


def test_masked_ntk_equals_j_diag_m_jt():
  f, params, mask, x = _setup()
  got = pruning_awt.masked_ntk(f, params, mask, x)
  want = _reference(f, params, mask, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # It is not the kernel over all weights at the same point.
  eff = jax.tree.map(lambda p, m: p * m, params, mask)
  full = pruning_awt.ntk_fn(f)(x, None, eff)
  assert not np.allclose(got, full, rtol=1e-3)


def test_masked_ntk_with_all_ones_is_the_dense_ntk():
  f, params, _, x = _setup()
  got = pruning_awt.masked_ntk(f, params, masks.ones(params), x)
  np.testing.assert_allclose(
    got, pruning_awt.ntk_fn(f)(x, None, params), rtol=1e-5, atol=1e-6
  )
