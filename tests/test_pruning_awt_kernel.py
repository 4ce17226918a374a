"""The search loss's kernels and terms against plain-JAX references.

Jacobians ``J[i, c, p] = ∂f_c(x_i) / ∂θ_p`` from ``jax.jacrev`` of the
flattened parameters, kernels as explicit einsums.
"""

import itertools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from awt import masks, models, training
from awt.pruning import awt as pruning_awt

COMBOS = list(
  itertools.product(
    pruning_awt.KERNELS,
    pruning_awt.STUDENT_KERNELS,
    pruning_awt.NTK_NORMS,
    pruning_awt.L2_ON,
  )
)


def _setup():
  model = models.get("mlp", 3, widths=(8, 6))
  params, batch_stats = training.init_variables(
    model, jax.random.PRNGKey(0), (4, 4, 1)
  )
  # Non-zero biases, so that "weights" and "all" L2 differ.
  params = jax.tree.map(lambda p: p + 0.05 if p.ndim == 1 else p, params)
  f = pruning_awt.eval_logits_fn(model, batch_stats)
  x = jax.random.uniform(jax.random.PRNGKey(1), (6, 4, 4, 1))
  mask = masks.random(jax.random.PRNGKey(2), params, 0.6)
  return f, params, mask, x


def _jacobian(f, params, x):
  """``[n, C, P]`` Jacobian of ``f(params, x)`` w.r.t. the flat params."""
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  return jax.jacrev(lambda w: f(unravel(w), x))(flat)


def _reference_kernel(f, params, mask, x, kernel, student):
  """The student kernel: J at ``params * mask``, ``diag(m)`` if masked."""
  eff = jax.tree.map(lambda p, m: p * m, params, mask)
  jac = _jacobian(f, eff, x)
  m = jax.flatten_util.ravel_pytree(mask)[0]
  if student == "all":
    m = jnp.ones_like(m)
  if kernel == "trace":
    return jnp.einsum("icp,p,jcp->ij", jac, m, jac) / jac.shape[1]
  h = x.shape[0] // 2
  return jnp.einsum("icp,p,jdp->ijcd", jac[:h], m, jac[h:])


def _reference_l2(params, mask, l2_on):
  total = 0.0
  for path in masks.prunable_paths(params) if l2_on == "weights" else []:
    w = np.asarray(masks._get(params, path)) * np.asarray(
      masks._get(mask, path)
    )
    total += np.sum(w.astype(np.float64) ** 2)
  if l2_on == "all":
    for p, m in zip(
      jax.tree.leaves(params), jax.tree.leaves(mask), strict=True
    ):
      total += np.sum((np.asarray(p) * np.asarray(m)).astype(np.float64) ** 2)
  return total


def test_masked_ntk_equals_j_diag_m_jt():
  f, params, mask, x = _setup()
  got = pruning_awt.masked_ntk(f, params, mask, x)
  want = _reference_kernel(f, params, mask, x, "trace", "masked")
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


@pytest.mark.parametrize("kernel", pruning_awt.KERNELS)
@pytest.mark.parametrize("student", pruning_awt.STUDENT_KERNELS)
@pytest.mark.parametrize(
  "implementation", ["jacobian_contraction", "ntk_vector_products"]
)
def test_student_kernel_matches_the_einsum_reference(
  kernel, student, implementation
):
  f, params, mask, x = _setup()
  got = pruning_awt.student_ntk(
    f,
    params,
    mask,
    x,
    kernel=kernel,
    student=student,
    implementation=implementation,
  )
  want = _reference_kernel(f, params, mask, x, kernel, student)
  shape = (6, 6) if kernel == "trace" else (3, 3, 3, 3)
  assert got.shape == want.shape == shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_all_and_masked_student_kernels_differ_on_a_sparse_net():
  f, params, mask, x = _setup()
  k = {
    s: pruning_awt.student_ntk(
      f, params, mask, x, kernel="cross_full", student=s
    )
    for s in pruning_awt.STUDENT_KERNELS
  }
  assert not np.allclose(k["all"], k["masked"], rtol=1e-3)


