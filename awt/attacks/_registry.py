"""The attack registry: every attack name configs and binaries accept.

One entry per attack, keyed by its name form, e.g. ``pgd<steps>[r<restarts>]``:
``<p>`` is a positive integer passed to the entry's factory as keyword ``p``,
``[...]`` is optional (an absent parameter takes the factory's default, so
the default is written once, in the factory's signature), anything else is
literal. ``<a>+<b>+...`` names the ensemble of registered attacks, and a few
ensembles have names of their own (``autoattack``).

A bounded attack's factory is ``build(eps, norm, **params) -> attack`` and a
minimal-perturbation attack's ``build(**params) -> attack``; either
``attack(logits_fn, x, y, keys) -> x_adv``. ``eps`` may be a traced scalar.
Adding an attack is one ``register`` call below (or anywhere, at run time).
"""

import dataclasses
import functools
import inspect
import re
import types
from collections.abc import Callable, Mapping, Sequence

from awt.attacks.apgd import apgd, apgd_t
from awt.attacks.cw import cw_l2
from awt.attacks.deepfool import deepfool
from awt.attacks.fgsm import fgsm
from awt.attacks.pgd import pgd
from awt.attacks.square import square

# A form's tokens: a parameter, an optional group's brackets, literal text.
_TOKEN = re.compile(r"<(\w+)>|\[|\]|[^<>\[\]]+")


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """One registered attack: its name form and factory.

  Attributes:
    name: the form's literal head (``pgd`` for ``pgd<steps>[r<restarts>]``),
      the registry key.
    form: the accepted names, as listed in error messages.
    build: the factory (see the module docstring).
    minimal: a minimal-perturbation attack (no eps) rather than a bounded
      one.
    black_box: the attack only queries the model's scores, never its
      gradients (the gradient-masking check compares the two kinds).
    pattern: the regular expression of ``form``.
    defaults: the factory's defaults of the optional parameters.
  """

  name: str
  form: str
  build: Callable[..., Callable]
  minimal: bool
  black_box: bool
  pattern: re.Pattern
  defaults: Mapping[str, int]


_ATTACKS: dict[str, AttackSpec] = {}
_ENSEMBLES: dict[str, tuple[str, ...]] = {}


def _compile(form: str) -> tuple[re.Pattern, list[str], list[str]]:
  """``form`` as a regex, with its required and optional parameter names."""
  tokens = [m for m in _TOKEN.finditer(form)]
  if "".join(m.group(0) for m in tokens) != form:
    raise ValueError(f"attack form {form!r}: unbalanced '<' or '>'")
  parts, depth, required, optional = [], 0, [], []
  for m in tokens:
    if m.group(1):
      parts.append(rf"(?P<{m.group(1)}>\d+)")
      (optional if depth else required).append(m.group(1))
    elif m.group(0) in "[]":
      depth += 1 if m.group(0) == "[" else -1
      parts.append("(?:" if m.group(0) == "[" else ")?")
      if depth < 0:
        break
    else:
      parts.append(re.escape(m.group(0)))
  if depth:
    raise ValueError(f"attack form {form!r}: unbalanced '[' or ']'")
  return re.compile("".join(parts)), required, optional


def register(
  form: str,
  build: Callable[..., Callable],
  *,
  minimal: bool = False,
  black_box: bool = False,
) -> AttackSpec:
  """Makes the names of ``form`` resolve to ``build``'s attacks.

  Args:
    form: e.g. ``"square[<queries>]"``; its head (text before the first
      ``<`` or ``[``) must be new and free of ``+``.
    build: ``(eps, norm, **params) -> attack`` (bounded) or
      ``(**params) -> attack`` (``minimal=True``), taking every parameter of
      ``form`` as a keyword, with a default for each optional one.
    minimal: a minimal-perturbation attack, parsed by ``lookup(...,
      minimal=True)`` only.
    black_box: the attack never uses gradients.

  Returns:
    The new entry.

  Raises:
    ValueError: for a taken head, a malformed form, or a parameter that
      ``build`` does not take (or that is optional without a default).

  Examples:
    >>> import functools
    >>> spec = register("fgsm-twice", lambda eps, norm: functools.partial(
    ...     fgsm, eps=2 * eps, norm=norm))
    >>> lookup("fgsm-twice")[0] is spec
    True
    >>> unregister("fgsm-twice")
  """
  name = re.match(r"[^<\[]*", form).group(0)
  if not name or "+" in form:
    raise ValueError(f"attack form {form!r} needs a head and no '+'")
  if name in _ATTACKS or name in _ENSEMBLES:
    raise ValueError(f"attack {name!r} is already registered")
  pattern, required, optional = _compile(form)
  params = inspect.signature(build).parameters
  defaults = {}
  for p in (*required, *optional):
    if p not in params:
      raise ValueError(f"attack form {form!r}: the factory takes no {p!r}")
    if p in optional:
      if params[p].default is inspect.Parameter.empty:
        raise ValueError(f"attack form {form!r}: {p!r} needs a default")
      defaults[p] = params[p].default
  spec = AttackSpec(
    name=name,
    form=form,
    build=build,
    minimal=minimal,
    black_box=black_box,
    pattern=pattern,
    defaults=types.MappingProxyType(defaults),
  )
  _ATTACKS[name] = spec
  return spec


