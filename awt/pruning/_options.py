"""The registry of pruning methods and the options each one declares.

A method is registered once with the options it reads from
``config.pruning``; an :class:`Option` names one key, its default, the
check its values must pass and a one-line doc. Everything else follows from
the declarations: :func:`option` reads a value (the config's, else the
declared default) and checks it, :func:`defaults` builds the
``config.pruning`` block every config file starts from (so
``--config.pruning.<option>=...`` works on a locked config),
:func:`check` is ``awt.config.validate``'s pruning part, and
:func:`describe` is the ``find_ticket`` help.

A check turns a raw config value into the method's value (``int``,
``float``, ``bool`` or ``str``) or raises :class:`awt.config.ConfigError`
in one line naming the key, the value and what is allowed.

Examples:
  >>> from awt import pruning
  >>> pruning.option({"pruning": {"imp_rounds": 3}}, "imp_rounds")
  3
  >>> pruning.option({"pruning": {}}, "imp_rounds")
  5
"""

import dataclasses
import numbers
import textwrap
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import ml_collections
import numpy as np

from awt import masks
from awt.config import ConfigError

Method = Callable[..., Any]  # fn(ctx: PruningContext, key) -> Ticket


class Check(Protocol):
  """A declared option's check: the value as the method uses it, or raise."""

  field_type: ClassVar[type]  # of the config field (ml_collections).

  def __call__(self, key: str, value) -> Any: ...

  def allowed(self) -> str: ...


def _bounds(key: str, value, lo, hi, lo_open: bool, hi_open: bool) -> None:
  if lo is not None and (value <= lo if lo_open else value < lo):
    raise ConfigError(f"{key}={value} must be {'>' if lo_open else '>='} {lo}")
  if hi is not None and (value >= hi if hi_open else value > hi):
    raise ConfigError(f"{key}={value} must be {'<' if hi_open else '<='} {hi}")


def _range(lo, hi, lo_open: bool, hi_open: bool) -> str:
  parts = []
  if lo is not None:
    parts.append(f"{'>' if lo_open else '>='} {lo}")
  if hi is not None:
    parts.append(f"{'<' if hi_open else '<='} {hi}")
  return " and ".join(parts)


@dataclasses.dataclass(frozen=True)
class OneOf:
  """One of a fixed set of names."""

  choices: tuple[str, ...]
  field_type: ClassVar[type] = str

  def __call__(self, key: str, value) -> str:
    if not isinstance(value, str) or value not in self.choices:
      raise ConfigError(
        f"unknown {key} {value!r}; known: {', '.join(self.choices)}"
      )
    return value

  def allowed(self) -> str:
    return " | ".join(self.choices)


@dataclasses.dataclass(frozen=True)
class Flag:
  """True or False."""

  field_type: ClassVar[type] = bool

  def __call__(self, key: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
      raise ConfigError(f"{key}={value!r} must be True or False")
    return bool(value)

  def allowed(self) -> str:
    return "True | False"


@dataclasses.dataclass(frozen=True)
class Integer:
  """An integer (an integral float is taken) in ``[lo, hi]``; ``optional``:
  None is allowed too (the method's own default)."""

  lo: int | None = None
  hi: int | None = None
  optional: bool = False
  field_type: ClassVar[type] = int

  def __call__(self, key: str, value) -> int | None:
    if value is None and self.optional:
      return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
      value = int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, numbers.Integral
    ):
      raise ConfigError(f"{key}={value!r} must be an integer")
    _bounds(key, int(value), self.lo, self.hi, False, False)
    return int(value)

  def allowed(self) -> str:
    kind = " ".join(
      filter(None, ("integer", _range(self.lo, self.hi, False, False)))
    )
    return kind + (" | None" if self.optional else "")