def test_relative_norm_is_the_mean_norm_rescaled():
  f, params, mask, x = _setup()
  k0 = pruning_awt.ntk_of(f, params, x)
  k = pruning_awt.student_ntk(
    f, params, mask, x, kernel="cross_full", student="all"
  )
  relative = pruning_awt.kernel_distance(k, k0, "relative")
  mean = pruning_awt.kernel_distance(k, k0, "mean")
  squared = float(jnp.sum((k - k0) ** 2))
  np.testing.assert_allclose(
    float(relative) * float(jnp.sum(k0**2)), float(mean) * k0.size, rtol=1e-6
  )
  np.testing.assert_allclose(float(mean) * k0.size, squared, rtol=1e-6)
  assert k0.size == 3 * 3 * 3 * 3


def _all_terms(f, params, mask, x, f0, teacher):
  """``{combo: (output, ntk, l2)}`` for every option combination, jitted
  together (one compilation)."""
  paths = masks.prunable_paths(params)

  @jax.jit
  def terms(theta, mask, x, f0, teacher):
    k0 = {
      k: pruning_awt.ntk_of(f, teacher, x, kernel=k)
      for k in ("cross_full", "trace")
    }
    return {
      "/".join(c): pruning_awt.loss_terms(
        f,
        theta,
        mask,
        x,
        f0,
        k0[c[0]],
        kernel=c[0],
        student=c[1],
        ntk_norm=c[2],
        l2_paths=paths if c[3] == "weights" else None,
      )
      for c in COMBOS
    }

  return terms(params, mask, x, f0, teacher)


def test_loss_terms_match_the_reference_in_every_combination():
  f, params, mask, x = _setup()
  teacher = jax.tree.map(lambda p: 1.1 * p, params)
  f0 = f(teacher, x)
  got = _all_terms(f, params, mask, x, f0, teacher)
  eff = jax.tree.map(lambda p, m: p * m, params, mask)
  ones = masks.ones(params)
  for kernel, student, norm, l2_on in COMBOS:
    output, ntk_term, l2 = got[f"{kernel}/{student}/{norm}/{l2_on}"]
    want_out = np.mean((np.asarray(f(eff, x)) - np.asarray(f0)) ** 2)
    k = _reference_kernel(f, params, mask, x, kernel, student)
    k0 = _reference_kernel(f, teacher, ones, x, kernel, "all")
    sq = float(jnp.sum((k - k0) ** 2))
    want_ntk = sq / (float(jnp.sum(k0**2)) if norm == "relative" else k0.size)
    np.testing.assert_allclose(float(output), want_out, rtol=1e-5)
    np.testing.assert_allclose(float(ntk_term), want_ntk, rtol=1e-4)
    np.testing.assert_allclose(
      float(l2), _reference_l2(params, mask, l2_on), rtol=1e-5
    )
  # The L2 options differ (the biases are not zero).
  assert got["trace/all/mean/all"][2] > got["trace/all/mean/weights"][2]


def test_loss_is_exactly_zero_for_the_dense_net_in_every_combination():
  # Called one by one: each kernel is then one compiled program, the same
  # for teacher and student (XLA may round one fused program differently).
  f, params, _, x = _setup()
  ones, paths = masks.ones(params), masks.prunable_paths(params)
  k0 = {
    k: pruning_awt.ntk_of(f, params, x, kernel=k)
    for k in ("cross_full", "trace")
  }
  for kernel, student, norm, l2_on in COMBOS:
    output, ntk_term, _ = pruning_awt.loss_terms(
      f,
      params,
      ones,
      x,
      f(params, x),
      k0[kernel],
      kernel=kernel,
      student=student,
      ntk_norm=norm,
      l2_paths=paths if l2_on == "weights" else None,
    )
    assert float(output) == 0.0 and float(ntk_term) == 0.0