def register_ensemble(name: str, members: Sequence[str]) -> None:
  """Names the ensemble ``"+".join(members)`` ``name`` (e.g. autoattack).

  Raises:
    ValueError: for a taken name or one with ``+``.
  """
  if name in _ATTACKS or name in _ENSEMBLES or "+" in name:
    raise ValueError(f"ensemble name {name!r} is taken or has '+'")
  _ENSEMBLES[name] = tuple(members)


def unregister(name: str) -> None:
  """Removes the attack or ensemble registered under ``name`` (its head).

  Raises:
    KeyError: if nothing is registered under ``name``.
  """
  if name in _ENSEMBLES:
    del _ENSEMBLES[name]
  else:
    del _ATTACKS[name]


def name_forms(*, minimal: bool = False) -> str:
  """The accepted names, comma-separated, in registration order.

  Bounded attacks (the default) end with the named ensembles and
  ``<name>+<name>+...``.
  """
  forms = [s.form for s in _ATTACKS.values() if s.minimal == minimal]
  if not minimal:
    forms += [*_ENSEMBLES, "<name>+<name>+..."]
  return ", ".join(forms)


def ensemble_members(name: str) -> tuple[str, ...] | None:
  """The member names of an ensemble name (``a+b``, ``autoattack``), or None.

  Examples:
    >>> ensemble_members("pgd40+apgd-t"), ensemble_members("pgd40")
    (('pgd40', 'apgd-t'), None)
  """
  if name in _ENSEMBLES:
    return _ENSEMBLES[name]
  if "+" in name:
    return tuple(name.split("+"))
  return None


def match(
  name: str, *, minimal: bool = False
) -> tuple[AttackSpec, dict[str, int]] | None:
  """The entry a single attack's name matches, and its parameters, or None.

  The parameters hold every optional one (the factory's default where the
  name omits it); a name with a parameter ``< 1`` matches nothing.
  """
  for spec in _ATTACKS.values():
    m = spec.minimal == minimal and spec.pattern.fullmatch(name)
    if m:
      given = {k: int(v) for k, v in m.groupdict().items() if v is not None}
      if min(given.values(), default=1) < 1:
        return None
      return spec, {**spec.defaults, **given}
  return None


def lookup(
  name: str, *, minimal: bool = False
) -> tuple[AttackSpec, dict[str, int]]:
  """``match``, raising for a name no entry accepts.

  Examples:
    >>> spec, params = lookup("pgd10")
    >>> spec.form, params
    ('pgd<steps>[r<restarts>]', {'restarts': 1, 'steps': 10})

  Raises:
    ValueError: one line, listing ``name_forms(minimal=minimal)``.
  """
  found = match(name, minimal=minimal)
  if found is None:
    kind = "minimal-perturbation attack" if minimal else "attack"
    forms = name_forms(minimal=minimal)
    raise ValueError(f"unknown {kind} {name!r}; known forms: {forms}")
  return found


# --- The registered attacks. ------------------------------------------------


def _pgd(eps, norm, *, steps: int, restarts: int = 1, random_start=True):
  """PGD with Madry et al. 2018's step size 2.5·eps/steps."""
  return functools.partial(
    pgd,
    eps=eps,
    step_size=2.5 * eps / steps,
    steps=steps,
    norm=norm,
    restarts=restarts,
    random_start=random_start,
  )


def _apgd(loss: str) -> Callable[..., Callable]:
  def build(eps, norm, *, steps: int = 100):
    return functools.partial(apgd, eps=eps, norm=norm, loss=loss, steps=steps)

  return build


register("fgsm", lambda eps, norm: functools.partial(fgsm, eps=eps, norm=norm))
register("pgd<steps>[r<restarts>]", _pgd)
# PGD started at x: PGD's step and best iterate, BIM-like, not Kurakin et
# al. 2017's exact schedule (awt.studies.sparsity_robustness runs that).
register("bim<steps>", functools.partial(_pgd, random_start=False))
register("apgd-ce[<steps>]", _apgd("ce"))
register("apgd-dlr[<steps>]", _apgd("dlr"))
register(
  "apgd-t[<steps>]",
  lambda eps, norm, *, steps=100: functools.partial(
    apgd_t, eps=eps, norm=norm, steps=steps
  ),
)
register(
  "square[<queries>]",
  lambda eps, norm, *, queries=1000: functools.partial(
    square, eps=eps, norm=norm, queries=queries
  ),
  black_box=True,
)
register(
  "deepfool[<max_iter>]",
  lambda *, max_iter=50: functools.partial(
    deepfool, norm="l2", max_iter=max_iter
  ),
  minimal=True,
)
register(
  "cw_l2[-<binary_steps>x<steps>]",
  lambda *, binary_steps=9, steps=1000: functools.partial(
    cw_l2, binary_steps=binary_steps, steps=steps
  ),
  minimal=True,
)
# AutoAttack's "standard" version (Croce & Hein 2020) without FAB-T, which
# awt does not implement.
AUTOATTACK = ("apgd-ce", "apgd-t", "square5000")
register_ensemble("autoattack", AUTOATTACK)
