"""Declared pruning options: every config takes every one, checked once.

Every config file under experiments/configs/ (every variant) x every
registered method option: a valid non-default value set as
``--config.pruning.<option>=...`` sets it on the locked config is accepted
by ``awt.config.validate`` and returned by ``pruning.option``; an invalid
one is refused in one line naming the option. A toy method registered from
outside runs by name through ``awt.tickets.find``.
"""

import glob
import importlib.util
import os
import re
import time
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from awt import config as config_lib
from awt import masks, pruning, tickets
from awt.pruning import allocation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "experiments", "configs")
FILES = sorted(
  p
  for p in glob.glob(os.path.join(CONFIGS, "*.py"))
  if not os.path.basename(p).startswith("_")
)


def _load(path):
  """The config module, loaded from its file as ``config_flags`` does."""
  name = os.path.basename(path)[:-3]
  spec = importlib.util.spec_from_file_location(f"_options_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _variants(module) -> list[str | None]:
  """None and the variants a config knows (from its unknown-variant error)."""
  with pytest.raises(ValueError, match="unknown variant") as e:
    module.get_config("no-such-variant")
  known = re.search(r"known: (.*)$", str(e.value)).group(1)
  return [None] + [v.strip() for v in known.split(",") if v.strip()]


def _named_configs():
  """``(file.py:variant, locked config)`` for every file and variant."""
  for path in FILES:
    module = _load(path)
    for variant in _variants(module):
      c = module.get_config(variant)
      c.lock()
      name = os.path.basename(path) + (f":{variant}" if variant else "")
      yield name, c


def _valid(o: pruning.Option):
  """A value of ``o`` other than its default that its check accepts."""
  check, default = o.check, o.default
  if isinstance(check, allocation.LayerDensities):
    return "fc1=0.5;fc2=0.25"
  if isinstance(check, pruning.OneOf):
    return next(c for c in check.choices if c != default)
  if isinstance(check, pruning.Flag):
    return not default
  if isinstance(check, pruning.Integer):
    return (check.lo or 0) + 1 if default is None else default + 1
  if default in (None, 0.0):
    return 0.5 if check.hi is None else check.hi / 2
  return default / 2


def _invalid(o: pruning.Option):
  """A value of the option's type that its check refuses."""
  check = o.check
  if isinstance(check, allocation.LayerDensities):
    return "fc1=2"
  if isinstance(check, pruning.OneOf):
    return "no-such-choice"
  if isinstance(check, pruning.Flag):
    return "yes"  # Not a bool; only a type-unsafe config can hold it.
  if check.lo is not None:
    return check.lo - 1
  if check.hi is not None:
    return check.hi + 1
  raise AssertionError(f"option {o.name} declares no range")


def test_every_config_takes_every_option():
  declared = pruning.options()
  assert len(declared) > 30  # the built-in methods' options, shared ones too
  configs = list(_named_configs())
  assert len(configs) >= len(FILES) * 2
  for name, c in configs:
    for o in declared:
      assert o.name in c.pruning, (name, o.name)
      value = _valid(o)
      assert value != o.default and o.value(value) == value, o.name
      old = c.pruning[o.name]
      c.pruning[o.name] = value
      pruning.validate(c)
      assert pruning.option(c, o.name) == value, (name, o.name)
      context = types.SimpleNamespace(config=c)  # what methods pass
      assert pruning.option(context, o.name) == value
      c.pruning[o.name] = old


def test_every_config_refuses_bad_values_in_one_line():
  for name, c in _named_configs():
    for o in pruning.options():
      bad = _invalid(o)
      if isinstance(o.check, pruning.Flag):
        unsafe = ml_collections.ConfigDict(c.to_dict(), type_safe=False)
        unsafe.pruning[o.name] = bad
        target = unsafe
      else:
        old = c.pruning[o.name]
        c.pruning[o.name] = bad
        target = c
      with pytest.raises(config_lib.ConfigError) as e:
        pruning.validate(target)
      message = str(e.value)
      assert "\n" not in message, (name, message)
      assert f"pruning.{o.name}" in message, (name, message)
      assert repr(bad) in message or str(bad) in message, (name, message)
      assert "known: " in message or "must be" in message, (name, message)
      with pytest.raises(config_lib.ConfigError):
        pruning.option(target, o.name)
      if target is c:
        c.pruning[o.name] = old


def test_an_undeclared_option_is_refused():
  c = ml_collections.ConfigDict(
    _load(os.path.join(CONFIGS, "digits_mlp.py")).get_config().to_dict()
  )
  c.pruning.imp_round = 3  # a typo of imp_rounds
  with pytest.raises(config_lib.ConfigError, match="pruning.imp_round; kno"):
    pruning.validate(c)


def _flag_config(path: str, *overrides: str):
  """The config ``--config=<path> <overrides>`` gives a binary (locked)."""
  values = flags.FlagValues()
  argv = ["prog", f"--config={path}", *overrides]
  config_flags.DEFINE_config_file(
    "config", None, flag_values=values, lock_config=True, sys_argv=argv
  )
  values(argv)
  return values.config


def test_command_line_overrides_reach_the_methods():
  """The issue's example: --config.pruning.imp_rounds=3 on digits_mlp.py."""
  path = os.path.join(CONFIGS, "digits_mlp.py")
  c = _flag_config(
    path,
    "--config.pruning.imp_rounds=3",
    "--config.pruning.imp_epochs=2",  # declared None: the typed placeholder
    "--config.pruning.dns_low=0.5",
    "--config.pruning.awt_kernel=trace",
  )
  pruning.validate(c)
  assert pruning.option(c, "imp_rounds") == 3
  assert pruning.option(c, "imp_epochs") == 2
  assert pruning.option(c, "dns_low") == 0.5
  assert pruning.option(c, "awt_kernel") == "trace"
  assert pruning.option(c, "score_batch_size") is None  # left at default
  bad = _flag_config(path, "--config.pruning.imp_rounds=0")
  with pytest.raises(
    config_lib.ConfigError, match=r"^pruning\.imp_rounds=0 must be >= 1$"
  ):
    pruning.validate(bad)


def test_a_config_without_the_option_gets_the_declared_default():
  config = {"pruning": {"sparsity": 0.5}}
  for o in pruning.options():
    expected = 0.5 if o.name == "sparsity" else o.default
    assert pruning.option(config, o.name) == expected
  with pytest.raises(KeyError, match="undeclared pruning option 'imp_round'"):
    pruning.option(config, "imp_round")


def test_declarations_cannot_conflict():
  fresh = pruning.Option("fresh", 1, pruning.Integer(lo=1), "new")
  clash = pruning.Option("imp_rounds", 7, pruning.Integer(lo=1), "other")
  with pytest.raises(ValueError, match="'imp_rounds' is already declared"):
    pruning.register("clashing", lambda ctx, key: None, options=(fresh, clash))
  assert "clashing" not in pruning.names()
  assert "fresh" not in [o.name for o in pruning.options()]  # all or none
  with pytest.raises(ValueError, match="'snip' is already registered"):
    pruning.register("snip", lambda ctx, key: None)
  with pytest.raises(ValueError, match="must be >= 0"):
    pruning.Option("bad_default", -1, pruning.Integer(lo=0), "refused")


# ---------------------------------------------------------------------------
# A method registered from outside the package.

TOY_DENSITY = pruning.Option(
  "toy_density",
  1.0,
  pruning.Number(lo=0.0, lo_open=True, hi=1.0),
  "fraction of each prunable kernel the toy method keeps (its first ones)",
)


def _toy(ctx: pruning.PruningContext, key: jax.Array) -> pruning.Ticket:
  """Keeps the first ``round(toy_density * n)`` weights of every kernel."""
  del key
  start = time.perf_counter()
  density = pruning.option(ctx, "toy_density")
  paths = set(pruning.scores.prunable(ctx))

  def leaf_mask(keypath, x):
    if tuple(str(k.key) for k in keypath) not in paths:
      return jnp.ones_like(x)
    kept = masks.num_to_keep(x.size, density)
    return (jnp.arange(x.size) < kept).reshape(x.shape).astype(x.dtype)

  mask = jax.tree_util.tree_map_with_path(leaf_mask, ctx.params)
  return pruning.Ticket(
    mask=mask,
    params=masks.apply(ctx.params, mask),
    batch_stats=ctx.batch_stats,
    info={
      "method": "toy",
      "passes": 0,
      "wall_time_s": time.perf_counter() - start,
      "toy_density": density,
    },
  )


@pytest.fixture
def toy_method():
  pruning.register("toy", _toy, options=(TOY_DENSITY,))
  yield "toy"
  pruning.unregister("toy")
  assert "toy" not in pruning.names()
  with pytest.raises(KeyError, match="undeclared pruning option"):
    pruning.option({"pruning": {}}, "toy_density")


def test_a_registered_method_runs_by_name(toy_method):
  assert "toy_density" in pruning.describe()
  assert [o.name for o in pruning.options(toy_method)][-1] == "toy_density"
  c = _load(os.path.join(CONFIGS, "digits_mlp.py")).get_config("smoke")
  c.model.widths = (12, 8)
  c.lock()
  assert c.pruning.toy_density == 1.0  # the config took the declaration
  c.pruning.method = toy_method
  c.pruning.toy_density = 0.25
  ticket = tickets.find(c, measure_ntk=False, log=lambda line: None)
  assert ticket.info["method"] == "toy"
  assert ticket.info["toy_density"] == 0.25
  # The first quarter of every kernel, as only the toy method keeps it.
  paths = masks.prunable_paths(ticket.mask)
  assert len(paths) == 3
  for path in paths:
    flat = np.ravel(_at(ticket.mask, path))
    kept = masks.num_to_keep(flat.size, 0.25)
    np.testing.assert_array_equal(flat, np.arange(flat.size) < kept)
  c.pruning.toy_density = 0.0
  with pytest.raises(
    config_lib.ConfigError, match=r"^pruning\.toy_density=0\.0 must be > 0"
  ):
    tickets.find(c, measure_ntk=False, log=lambda line: None)


def _at(tree, path):
  for k in path:
    tree = tree[k]
  return tree
