"""Attack names to attack functions, through ``awt.attacks``' registry.

A single name resolves to its registered factory (``attacks.lookup``); an
ensemble name (``a+b+c``, ``autoattack``) to ``ensemble_attack`` over its
members' attacks, which keeps, per example, the point of the first member
that succeeds.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from awt import attacks
from awt.attacks import _common

AttackFn = Callable[..., jax.Array]
AUTOATTACK = attacks.AUTOATTACK
ensemble_members = attacks.ensemble_members


def first_success(fooled: jax.Array) -> jax.Array:
  """Index of the first attack that fools each example, or -1 if none.

  Args:
    fooled: ``[A, B]`` bool, ``fooled[a, i]``: attack ``a`` fools example
      ``i``, attacks in the ensemble's order.

  Returns:
    ``[B]`` int32 in ``[-1, A)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> first_success(jnp.array([[0, 1, 0], [0, 1, 1]], bool))
    Array([-1,  0,  1], dtype=int32)
  """
  fooled = jnp.asarray(fooled, bool)
  first = jnp.argmax(fooled, axis=0).astype(jnp.int32)
  return jnp.where(jnp.any(fooled, axis=0), first, -1)


def ensemble_attack(members: Sequence[AttackFn]) -> AttackFn:
  """The AutoAttack ensemble: per example, the first member that succeeds.

  Every member attacks the clean batch with the same per-example keys; the
  returned point of example ``i`` is that of the first member whose point
  ``i`` is misclassified, or ``x[i]`` if none is (AutoAttack's rule; it runs
  later members only on the still-robust points, which gives the same
  result for attacks that treat examples independently).

  Args:
    members: attacks ``(logits_fn, x, y, keys) -> x_adv`` in order.

  Returns:
    An attack ``(logits_fn, x, y, keys) -> x_adv [B, H, W, C]``.

  References:
    Croce & Hein, ICML 2020, Sec. 5 (AutoAttack).
  """
  members = tuple(members)

  def attack(logits_fn, x, y, key):
    points = jnp.stack([m(logits_fn, x, y, key) for m in members])
    preds = jax.vmap(lambda p: jnp.argmax(logits_fn(p), axis=-1))(points)
    first = first_success(preds != y[None, :])
    chosen = points[jnp.maximum(first, 0), jnp.arange(x.shape[0])]
    return jnp.where(_common._bcast(first >= 0, x), chosen, x)

  return attack


def parse_attack(name: str) -> Callable[[float, str], AttackFn]:
  """Turns an attack name into ``make(eps, norm) -> attack(f, x, y, keys)``.

  ``name`` is a registered single attack (``attacks.name_forms()``) or an
  ensemble of them. ``eps`` may be a traced scalar (``robustness_curve``
  sweeps it inside one compiled function).

  Raises:
    ValueError: for a name that is none of the known forms, in one line
      listing them.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> attack = parse_attack("pgd10")(0.1, "linf")
    >>> f = lambda v: v.reshape(v.shape[0], -1) @ jnp.array([[1.0, -1.0]])
    >>> x = jnp.full((1, 1, 1, 1), 0.5)
    >>> attack(f, x, jnp.array([0]), jax.random.PRNGKey(0)).ravel()
    Array([0.4], dtype=float32)
  """
  members = ensemble_members(name)
  if members is not None:
    makes = [parse_attack(m) for m in members]
    return lambda eps, norm: ensemble_attack([mk(eps, norm) for mk in makes])
  spec, params = attacks.lookup(name)
  return lambda eps, norm: spec.build(eps, norm, **params)


def parse_minimal_attack(name: str) -> AttackFn:
  """Turns a minimal-perturbation attack name into ``attack(f, x, y, keys)``.

  ``deepfool`` is l_2 DeepFool with 50 iterations (``deepfool<max_iter>``
  sets them) and overshoot 0.02; ``cw_l2`` is Carlini-Wagner L2 with the
  reference budget, 9 binary steps of 1000 Adam steps
  (``cw_l2-<binary_steps>x<steps>`` sets them); others as registered
  (``attacks.name_forms(minimal=True)``).

  Raises:
    ValueError: for a name that is none of the known forms.
  """
  spec, params = attacks.lookup(name, minimal=True)
  return spec.build(**params)


def is_black_box(name: str) -> bool:
  """Whether an attack only queries the model (Square), not its gradients.

  An ensemble is black-box when every member is; an unknown name is not.
  """
  found = [attacks.match(m) for m in ensemble_members(name) or (name,)]
  return all(f is not None and f[0].black_box for f in found)


def stronger_pgd(name: str) -> str:
  """The convergence check's PGD: ``pgd<4 steps>r<3 restarts>``.

  Examples:
    >>> stronger_pgd("pgd40"), stronger_pgd("pgd10r2")
    ('pgd160r3', 'pgd40r6')

  Raises:
    ValueError: if ``name`` is not a ``pgd<steps>[r<restarts>]`` name.
  """
  found = attacks.match(name)
  if found is None or found[0].name != "pgd":
    raise ValueError(f"not a pgd<steps>[r<restarts>] attack: {name!r}")
  p = found[1]
  return f"pgd{4 * p['steps']}r{3 * p['restarts']}"
