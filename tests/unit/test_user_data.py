"""Your own dataset from a file outside vgg_jax (conftest.USER_LOADERS):
loading, training, and one-line errors for loaders that return the wrong
thing. Sweeps and experiments on it: tests/e2e."""

import json
import os
import sys
import textwrap

import numpy as np
import pytest

from conftest import DEFAULT, dataset_config, parse_config, rows, status, tiny_config
from vgg_jax import config_validation, data, inference, training
from vgg_jax.data import user as user_lib
from vgg_jax.errors import ConfigError, DataError, Interrupted, UserError


def test_float_features_stay_float_and_are_normalized_from_train(loader_file):
  cfg = dataset_config(f"{loader_file}:features", validation_fraction=0.25,
                       classes=("high", "low"))
  ds = data.load(cfg)
  x, y = ds.splits["train"]
  assert x.dtype == np.float32 and x.shape[1:] == (3, 8)
  assert ds.info.image_shape == (3, 8) and ds.info.class_names == ("high", "low")
  assert len(ds.splits["validation"][1]) == 120 and ds.num_train == 360
  # Per channel (the last axis), over the training split only.
  flat = x.reshape(-1, 8).astype(np.float64)
  np.testing.assert_allclose(ds.info.mean, flat.mean(axis=0), rtol=1e-6)
  np.testing.assert_allclose(ds.info.std, flat.std(axis=0), rtol=1e-6)
  assert 60 < ds.info.mean[0] < 140  # Raw units: no /255 for float data.
  # The class subset by name relabels in the given order: "high" is now 0.
  raw_x, raw_y = user_lib.load(dataset_config(f"{loader_file}:features")).splits["train"]
  both = data.load(dataset_config(f"{loader_file}:features", classes=("high", "low")))
  np.testing.assert_array_equal(both.splits["train"][0], raw_x)
  np.testing.assert_array_equal(both.splits["train"][1], 1 - raw_y)
  assert set(np.unique(y)) == {0, 1}


def test_uint8_images_without_test_split_get_one_carved(loader_file):
  ds = data.load(dataset_config(f"{loader_file}:images", test_fraction=0.25))
  assert ds.splits["train"][0].dtype == np.uint8
  assert ds.info.image_shape == (12, 12, 1) and ds.info.num_classes == 3
  assert len(ds.splits["test"][1]) == 100 and ds.num_train == 300
  assert ds.info.class_names == ("0", "1", "2")


def test_module_form_and_register(loader_file, monkeypatch):
  monkeypatch.chdir(loader_file.parent)  # "mine:features" is found in the current directory.
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p != os.getcwd()])
  ds = data.load(dataset_config("mine:features"))
  assert ds.info.image_shape == (3, 8)
  calls = []

  def loader():
    calls.append(1)
    return {"train": (np.eye(4, dtype=np.float32).repeat(5, 0), np.arange(20) % 4)}

  data.register("four_points", loader)
  cfg = dataset_config("four_points", test_fraction=0.2)
  config_validation.validate(_mlp_config(cfg))
  assert data.load(cfg).info.num_classes == 4
  assert len(calls) == 1  # Validation and loading share one call.
  with pytest.raises(ConfigError, match="register"):
    data.register("digits", loader)


def _mlp_config(dataset):
  config = tiny_config()
  config.dataset = dataset
  return config


