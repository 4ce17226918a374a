r"""How a ticket's weight budget is spread over the prunable layers.

Every method keeps exactly ``round((1 - s) N)`` of the ``N`` prunable
weights (``pruning.sparsity = s``). ``pruning.scope`` says how they are
spread: ``"global"`` lets the method's scores decide (one ranking over all
layers); ``"layerwise"`` keeps the same fraction of every layer or, with
``pruning.layer_densities``, a given allocation. The given densities
``r_l`` are relative: one factor ``ε`` scales them so the total is the
budget,

.. math::
  d_l = \min(1, \varepsilon\, r_l), \qquad
  \sum_l d_l n_l = (1 - s) N,

a layer that would exceed 1 is made dense and ``ε`` solved again over the
others (how RigL spreads ERK densities), and the ideal counts ``d_l n_l``
are rounded to whole weights by largest remainders, so the total stays
exact. Densities that already spend the budget (a ticket's own
``info["layer_densities"]`` at its sparsity) come back unchanged up to that
rounding.

The point of a given allocation is to separate *where* a method spends its
budget from *which* weights it picks within a layer: the AWT search run
inside SNIP's layer densities, say, against SNIP itself and against a
random mask with the same counts (``ablation="random_same_density"``).

``pruning.layer_densities`` may instead name a method: ``"snip"`` takes
the allocation SNIP's own (global) ranking chooses for this network, data
and key, so a study can run every method inside another's allocation seed
by seed. :func:`awt.pruning.find` turns the name into that ticket's layer
list before the method runs; the named method's passes count towards the
ticket's.

A method receives the target as :func:`target` gives it: a float (one
density, global or per layer) or a tuple of per-layer densities ``c_l /
n_l`` with integer counts ``c_l`` (``masks.num_to_keep(n_l, c_l / n_l) ==
c_l``), which ``awt.masks.topk`` and every method take wherever they take a
density. Methods that prune in rounds (IMP, SynFlow) move each layer along
its own geometric schedule, ``d_l^{k/K}`` after round ``k`` of ``K``
(:func:`schedule`).

Examples:
  >>> parse_spec("pruning.layer_densities", "conv1=0.7; fc1=0.03")
  {'conv1': 0.7, 'fc1': 0.03}
  >>> densities((100, 1000), (0.5, 0.05), 0.1)  # eps = 110 / (50 + 50)
  (0.55, 0.055)
"""

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import ClassVar

from awt import masks
from awt.config import ConfigError, replaced
from awt.pruning._options import METHODS, Option, option

Path = tuple[str, ...]
Target = float | tuple[float, ...]


def parse_spec(key: str, spec: str) -> dict[str, float]:
  """``"conv1=0.7;fc1=0.03"`` -> ``{"conv1": 0.7, "fc1": 0.03}``.

  Entries are separated by ``;`` (a sweep's method variants already use
  ``,``), names are layer names with or without the trailing ``/kernel``.

  Raises:
    ConfigError: one line naming ``key`` and the bad entry.
  """
  out: dict[str, float] = {}
  for item in filter(None, (part.strip() for part in spec.split(";"))):
    name, eq, value = item.rpartition("=")
    name = name.strip().removesuffix("/kernel")
    try:
      density = float(value)
    except ValueError:
      density = math.nan
    if not eq or not name or not 0.0 < density <= 1.0:
      raise ConfigError(
        f"{key} entry {item!r} must be <layer>=<density> with the density "
        "in (0, 1]"
      )
    if name in out:
      raise ConfigError(f"{key} names layer {name!r} twice")
    out[name] = density
  return out


def _method_name(spec: str) -> str | None:
  """The method a spec names (``"snip"``), or None for a layer list."""
  spec = spec.strip()
  return spec if spec and "=" not in spec else None