@dataclasses.dataclass(frozen=True)
class Number:
  """A real number in the interval the bounds give; ``optional``: None is
  allowed too (the method's own default)."""

  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False
  hi_open: bool = False
  optional: bool = False
  field_type: ClassVar[type] = float

  def __call__(self, key: str, value) -> float | None:
    if value is None and self.optional:
      return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, numbers.Real
    ):
      raise ConfigError(f"{key}={value!r} must be a number")
    _bounds(key, float(value), self.lo, self.hi, self.lo_open, self.hi_open)
    return float(value)

  def allowed(self) -> str:
    bounds = _range(self.lo, self.hi, self.lo_open, self.hi_open)
    kind = " ".join(filter(None, ("number", bounds)))
    return kind + (" | None" if self.optional else "")


@dataclasses.dataclass(frozen=True)
class Option:
  """One key of ``config.pruning``, declared once.

  Attributes:
    name: the key, ``config.pruning.<name>``.
    default: its value where a config leaves it out; None for an optional
      number whose default the method derives (e.g. ``config.num_epochs``;
      ``doc`` says which).
    check: :class:`OneOf`, :class:`Flag`, :class:`Integer` or
      :class:`Number`.
    doc: one line: what it does, the default's source.
  """

  name: str
  default: Any
  check: Check
  doc: str

  def __post_init__(self):
    self.value(self.default)  # A declaration's default must pass its check.

  def value(self, raw) -> Any:
    """``raw`` as the method uses it; ConfigError naming ``pruning.<name>``."""
    return self.check(f"pruning.{self.name}", raw)

  def field(self):
    """The config field: the default, or a typed None placeholder."""
    if self.default is None:
      return ml_collections.FieldReference(None, self.check.field_type)
    return self.default


# The options every method reads (``awt.pruning.scores.prunable`` and the
# exact top-k of ``awt.masks``).
SPARSITY = Option(
  "sparsity",
  0.0,
  Number(lo=0.0, hi=1.0, hi_open=True),
  "fraction of the prunable weights removed (exactly round((1-s) n) kept)",
)
SCOPE = Option(
  "scope",
  "global",
  OneOf(masks.SCOPES),
  "one ranking over all prunable layers, or the same density in each",
)
KEEP_FIRST = Option(
  "keep_first", False, Flag(), "leave the first Dense/Conv layer dense"
)
KEEP_LAST = Option(
  "keep_last", False, Flag(), "leave the last Dense/Conv layer dense"
)

METHODS: dict[str, Method] = {}  # name -> fn: the registry.
_READS: dict[str, tuple[str, ...]] = {}  # name -> its own options' names.
_OPTIONS: dict[str, Option] = {}  # every declared option by name.
_SHARED: list[str] = []  # names of the options every method reads.


def _declare(options) -> None:
  """Adds ``options`` to the declared ones; all or none of them."""
  for o in options:
    known = _OPTIONS.get(o.name)
    if known is not None and known != o:
      raise ValueError(
        f"pruning option {o.name!r} is already declared differently: {known}"
      )
    if o.name == "method":
      raise ValueError("'method' is the registry name, not an option")
  _OPTIONS.update((o.name, o) for o in options)


def share(*options: Option) -> None:
  """Declares ``options`` as read by every method (e.g. ``sparsity``)."""
  _declare(options)
  _SHARED.extend(o.name for o in options if o.name not in _SHARED)


def register(name: str, fn: Method, *, options=()) -> None:
  """Registers ``fn(ctx, key) -> Ticket`` under ``name``.

  Args:
    name: the ``config.pruning.method`` that selects it.
    fn: the method.
    options: the :class:`Option` s it reads besides the shared ones; an
      option several methods read is the same declaration in each.

  Raises:
    ValueError: a taken name, or an option declared differently before.

  Examples:
    >>> from awt import pruning
    >>> frac = pruning.Option("toy_frac", 0.5, pruning.Number(lo=0.0), "doc")
    >>> pruning.register("toy", lambda ctx, key: None, options=(frac,))
    >>> pruning.option({"pruning": {"toy_frac": 0.25}}, "toy_frac")
    0.25
    >>> pruning.defaults().toy_frac
    0.5
    >>> pruning.unregister("toy")
    >>> "toy" in pruning.names()
    False
  """
  if name in METHODS:
    raise ValueError(f"pruning method {name!r} is already registered")
  _declare(options)
  METHODS[name] = fn
  _READS[name] = tuple(o.name for o in options)


