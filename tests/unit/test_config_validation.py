"""Config validation: every bad value is one ConfigError naming the key, the
value and what is allowed, raised before anything is written; every
documented config validates as written.

Configs are parsed from command-line words by absl's own config flags, in
process (conftest.parse_config). That the CLI prints such an error as one
line with exit code 2 is tested once per stage in tests/e2e/test_bad_input.py.
"""

import importlib.util
import os

import pytest

from conftest import DEFAULT, REPO, parse_config
from vgg_jax import config_validation, sweep, training
from vgg_jax.errors import ConfigError

# (overrides, the key the error must name)
BAD_INPUTS = [
    (["--config.optimizer.name=adamx"], "optimizer.name"),
    (["--config.model.activation=swishy"], "model.activation"),
    (["--config.model.kernel_init=zeros"], "model.kernel_init"),
    (["--config.model.name=resnet50"], "model.name"),
    (["--config.head=softmax"], "head"),
    (["--config.dataset.name=imagenet9"], "dataset.name"),
    (["--config.dtype=float16"], "dtype"),
    (["--config.optimizer.schedule=linear"], "optimizer.schedule"),
    (["--config.optimizer.learning_rate=0"], "optimizer.learning_rate"),
    (["--config.optimizer.learning_rate=-0.1"], "optimizer.learning_rate"),
    (["--config.optimizer.learning_rate=nan"], "optimizer.learning_rate"),
    (["--config.batch_size=0"], "batch_size"),
    (["--config.batch_size=-8"], "batch_size"),
    (["--config.batch_size=100000"], "batch_size"),
    (["--config.num_epochs=0"], "num_epochs"),
    (["--config.num_train_steps=-5"], "num_train_steps"),
    (["--config.model.dropout_rate=1.0"], "model.dropout_rate"),
    (["--config.model.dropout_rate=-0.1"], "model.dropout_rate"),
    (["--config.model.hidden_sizes=()"], "model.hidden_sizes"),
    (["--config.model.hidden_sizes=(64,0)"], "model.hidden_sizes"),
    (["--config.model.name=vgg16"], "dataset.image_size"),  # digits are 8x8.
    (["--config.model.name=vgg11", "--config.dataset.image_size=16"], "dataset.image_size"),
    (["--config.head=binary"], "head"),  # digits have 10 classes.
    (["--config.dataset.classes=(3,33)"], "dataset.classes"),
    (["--config.optimizer.schedule=warmup_cosine"], "optimizer.warmup_steps"),
    # A schedule longer than training.
    (["--config.optimizer.schedule=warmup_cosine", "--config.optimizer.warmup_steps=100000"],
     "optimizer.warmup_steps"),
    (["--config.num_devices=16"], "num_devices"),  # This process sees 8 devices.
    (["--config.parallelism=tpu"], "parallelism"),
    (["--config.eval_train_examples=-1"], "eval_train_examples"),
    (["--config.model.input_dropout_rate=1.5"], "model.input_dropout_rate"),
    # Sweeps: a vmapped axis may not change shapes; axes keep their key's type.
    (['--config.sweep=[{"optimizer.learning_rate": [0.1, 0.2]}]'], "optimizer.learning_rate"),
    (['--config.sweep=[{"seed": 1.5}]'], "seed"),
    (['--config.sweep=[{"model.activation": 3}]'], "model.activation"),
    (['--config.sweep=[{"model.hidden_sizes": [0]}]'], "model.hidden_sizes"),
    (["--config.sweep=notjson"], "sweep"),
]


def run_like_main(config, workdir):
  """What vgg_jax.main does with a parsed config: validate, then train."""
  config_validation.validate(config)
  if config.sweep:
    return sweep.run_sweep(config, workdir)
  return training.train_and_evaluate(config, workdir)


@pytest.mark.parametrize("overrides,key", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_config_error_naming_the_key_before_anything_is_written(
    overrides, key, tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError) as error:
    run_like_main(parse_config(DEFAULT, *overrides), str(workdir))
  message = str(error.value)
  assert "\n" not in message and message.startswith("config error: "), message
  assert f" {key}=" in message and "allowed:" in message, message
  assert not workdir.exists()


DOCUMENTED_CONFIGS = [("default.py", None), ("fashion_mnist.py", None), ("fashion_mnist.py", "vgg"),
                      ("fashion_mnist.py", "vgg_bn"), ("fashion_mnist.py", "binary"),
                      ("vgg_digits.py", None), ("vgg_digits.py", "vgg11"),
                      ("vgg_digits.py", "vgg13"), ("vgg_digits.py", "vgg19"),
                      ("sweep_digits.py", None), ("vgg16_imagenet.py", None)]


@pytest.mark.parametrize("name,variant", DOCUMENTED_CONFIGS)
def test_every_documented_config_validates(name, variant):
  """Each config file and variant the README and docs/ name passes validation as written."""
  spec = importlib.util.spec_from_file_location(f"config_{name[:-3]}",
                                                os.path.join(REPO, "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant)
  config_validation.validate(config)
  if variant == "vgg_bn":  # The >= 0.94 recipe docs/data.md quotes.
    assert (config.model.name, config.model.width_multiplier, config.model.batch_norm,
            config.dataset.flip, config.num_epochs) == ("vgg16", 0.25, True, True, 30)


def test_each_part_validates_its_own_keys():
  """optim, models (kernels), finetune and data check their own sections;
  config_validation only runs them and the checks that span sections."""
  from vgg_jax import config_lib, data, finetune, models, optim
  config = config_lib.base_config()
  for part, key, value in ((optim, "optimizer.name", "adamx"),
                           (models, "model.conv_lowering", "winograd"),
                           (finetune, "model.freeze", "everything")):
    bad = config_lib.base_config()
    bad.model.name = "vgg11"  # conv_lowering is a VGG key.
    section, leaf = key.split(".")
    bad[section][leaf] = value
    with pytest.raises(ConfigError, match=key):
      part.validate(bad)
    part.validate(config)
  bad = config_lib.base_config().dataset
  bad.name, bad.synthetic.image_shape = "synthetic", (8, 8)
  with pytest.raises(ConfigError, match="dataset.synthetic.image_shape"):
    data.validate(bad)
  del config["dataset"]
  with pytest.raises(ConfigError, match="dataset"):
    config_validation.validate(config)