@dataclasses.dataclass(frozen=True)
class LayerDensities:
  """The check of ``pruning.layer_densities``: a spec :func:`parse_spec`
  reads, a registered method's name, or ``""`` (none)."""

  field_type: ClassVar[type] = str

  def __call__(self, key: str, value) -> str:
    if not isinstance(value, str):
      raise ConfigError(f"{key}={value!r} must be a string")
    name = _method_name(value)
    if name is None:
      parse_spec(key, value)
    elif name not in METHODS:
      raise ConfigError(
        f"{key}={value!r} is neither '<layer>=<density>;...' nor a pruning "
        f"method; methods: {', '.join(sorted(METHODS))}"
      )
    return value

  def allowed(self) -> str:
    return "'<layer>=<density>;...' (relative, each in (0, 1]) | <method> | ''"


LAYER_DENSITIES = Option(
  "layer_densities",
  "",
  LayerDensities(),
  "with scope=layerwise: relative kept fraction of each prunable layer, "
  "scaled to the sparsity, or a method whose own allocation to take "
  "('snip'); '': the same in every layer",
)


def scaled(
  sizes: Sequence[int], relative: Sequence[float], density: float
) -> tuple[float, ...]:
  """``min(1, ε r_l)`` with ``Σ_l d_l n_l = density · Σ_l n_l``.

  A layer whose density would exceed 1 is made dense and ``ε`` solved again
  over the others, until none exceeds 1.

  Args:
    sizes: ``n_l``, the layers' weight counts.
    relative: ``r_l > 0``.
    density: the overall fraction kept, in (0, 1].

  Returns:
    The ideal (unrounded) densities, one per layer.

  References:
    Evci, Gale, Menick, Castro & Elsen, *Rigging the Lottery: Making All
    Tickets Winners*, ICML 2020, Sec. 3 (the ERK distribution, whose
    ``r_l`` is ``Σ_i s_{l,i} / Π_i s_{l,i}``).
  """
  total = density * sum(sizes)
  dense: set[int] = set()
  eps = 0.0
  while len(dense) < len(sizes):
    free = [i for i in range(len(sizes)) if i not in dense]
    left = total - sum(sizes[i] for i in dense)
    eps = left / sum(relative[i] * sizes[i] for i in free)
    top = max(relative[i] for i in free)
    if eps * top <= 1.0:
      break
    dense.update(i for i in free if relative[i] == top)
  return tuple(1.0 if i in dense else eps * r for i, r in enumerate(relative))


def whole_counts(
  sizes: Sequence[int], ideal: Sequence[float], density: float
) -> tuple[int, ...]:
  """Ideal densities rounded to counts summing to ``round(density · N)``.

  Floors, then one more weight for the layers with the largest fractional
  parts (fewer, from the smallest, if the floors overshoot).

  Returns:
    ``c_l`` with ``0 <= c_l <= n_l``.
  """
  exact = [d * n for d, n in zip(ideal, sizes, strict=True)]
  counts = [min(math.floor(v), n) for v, n in zip(exact, sizes, strict=True)]
  left = masks.num_to_keep(sum(sizes), density) - sum(counts)
  by_remainder = sorted(range(len(sizes)), key=lambda i: counts[i] - exact[i])
  step = 1 if left > 0 else -1
  for i in (by_remainder if left > 0 else by_remainder[::-1])[: abs(left)]:
    counts[i] += step
  return tuple(counts)


def densities(
  sizes: Sequence[int], relative: Sequence[float], density: float
) -> tuple[float, ...]:
  """Per-layer densities ``c_l / n_l`` of the allocation at ``density``."""
  counts = whole_counts(sizes, scaled(sizes, relative, density), density)
  return tuple(c / n for c, n in zip(counts, sizes, strict=True))


def power(target: Target, t: float) -> Target:
  """``target ** t``, per layer for a tuple (a geometric pruning schedule)."""
  if isinstance(target, tuple):
    return tuple(d**t for d in target)
  return target**t


def schedule(target: Target, rounds: int) -> tuple[Target, ...]:
  """The target after each of ``rounds`` geometric rounds; the last exact.

  Round ``k`` of ``K`` keeps ``d^{k/K}`` (per layer for a tuple), as IMP
  (Frankle & Carbin 2019) and SynFlow (Tanaka et al. 2020, Algorithm 1)
  prune.
  """
  return tuple(power(target, k / rounds) for k in range(1, rounds)) + (target,)