def unregister(name: str) -> None:
  """Removes method ``name`` and the options no other method reads."""
  if name not in METHODS:
    raise ValueError(f"unknown pruning method {name!r}")
  del METHODS[name]
  own = _READS.pop(name)
  still = {n for reads in _READS.values() for n in reads} | set(_SHARED)
  for n in own:
    if n not in still:
      del _OPTIONS[n]


def options(method: str | None = None) -> tuple[Option, ...]:
  """The options ``method`` reads (the shared ones first), or all."""
  if method is None:
    names = list(_SHARED) + sorted(set(_OPTIONS) - set(_SHARED))
  else:
    names = list(_SHARED) + [n for n in _READS[method] if n not in _SHARED]
  return tuple(_OPTIONS[n] for n in names)


def option(ctx, name: str) -> Any:
  """``config.pruning.<name>``, else the declared default, checked.

  Args:
    ctx: a ``PruningContext``, or a run config (anything with a
      ``"pruning"`` section).
    name: a declared option.

  Returns:
    The value as :meth:`Option.value` converts it.

  Raises:
    ConfigError: a value its check refuses (one line); KeyError for an
      undeclared name (a typo in the method).
  """
  if name not in _OPTIONS:
    raise KeyError(f"undeclared pruning option {name!r}")
  declared = _OPTIONS[name]
  section = getattr(ctx, "config", ctx)["pruning"]
  return declared.value(section.get(name, declared.default))


def defaults(**values) -> ml_collections.ConfigDict:
  """The ``config.pruning`` block: every declared option at its default.

  Args:
    **values: ``method`` (default ``"dense"``) and options a config sets
      otherwise (checked).

  Returns:
    An unlocked ConfigDict; a config file's ``c.pruning``.
  """
  block = ml_collections.ConfigDict({"method": values.pop("method", "dense")})
  for o in options():
    block[o.name] = o.field()
  for key, value in values.items():
    if key not in _OPTIONS:
      raise KeyError(f"undeclared pruning option {key!r}")
    block[key] = _OPTIONS[key].value(value)
  return block


def check(config) -> None:
  """Every ``config.pruning.<option>`` against its declaration.

  Raises:
    ConfigError: one line naming the first undeclared key or bad value.
  """
  for key, raw in config["pruning"].items():
    if key == "method":
      continue
    if key not in _OPTIONS:
      raise ConfigError(
        f"unknown option pruning.{key}; known: {', '.join(sorted(_OPTIONS))}"
      )
    _OPTIONS[key].value(raw)


def describe(width: int = 79) -> str:
  """The registered methods, the options each reads and every option's
  default, allowed values and doc: the ``find_ticket`` help."""
  groups: dict[tuple[str, ...], list[str]] = {}
  for name in sorted(METHODS):
    groups.setdefault(_READS[name], []).append(name)
  lines = [
    textwrap.fill(
      "Methods (--config.pruning.method=NAME) and their own options; every "
      f"method also reads {', '.join(_SHARED)}:",
      width,
    )
  ]
  for reads, methods in groups.items():
    lines.append(
      textwrap.fill(
        f"{', '.join(methods)}: {', '.join(reads) or '-'}",
        width,
        initial_indent="  ",
        subsequent_indent="    ",
      )
    )
  lines.append("Options (--config.pruning.OPTION=VALUE; E: config.num_epochs):")
  lines.extend(_line(o, "  ", width) for o in options())
  return "\n".join(lines)


def _line(o: Option, indent: str, width: int) -> str:
  return textwrap.fill(
    f"{o.name}={o.default!r} ({o.check.allowed()}): {o.doc}",
    width,
    initial_indent=indent,
    subsequent_indent=indent + "    ",
  )
