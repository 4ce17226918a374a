"""Checks the tests of awt's CPU lowerings (conv_impl, dense_impl) share."""

import jax
import jax.numpy as jnp
import numpy as np

from awt import attacks


def assert_same_pgd_iterates(reference, model, variables, images, labels):
  """awt's PGD (random start, 4 sign steps in a fori_loop) finds the same
  adversarial examples on ``model`` as on ``reference``, the same network
  with XLA's own lowering (1e-5 absolute, after checking it moved)."""

  def attack(net):
    def run(x, y, key):
      logits_fn = lambda v: net.apply(variables, v, train=False)  # noqa: E731
      return attacks.pgd(
        logits_fn, x, y, key, eps=0.3, step_size=0.075, steps=4
      )

    return jax.jit(run)

  key = jax.random.PRNGKey(7)
  want = attack(reference)(images, labels, key)
  got = attack(model)(images, labels, key)
  assert float(jnp.max(jnp.abs(want - images))) > 0.1  # the attack moved
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