def overall(target: Target, sizes: Sequence[int]) -> float:
  """The fraction of all ``Σ n_l`` weights a target keeps."""
  if not isinstance(target, tuple):
    return target
  kept = sum(
    masks.num_to_keep(n, d) for n, d in zip(sizes, target, strict=True)
  )
  return kept / sum(sizes)


def _given(ctx) -> dict[str, float]:
  """``pruning.layer_densities`` parsed (``{}``: none given).

  Raises:
    ConfigError: it still names a method (only :func:`awt.pruning.find`
      resolves that).
  """
  spec = option(ctx, "layer_densities")
  name = _method_name(spec)
  if name is not None:
    raise ConfigError(
      f"pruning.layer_densities={spec!r} names a method; call "
      "awt.pruning.find, which takes that method's allocation first"
    )
  return parse_spec("pruning.layer_densities", spec)


def source(ctx) -> str | None:
  """The method whose allocation ``pruning.layer_densities`` asks for, or
  None (a layer list, or nothing)."""
  return _method_name(option(ctx, "layer_densities"))


def with_options(ctx, **values):
  """``ctx`` (a ``PruningContext``) whose ``config.pruning`` has ``values``
  set; the caller's config is left as it is."""
  config = replaced(ctx.config, {f"pruning.{k}": v for k, v in values.items()})
  return dataclasses.replace(ctx, config=config)


def spec_of(densities: dict[str, float]) -> str:
  """The ``layer_densities`` spec of ``masks.layer_densities``' output
  (``repr`` floats, so parsing it gives the same numbers)."""
  return ";".join(
    f"{name.removesuffix('/kernel')}={d!r}" for name, d in densities.items()
  )


def fingerprint(target: Target) -> dict:
  """What a resumable method adds to its checkpoint fingerprint.

  Nothing for one density, so checkpoints written before the option
  existed still match; the per-layer densities otherwise.
  """
  return {"layer_densities": list(target)} if isinstance(target, tuple) else {}


def target(ctx, paths: Sequence[Path], sizes: Sequence[int]) -> Target:
  """The density a method prunes to: ``1 - sparsity``, or per layer.

  Args:
    ctx: a ``PruningContext`` (or a config with a ``pruning`` section).
    paths: the prunable kernels, in layer order.
    sizes: their weight counts.

  Returns:
    A float without ``pruning.layer_densities``, else :func:`densities`
    of the given ones, in the order of ``paths``.

  Raises:
    ConfigError: ``layer_densities`` with ``scope="global"``, or names that
      are not exactly the prunable layers (one line, naming them).
  """
  density = 1.0 - option(ctx, "sparsity")
  given = _given(ctx)
  if not given:
    return density
  if option(ctx, "scope") != "layerwise":
    raise ConfigError(
      "pruning.layer_densities needs pruning.scope='layerwise' (a global "
      "ranking decides the layer densities itself)"
    )
  names = [masks.layer_name(p).removesuffix("/kernel") for p in paths]
  missing = [n for n in names if n not in given]
  extra = [n for n in given if n not in names]
  if missing or extra:
    raise ConfigError(
      f"pruning.layer_densities must name each prunable layer once "
      f"({', '.join(names)}); missing: {', '.join(missing) or '-'}, "
      f"not prunable: {', '.join(extra) or '-'}"
    )
  return densities(sizes, [given[n] for n in names], density)


def refuse(ctx, method: str, why: str) -> None:
  """Raises if ``pruning.layer_densities`` is set for a method that fixes its
  own allocation (``why``: how it does)."""
  if option(ctx, "layer_densities").strip():
    raise ConfigError(
      f"pruning.layer_densities does not apply to method {method!r} ({why})"
    )


def fixed(why: str):
  """Decorator of a method ``fn(ctx, key)`` that fixes its own allocation
  (``why``: how): it refuses ``pruning.layer_densities`` (:func:`refuse`),
  and its ``fixed_allocation`` attribute lets ``awt.pruning.find`` refuse
  before it runs a method that value names."""

  def decorate(fn):
    @functools.wraps(fn)
    def method(ctx, key):
      refuse(ctx, fn.__name__, why)
      return fn(ctx, key)

    method.fixed_allocation = why
    return method

  return decorate
