"""Every config under experiments/configs/ loads and validates, all variants.

No dataset is read: ``awt.config.validate`` only needs the static dataset
description, so the MNIST/CIFAR-10 configs are checked without TFDS files.
"""

import glob
import importlib
import importlib.util
import inspect
import os
import re

import pytest
from flax.traverse_util import flatten_dict

from awt import config as config_lib
from awt import data, pruning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(
  p
  for p in glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py"))
  if not os.path.basename(p).startswith("_")
)
NAMES = [os.path.basename(p)[:-3] for p in FILES]


def _load(path):
  """The module, loaded from its file as ``config_flags`` does."""
  name = os.path.basename(path)[:-3]
  spec = importlib.util.spec_from_file_location(f"_cfg_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _variants(module) -> list[str]:
  """The variants a config knows, read from its unknown-variant error."""
  with pytest.raises(ValueError, match="unknown variant") as e:
    module.get_config("no-such-variant")
  known = re.search(r"known: (.*)$", str(e.value)).group(1)
  return [v.strip() for v in known.split(",") if v.strip()]


def _validate(path, config):
  """The run schema, plus the study's own checks where it has them."""
  pruning.validate(config)
  name = os.path.basename(path)[:-3]
  if importlib.util.find_spec(f"awt.studies.{name}") is None:
    return
  study = importlib.import_module(f"awt.studies.{name}")
  check = getattr(study, "validate", None)
  if check is not None and len(inspect.signature(check).parameters) == 1:
    check(config)


def test_configs_found():
  for name in (
    "digits_mlp",
    "sparsity_robustness",
    "mnist_mlp",
    "mnist_lenet5",
    "cifar10_vgg16",
    "cifar10_resnet18",
    "cifar10_wrn28",
  ):
    assert name in NAMES


@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_every_variant_validates(path):
  module = _load(path)
  default = module.get_config()
  _validate(path, default)
  for variant in _variants(module):
    c = module.get_config(variant)
    _validate(path, c)
    # A variant overrides something: it is not the default under a name.
    assert c.to_dict() != default.to_dict(), variant


@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_docstring_gives_the_launch_command(path):
  module = _load(path)
  name = os.path.basename(path)
  doc = module.__doc__ or ""
  assert f"--config=experiments/configs/{name}" in doc
  assert "--workdir=" in doc
  if module.get_config().data.name not in ("digits", "mnist5k"):
    # TFDS data are prepared offline: the command must say where they are.
    assert "--config.data.data_dir=" in doc
    assert "tfds build" in doc


@pytest.mark.parametrize(
  "name, dataset, eps, train_steps, step_size",
  [
    ("mnist_mlp", "mnist", 0.3, 40, 0.01),
    ("mnist_lenet5", "mnist", 0.3, 40, 0.01),
    ("cifar10_vgg16", "cifar10", 8 / 255, 10, 2 / 255),
    ("cifar10_resnet18", "cifar10", 8 / 255, 10, 2 / 255),
    ("cifar10_wrn28", "cifar10", 8 / 255, 10, 2 / 255),
  ],
)
def test_paper_settings(name, dataset, eps, train_steps, step_size):
  """The literature's threat models (Madry et al. 2018; Rice et al. 2020)."""
  c = _load(os.path.join(ROOT, "experiments", "configs", f"{name}.py"))
  c = c.get_config()
  assert c.data.name == dataset and c.data.name in data.names()
  assert c.adversarial.method == "pgd_at"
  assert c.adversarial.norm == c.eval.norm == "linf"
  assert c.adversarial.eps == pytest.approx(eps)
  assert c.eval.eps == pytest.approx(eps)
  assert c.adversarial.steps == train_steps
  assert c.adversarial.step_size == pytest.approx(step_size)
  if dataset == "cifar10":
    assert c.optimizer.name == "momentum" and c.optimizer.momentum == 0.9
    assert c.optimizer.learning_rate == 0.1
    assert c.optimizer.weight_decay == 5e-4
  else:
    assert set(c.eval.attacks) >= {"pgd40", "pgd100"}


# Guo et al.'s study trains its models naturally, in float32 only.
TRAINING_CONFIGS = [
  (p, n)
  for p, n in zip(FILES, NAMES, strict=True)
  if n != "sparsity_robustness"
]


@pytest.mark.parametrize(
  "path", [p for p, _ in TRAINING_CONFIGS], ids=[n for _, n in TRAINING_CONFIGS]
)
def test_every_training_config_takes_the_bf16_switch(path):
  """``--config.model.dtype=bfloat16`` (README's accelerator switch) works
  on every training config: the key is declared, bf16 validates and a
  dtype that is not one is refused."""
  c = _load(path).get_config()
  assert c.model.dtype == "float32"
  c.model.dtype = "bfloat16"
  config_lib.validate(c)
  c.model.dtype = "float8"
  with pytest.raises(config_lib.ConfigError, match="model.dtype"):
    config_lib.validate(c)


def test_a_bad_value_is_caught():
  module = _load(os.path.join(ROOT, "experiments", "configs", "mnist_mlp.py"))
  c = module.get_config()
  c.adversarial.eps = -0.3
  with pytest.raises(config_lib.ConfigError, match="adversarial.eps"):
    config_lib.validate(c)


CONFIGS = os.path.join(ROOT, "experiments", "configs")


@pytest.mark.parametrize(
  "variant", [None, *_load(f"{CONFIGS}/mnist5k_mlp.py").VARIANTS]
)
def test_mnist5k_lenet5_is_the_mlp_setting_but_for_its_measured_changes(
  variant,
):
  """The LeNet-5 docstring's claim: the model, SGD's rate, the budget ramp,
  the search's ranking."""
  mlp, lenet = (
    flatten_dict(
      _load(f"{CONFIGS}/{name}.py").get_config(variant).to_dict(), sep="."
    )
    for name in ("mnist5k_mlp", "mnist5k_lenet5")
  )
  changed = {
    k for k in mlp.keys() | lenet.keys() if mlp.get(k, "-") != lenet.get(k)
  }
  changed = {k for k in changed if not k.startswith("model.")}
  sgd = variant not in ("adam", "smoke")
  ramped = variant in (None, "adam")
  expected = {"optimizer.learning_rate"} if sgd else set()
  expected.add("pruning.awt_global_score")
  if ramped:
    expected.add("adversarial.eps_warmup_epochs")
  assert changed == expected
  if sgd:
    assert lenet["optimizer.learning_rate"] == 0.02
  if ramped:
    assert lenet["adversarial.eps_warmup_epochs"] == 5
  assert mlp["pruning.awt_global_score"] == "raw"
  assert lenet["pruning.awt_global_score"] == "normalized"


def test_replaced_copies_and_sets_dotted_keys():
  base = _load(
    os.path.join(ROOT, "experiments", "configs", "digits_mlp.py")
  ).get_config()
  base.lock()
  c = config_lib.replaced(base, {"seed": 7, "pruning.method": "snip"})
  assert (c.seed, c.pruning.method) == (7, "snip")
  assert (base.seed, base.pruning.method) != (7, "snip")  # untouched
  plain = {"pruning": {"method": "awt"}}
  assert config_lib.replaced(plain, {"pruning.method": "snip"}) == {
    "pruning": {"method": "snip"}
  }
  assert plain["pruning"]["method"] == "awt"
  with pytest.raises(KeyError):
    config_lib.replaced(base, {"nonexistent.method": "snip"})
