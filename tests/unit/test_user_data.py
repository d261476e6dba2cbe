"""Your own dataset from a file outside vgg_jax: loading, training, sweeps,
experiments, and one-line errors for loaders that return the wrong thing."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO, dataset_config, run_cli, tiny_config
from vgg_jax import config_validation, data, inference, train
from vgg_jax.data import user as user_lib
from vgg_jax.errors import ConfigError, DataError, UserError

LOADERS = textwrap.dedent('''
    import numpy as np

    def features():
      """Float signals [n, 3, 8], far from [0, 1]: the class is the sign of channel 0's sum."""
      rng = np.random.default_rng(0)
      x = (rng.standard_normal((600, 3, 8)) * 40 + 100).astype(np.float32)
      y = (x[:, 0, :].mean(axis=1) > 100).astype(np.int64)
      return {"train": (x[:480], y[:480]), "test": (x[480:], y[480:]),
              "class_names": ["low", "high"]}

    def images(config):
      """uint8 [n, h, w] (no channel axis) and no test split: one bright band per class."""
      rng = np.random.default_rng(1)
      y = rng.integers(0, 3, 400)
      x = rng.integers(0, 60, (400, 12, 12)).astype(np.uint8)
      for k in range(3):
        x[y == k, 4 * k:4 * k + 4, :] += 150
      return (x, y), None

    def nan_features():
      x = np.zeros((10, 4), np.float32); x[3, 2] = np.nan
      return {"train": (x, np.arange(10) % 2)}

    def short_labels():
      return {"train": (np.zeros((10, 4), np.float32), np.zeros(9, np.int32))}

    def uint8_vectors():
      return {"train": (np.zeros((10, 4), np.uint8), np.arange(10) % 2)}

    def not_arrays():
      return [1, 2, 3]

    def fails():
      raise RuntimeError("the share is not mounted")

    def one_class():
      return {"train": (np.zeros((10, 4), np.float32), np.zeros(10, np.int32))}

    def few_names():
      return {"train": (np.zeros((10, 4), np.float32), np.arange(10) % 3),
              "class_names": ["a", "b"]}
''')


@pytest.fixture(scope="module")
def loader_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("userdata") / "mine.py"
  # images() returns test=None: the loader's tuple form needs a real test split.
  path.write_text(LOADERS.replace("return (x, y), None", "return {'train': (x, y)}"))
  return path


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


def test_single_run_on_float_features_learns(loader_file, tmp_path):
  proc = run_cli(["--config=configs/default.py", f"--config.dataset.name={loader_file}:features",
                  "--config.num_epochs=6", "--config.optimizer.name=adam",
                  "--config.optimizer.learning_rate=0.003"], workdir=tmp_path / "run")
  assert proc.returncode == 0, proc.stderr
  status = json.loads((tmp_path / "run" / "status.json").read_text())
  assert status["status"] == "done"
  info = json.loads((tmp_path / "run" / "model_info.json").read_text())
  assert info["image_shape"] == [3, 8] and info["class_names"] == ["low", "high"]
  assert len(info["mean"]) == 8
  final = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  test_acc = [r["accuracy"] for r in final if r["split"] == "test"][-1]
  assert test_acc > 0.8, test_acc  # Chance is about 0.5.
  # Predicting from image files on a features model is one line.
  with pytest.raises(UserError, match=r"features of shape \[3, 8\]"):
    inference.load_images(["x.png"], 3, 8)


def test_sweep_on_a_dataset_registered_in_the_config_file(loader_file, tmp_path):
  cfg = tmp_path / "sweep_mine.py"
  cfg.write_text(textwrap.dedent(f'''
      import importlib.util
      from vgg_jax import data, sweep
      from vgg_jax.config_lib import base_config

      spec = importlib.util.spec_from_file_location("mine", {str(loader_file)!r})
      mine = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(mine)
      data.register("mine", mine.images)

      def get_config():
        c = base_config()
        c.dataset.name = "mine"
        c.dataset.validation_fraction = 0.1
        c.dataset.crop_padding = 1
        c.model.hidden_sizes = (16,)
        c.num_epochs = 2
        c.sweep = sweep.to_config(sweep.product(
            sweep.axis("optimizer.learning_rate", [0.01, 0.1])))
        return c
  '''))
  proc = run_cli([f"--config={cfg}"], workdir=tmp_path / "sweep")
  assert proc.returncode == 0, proc.stderr
  status = json.loads((tmp_path / "sweep" / "status.json").read_text())
  assert status["status"] == "done" and len(status["runs"]) == 2, status
  assert all(r["status"] == "done" for r in status["runs"].values()), status


def _experiment(name, workdir, *args):
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", f"experiments.{name}", f"--workdir={workdir}",
                         "--mode=smoke", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)


def test_experiment_on_user_images(loader_file, tmp_path):
  proc = _experiment("dropout", tmp_path / "exp",
                     f"--config.train.dataset.name={loader_file}:images")
  assert proc.returncode == 0, proc.stderr
  # Smoke mode trains on 500 examples; this dataset has 288 after the carves.
  assert "has 288 training examples, fewer than the 500" in proc.stderr, proc.stderr
  report = (tmp_path / "exp" / "report.md").read_text()
  assert f"{loader_file}:images" in report


def test_optimizers_on_features_leaves_the_vgg_out(loader_file, tmp_path):
  proc = _experiment("optimizers", tmp_path / "exp", f"--dataset={loader_file}:features",
                     "--config.optimizers=('sgd','adam')")
  assert proc.returncode == 0, proc.stderr
  assert "the VGG part is left out" in proc.stderr
  report = (tmp_path / "exp" / "report.md").read_text()
  assert "no VGG: the data are features" in report
  assert not (tmp_path / "exp" / "runs" / "vgg").exists()


@pytest.mark.parametrize("name,overrides,error,message", [
    ("nowhere_module:load", {}, DataError, "no module 'nowhere_module'"),
    ("{file}:missing", {}, DataError, "has no function 'missing'"),
    ("/nonexistent/file.py:load", {}, DataError, "no file /nonexistent/file.py"),
    ("{file}:fails", {}, DataError, "RuntimeError: the share is not mounted"),
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


def test_bad_loader_on_the_command_line_is_one_line(loader_file, tmp_path):
  proc = run_cli(["--config=configs/default.py",
                  f"--config.dataset.name={loader_file}:nan_features"], workdir=tmp_path / "run")
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0 and "non-finite" in proc.stderr, proc.stderr
  assert not (tmp_path / "run").exists()


def test_training_in_process_on_user_data(loader_file, tmp_path):
  config = tiny_config()
  config.dataset = dataset_config(f"{loader_file}:features")
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == config.num_epochs * (480 // config.batch_size)
