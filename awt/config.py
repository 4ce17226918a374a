"""Config validation and construction of the objects a config names.

Every binary validates its ``ml_collections.ConfigDict`` with ``validate``
before any compute; a bad value ends the run with one line naming it.
The schema is docs/design.md's "Config schema".
"""

import contextlib
import copy
import numbers

import jax.numpy as jnp

from awt import data as data_lib
from awt import evaluation, models, training

PRUNING_METHODS = ("dense", "random", "magnitude")
# model.dtype: the compute dtype of Dense/Conv/BatchNorm. Parameters (the
# master weights), gradients and optimizer state stay float32 either way;
# "bfloat16" is mixed precision for accelerators (Micikevicius et al. 2018;
# bf16 needs no loss scaling: it has float32's exponent range).
MODEL_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# member_map: how ``experiment.train_members`` runs its members' steps
# inside one compiled program ("auto": see ``experiment.member_map``).
MEMBER_MAPS = ("auto", "vmap", "loop")


class ConfigError(ValueError):
  """A config value that cannot work; the message names key and value."""


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if part not in node:
      raise ConfigError(f"config is missing {dotted!r}")
    node = node[part]
  return node


def replaced(config, values: dict):
  """A deep copy of ``config`` with ``values`` set; ``config`` is untouched.

  Args:
    config: a ``ConfigDict`` (locked or not) or a plain nested dict.
    values: dotted key -> value, e.g. ``{"seed": 1, "pruning.method":
      "snip"}``; a missing last part is added, a missing parent is a
      ``KeyError``.

  Returns:
    The copy (the studies' per-cell configs are built this way, so a cell
    never changes the config a sweep shares).
  """
  c = copy.deepcopy(config)
  with getattr(c, "unlocked", contextlib.nullcontext)():
    for dotted, value in values.items():
      *parents, leaf = dotted.split(".")
      node = c
      for part in parents:
        node = node[part]
      node[leaf] = value
  return c


def _number(
  config, key, *, lo=None, hi=None, lo_open=False, hi_open=False, integer=False
):
  v = _get(config, key)
  kind = numbers.Integral if integer else numbers.Real
  if isinstance(v, bool) or not isinstance(v, kind):
    what = "an integer" if integer else "a number"
    raise ConfigError(f"{key}={v!r} must be {what}")
  if lo is not None and (v <= lo if lo_open else v < lo):
    raise ConfigError(f"{key}={v} must be {'>' if lo_open else '>='} {lo}")
  if hi is not None and (v >= hi if hi_open else v > hi):
    raise ConfigError(f"{key}={v} must be {'<' if hi_open else '<='} {hi}")
  return v


def _choice(config, key, known):
  v = _get(config, key)
  if v not in known:
    raise ConfigError(f"unknown {key} {v!r}; known: {', '.join(known)}")
  return v


def validate(config, *, pruning_methods=PRUNING_METHODS) -> None:
  """Checks types, ranges and names of a run config.

  ``pruning_methods`` are the ``pruning.method`` names the caller supports:
  masks made at initialization for ``train``, every registered method for
  ``find_ticket``. The pruning options' values are checked by
  ``awt.pruning.validate`` (this check plus every option against its
  declaration), which the callers that find tickets use; this module sits
  below ``awt.pruning`` and does not import it.

  Raises:
    ConfigError: one line naming the first bad key and its value.
  """
  _number(config, "seed", integer=True)
  _choice(config, "data.name", data_lib.names())
  _choice(config, "model.name", models.names())
  if "dtype" in config.model:
    _choice(config, "model.dtype", tuple(MODEL_DTYPES))
  batch = _number(config, "batch_size", lo=1, integer=True)
  info = data_lib.info(config.data.name)
  num_train = info.num_train
  if config.data.get("validation", 0):
    held = _number(
      config, "data.validation", lo=0, hi=info.num_train // 2, integer=True
    )
    num_train -= held
  if batch > num_train:
    raise ConfigError(
      f"batch_size={batch} is larger than the {num_train} training "
      f"examples of {config.data.name!r}"
    )
  _number(config, "num_epochs", lo=0, integer=True)
  if "member_map" in config:
    _choice(config, "member_map", MEMBER_MAPS)
  _choice(config, "optimizer.name", training.OPTIMIZERS)
  _number(config, "optimizer.learning_rate", lo=0, lo_open=True)
  _choice(config, "optimizer.schedule", training.SCHEDULES)
  _number(config, "optimizer.weight_decay", lo=0)
  if config.optimizer.name in ("momentum", "nesterov"):
    _number(config, "optimizer.momentum", lo=0, hi=1, hi_open=True)
  method = _choice(config, "adversarial.method", training.OBJECTIVES)
  if method != "none":
    _choice(config, "adversarial.norm", ("linf", "l2"))
    _number(config, "adversarial.eps", lo=0)
    _number(config, "adversarial.step_size", lo=0)
    if method != "fast_at":
      _number(config, "adversarial.steps", lo=1, integer=True)
    if "eps_warmup_epochs" in config.adversarial:
      _number(config, "adversarial.eps_warmup_epochs", lo=0)
    if method == "trades":
      _number(config, "adversarial.beta", lo=0)
      if config.adversarial.norm != "linf":
        raise ConfigError("adversarial.method='trades' supports norm='linf'")
  _choice(config, "pruning.method", pruning_methods)
  _choice(config, "eval.norm", ("linf", "l2"))
  _number(config, "eval.eps", lo=0)
  _number(config, "eval.batch_size", lo=1, integer=True)
  for name in _get(config, "eval.attacks"):
    try:
      evaluation.parse_attack(name)
    except ValueError as e:
      raise ConfigError(f"eval.attacks: {e}") from None


def load_data(config) -> data_lib.Dataset:
  """The dataset ``config.data`` names: ``name``, ``data_dir`` and
  ``validation`` (training examples held out as the evaluation split;
  0 or absent: evaluate on the test split)."""
  return data_lib.load(
    config.data.name,
    data_dir=config.data.get("data_dir"),
    validation=int(config.data.get("validation", 0) or 0),
  )


def build_model(config, info, *, axis_name=None, dtype=None):
  """The model a config names, with the dataset's normalization inside."""
  kw = {k: v for k, v in config.model.items() if k != "name"}
  if isinstance(kw.get("dtype"), str):
    kw["dtype"] = MODEL_DTYPES[kw["dtype"]]
  if dtype is not None:
    kw["dtype"] = dtype
  return models.get(
    config.model.name,
    info.num_classes,
    mean=info.mean,
    std=info.std,
    axis_name=axis_name,
    **kw,
  )
