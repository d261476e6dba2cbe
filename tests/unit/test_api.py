"""The notebook API (vgg_jax/api.py) and configs by name (config_lib)."""

import pytest

from conftest import tiny_config
import vgg_jax
from vgg_jax import config_lib, errors


def test_configs_load_by_name_variant_or_path(tmp_path):
  assert vgg_jax.load_config("default").to_dict() == config_lib.base_config().to_dict()
  assert vgg_jax.load_config("fashion_mnist:vgg_bn").model.name == "vgg16"
  path = tmp_path / "mine.py"
  path.write_text("from vgg_jax.config_lib import base_config\n"
                  "def get_config(arg=None):\n  c = base_config()\n  c.seed = int(arg or 7)\n"
                  "  return c\n")
  assert vgg_jax.load_config(str(path)).seed == 7
  assert vgg_jax.load_config(f"{path}:3").seed == 3
  config = vgg_jax.load_config("default")
  with pytest.raises(AttributeError):  # Locked, as on the command line: no new keys.
    config.optimizer.nmae = "sgd"


def test_a_name_is_a_built_in_config_even_beside_a_directory_of_that_name(tmp_path,
                                                                          monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "default").mkdir()  # An earlier `--workdir=default`.
  assert config_lib.config_path("default") == str(config_lib.configs_dir() / "default.py")
  # The README's repo paths work outside the repo too: the packaged copy.
  assert config_lib.config_path("configs/vgg_digits.py:vgg11") == (
      f"{config_lib.configs_dir() / 'vgg_digits.py'}:vgg11")
  (tmp_path / "mine.py").write_text("")
  assert config_lib.config_path("mine.py:x") == "mine.py:x"  # A file here is a path.


def test_an_unknown_config_name_lists_the_built_in_ones():
  with pytest.raises(errors.UserError, match=r"--config=vgg_bn: .*built-in: cats_vs_dogs, "):
    config_lib.config_path("vgg_bn")
  assert "sweep_digits" in config_lib.builtin_configs()


def test_train_then_results_as_a_table(tmp_path):
  pandas = pytest.importorskip("pandas")
  result = vgg_jax.train(tiny_config(), str(tmp_path))
  rows = vgg_jax.results(str(tmp_path))
  assert isinstance(rows, pandas.DataFrame)
  test = rows[rows["split"] == "test"]
  assert test["accuracy"].iloc[-1] == pytest.approx(result["accuracy"])
  assert vgg_jax.results(str(tmp_path), as_frame=False)[0]["split"] in ("train", "validation")


def test_sweep_is_a_callable_module_and_results_read_a_sweep(tmp_path):
  config = tiny_config()
  config.sweep = vgg_jax.sweep.to_config(vgg_jax.sweep.axis("optimizer.learning_rate",
                                                            [0.01, 0.1]))
  with pytest.raises(ValueError, match="vgg_jax.sweep"):
    vgg_jax.train(config, str(tmp_path / "single"))
  finals = vgg_jax.sweep(config, str(tmp_path))
  assert sorted(r["optimizer.learning_rate"] for r in finals) == [0.01, 0.1]
  rows = vgg_jax.results(str(tmp_path), as_frame=False)
  assert {r["optimizer.learning_rate"] for r in rows} == {0.01, 0.1}


def test_results_of_a_directory_without_a_run_is_one_line(tmp_path):
  with pytest.raises(errors.UserError, match="holds no run"):
    vgg_jax.results(str(tmp_path))


def test_a_bad_config_value_is_the_cli_s_one_line_error(tmp_path):
  config = tiny_config()
  config.batch_size = 0
  with pytest.raises(errors.ConfigError, match="batch_size=0 is invalid"):
    vgg_jax.train(config, str(tmp_path))