def test_the_default_config_learns_float_features(loader_file, tmp_path):
  """What `--config=configs/default.py --config.dataset.name=FILE:features` runs."""
  config = parse_config(DEFAULT, f"--config.dataset.name={loader_file}:features",
                        "--config.num_epochs=6", "--config.optimizer.name=adam",
                        "--config.optimizer.learning_rate=0.003")
  result = training.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 6 * (480 // config.batch_size)  # 480 training examples.
  assert status(tmp_path / "run")["status"] == "done"
  info = json.loads((tmp_path / "run" / "model_info.json").read_text())
  assert info["image_shape"] == [3, 8] and info["class_names"] == ["low", "high"]
  assert len(info["mean"]) == 8
  test_acc = [r["accuracy"] for r in rows(tmp_path / "run", "test")][-1]
  assert test_acc > 0.8, test_acc  # Chance is about 0.5.
  # Predicting from image files on a features model is one line.
  with pytest.raises(UserError, match=r"features of shape \[3, 8\]"):
    inference.load_images(["x.png"], 3, 8)


@pytest.mark.parametrize("name,overrides,error,message", [
    ("nowhere_module:load", {}, DataError, "no module 'nowhere_module'"),
    ("{file}:missing", {}, DataError, "has no function 'missing'"),
    ("/nonexistent/file.py:load", {}, DataError, "no file /nonexistent/file.py"),
    ("{file}:fails", {}, DataError, "RuntimeError: the share is not mounted"),
    # What ends a program ends only the loading, in one line naming the loader.
    ("{file}:exits_0", {}, DataError, r"exits_0: the loader exited \(SystemExit\(0\)\) while "
     "loading; a loader must return its data"),
    ("{file}:exits_3", {}, DataError, r"exited \(SystemExit\(3\)\) while loading"),
    ("{file}:interrupted", {}, Interrupted, r"interrupted \(Ctrl-C\) while loading"),
    # Labels: 0..k-1, each class in train, each test label a train label.
    ("{file}:huge_float64", {}, DataError, r"1 values beyond float32's range \(e.g. 1e\+39 at "
     r"index \(3, 1\)\)"),
    ("{file}:labels_from_1", {}, DataError, r"train labels run 1..3; did you mean 0..2\?"),
    ("{file}:raw_ids", {}, DataError, "3 distinct labels from 1000003 to 1000005, not 0..2"),
    ("{file}:huge_id", {}, DataError, "y has label 2147483648"),
    ("{file}:unseen_test_label", {}, DataError, r"test has labels \(2\) that train does not"),
    ("{file}:not_arrays", {}, DataError, "returned list"),
    ("{file}:nan_features", {}, DataError, "1 non-finite values .first at index .3, 2"),
    ("{file}:short_labels", {}, DataError, r"y has shape \(9,\); want \[10\]"),
    ("{file}:uint8_vectors", {}, DataError, "uint8 means images"),
    ("{file}:one_class", {}, DataError, "at least 2 classes"),
    ("{file}:few_names", {}, DataError, "2 class_names for labels up to 2"),
    ("{file}:features", {"model.name": "vgg11"}, ConfigError, "needs .h, w, c. images"),
    ("{file}:features", {"dataset.flip": True}, ConfigError, "dataset.flip"),
    ("{file}:features", {"dataset.image_size": 32}, ConfigError, "dataset.image_size"),
    ("{file}:images", {"dataset.channels": 1, "dataset.classes": (0, 7)}, ConfigError,
     "dataset.classes"),
])
def test_bad_loaders_are_one_clear_error(loader_file, name, overrides, error, message):
  config = tiny_config()
  config.dataset = dataset_config(name.format(file=loader_file))
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  with pytest.raises(error, match=message) as info:
    config_validation.validate(config)
  assert "\n" not in str(info.value)


def test_a_loader_module_that_parses_the_command_line_at_import(tmp_path):
  """argparse at import saw vgg_jax's own flags ("unrecognized arguments:
  --config=..."): it now sees none, so optional arguments load, and a
  required one is one line naming the loader and what argparse said."""
  lenient = tmp_path / "lenient.py"
  lenient.write_text(textwrap.dedent("""
      import argparse
      import numpy as np
      ARGS = argparse.ArgumentParser().parse_args()
      def load():
        return {"train": (np.zeros((10, 4), np.float32), np.arange(10) % 2)}
  """))
  strict = tmp_path / "strict.py"
  strict.write_text(lenient.read_text().replace(
      "ArgumentParser().parse_args()",
      "ArgumentParser(); p = ARGS; p.add_argument('--n', required=True); p.parse_args()"))
  config = tiny_config()
  config.dataset = dataset_config(f"{lenient}:load")
  config_validation.validate(config)
  config.dataset = dataset_config(f"{strict}:load")
  with pytest.raises(DataError, match=r"exited \(SystemExit\(2\)\) while importing it, "
                                      r"saying: .*required: --n") as info:
    config_validation.validate(config)
  assert "\n" not in str(info.value)


def test_a_loader_may_say_num_classes_for_a_class_without_examples(loader_file):
  config = tiny_config()
  config.dataset = dataset_config(f"{loader_file}:empty_class_said")
  dataset = data.load(config.dataset)
  assert dataset.info.num_classes == 4
