"""A sweep's workdir as a record: a run is its config, reruns match runs by
id, the merged view, TensorBoard scalars and HParams (sweep_record.py, and
the identity and planning in sweep.py).

Shards run concurrently from the command line and SLURM templates:
tests/e2e/test_sweeps.py."""

import glob
import json
import os

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import read_csv, tiny_config
from vgg_jax import sweep, training
from vgg_jax.errors import ConfigError, UserError


def _sweep(rates, **overrides):
  config = tiny_config()
  config.optimizer.name = "momentum"
  config.validation_fraction = 0.0
  config.dataset.validation_fraction = 0.1
  for key, value in overrides.items():
    config[key] = value
  config.sweep = sweep.to_config(sweep.axis("optimizer.learning_rate", rates))
  return config


def _files(workdir):
  """{relative path: bytes} of a workdir, lock files left out."""
  out = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      if not name.startswith(".") or not "lock" in name:
        path = os.path.join(root, name)
        with open(path, "rb") as f:
          out[os.path.relpath(path, workdir)] = f.read()
  return out


def _final(workdir):
  """{learning rate: (its final test loss, accuracy)} from the merged results."""
  return {r["optimizer.learning_rate"]: (r["loss"], r["accuracy"])
          for r in sweep.results(workdir) if r["split"] == "test"}


def test_a_run_is_its_config_not_its_position():
  base = tiny_config()
  a = sweep.apply_overrides(base, {"optimizer.learning_rate": 0.1})
  b = sweep.apply_overrides(base, {"optimizer.learning_rate": 0.1, "seed": base.seed})
  c = sweep.apply_overrides(base, {"optimizer.learning_rate": 0.2})
  assert sweep.run_identity(a) == sweep.run_identity(b) != sweep.run_identity(c)
  longer = sweep.apply_overrides(a, {"num_epochs": 9})  # A length a rerun may change...
  assert sweep.run_identity(longer) == sweep.run_identity(a)
  # ...unless the sweep varies it: then each length is a run of its own.
  assert sweep.run_identity(longer, ["num_epochs"]) != sweep.run_identity(a, ["num_epochs"])
  assert sweep.run_name({"optimizer.learning_rate": 0.03, "seed": 1},
                        ["optimizer.learning_rate", "seed"]) == "learning_rate=0.03,seed=1"
  assert sweep.run_name({"model.hidden_sizes": [16, 16]}, ["model.hidden_sizes"]) == (
      "hidden_sizes=[16,16]")


def test_empty_sweep_list_is_a_config_error(tmp_path):
  config = tiny_config()
  config.sweep = "[]"
  with pytest.raises(ConfigError, match="non-empty"):
    sweep.run_sweep(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_changed_base_config_is_refused_and_nothing_is_touched(tmp_path):
  workdir = str(tmp_path / "w")
  sweep.run_sweep(_sweep([0.01, 0.1]), workdir)
  before = _files(workdir)
  changed = _sweep([0.01, 0.1])
  changed.model.hidden_sizes = (32,)
  changed.optimizer.name = "sgd"
  with pytest.raises(UserError, match=r"different base config \(model.hidden_sizes: .*"
                                      r"optimizer.name: 'momentum' there, 'sgd' here"):
    sweep.run_sweep(changed, workdir)
  assert _files(workdir) == before


def test_rerun_of_a_finished_sweep_changes_no_byte(tmp_path):
  workdir = str(tmp_path / "w")
  sweep.run_sweep(_sweep([0.01, 0.1]), workdir)
  before = _files(workdir)
  assert sweep.run_sweep(_sweep([0.01, 0.1]), workdir) == []
  assert sweep.run_sweep(_sweep([0.1, 0.01]), workdir) == []  # Reordered: nothing to train.
  after = _files(workdir)
  assert after.pop("config.json") != before.pop("config.json")  # It records the new order.
  assert after == before


def test_changed_extended_and_reordered_list_trains_only_the_new_points(tmp_path):
  workdir = str(tmp_path / "w")
  sweep.run_sweep(_sweep([0.01, 0.1]), workdir)
  first = _final(workdir)
  trained = sweep.run_sweep(_sweep([0.3, 0.1, 0.001]), workdir)
  assert sorted(r["optimizer.learning_rate"] for r in trained) == [0.001, 0.3]
  final = _final(workdir)
  assert final[0.01] == first[0.01] and final[0.1] == first[0.1]  # Kept, not retrained.
  fresh_dir = str(tmp_path / "fresh")
  sweep.run_sweep(_sweep([0.3, 0.1, 0.001]), fresh_dir)
  fresh = _final(fresh_dir)
  for rate in (0.3, 0.1, 0.001):  # Float rounding: members vmapped in other groups.
    assert final[rate] == pytest.approx(fresh[rate], rel=1e-5)
  status = sweep.status(workdir)
  assert status["status"] == "done" and len(status["runs"]) == 4  # Removing deletes nothing.
  assert all(r["params_sha256"] for r in status["runs"].values())
  on_disk = json.loads(open(os.path.join(workdir, "status.json")).read())
  assert on_disk["runs"] == status["runs"]


def test_a_new_swept_key_adds_a_column_and_older_rows_keep_their_values(tmp_path):
  workdir = str(tmp_path / "w")
  sweep.run_sweep(_sweep([0.01, 0.1]), workdir)
  config = _sweep([0.01])
  config.sweep = sweep.to_config(sweep.axis("seed", [5]))
  sweep.run_sweep(config, workdir)
  rows = read_csv(os.path.join(workdir, "results.csv"))
  assert list(rows[0])[:3] == ["run_id", "optimizer.learning_rate", "seed"]
  base_rate = str(config.optimizer.learning_rate)
  assert {(r["optimizer.learning_rate"], r["seed"]) for r in rows} == {
      ("0.01", "0"), ("0.1", "0"), (base_rate, "5")}
  assert {"learning_rate", "grad_norm"} <= set(rows[0])
  train_rows = [r for r in rows if r["split"] == "train"]
  assert all(float(r["grad_norm"]) > 0 for r in train_rows)
  assert {r["learning_rate"] for r in train_rows} == {"0.01", "0.1", base_rate}


def test_a_longer_run_continues_every_run_and_a_shorter_one_is_refused(tmp_path):
  workdir = str(tmp_path / "w")
  sweep.run_sweep(_sweep([0.01, 0.1]), workdir)
  continued = sweep.run_sweep(_sweep([0.01, 0.1], num_epochs=3), workdir)
  assert len(continued) == 2
  steps = {r["step"] for r in sweep.results(workdir)}
  assert max(steps) == 3 * (230 // 32)
  assert {r["step"] for r in sweep.status(workdir)["runs"].values()} == {3 * (230 // 32)}
  with pytest.raises(UserError, match="more than the 7 this config asks for"):
    sweep.run_sweep(_sweep([0.01, 0.1], num_epochs=1), workdir)


def test_a_sweep_and_a_single_run_never_share_a_workdir(tmp_path):
  single = tiny_config()
  training.train_and_evaluate(single, str(tmp_path / "run"))
  with pytest.raises(UserError, match="holds a single run"):
    sweep.run_sweep(_sweep([0.1]), str(tmp_path / "run"))
  sweep.run_sweep(_sweep([0.1]), str(tmp_path / "sweep"))
  with pytest.raises(UserError, match="holds a sweep"):
    training.train_and_evaluate(single, str(tmp_path / "sweep"))


def test_every_run_has_tensorboard_scalars_and_hparams(tmp_path):
  workdir = str(tmp_path / "w")
  sweep.run_sweep(_sweep([0.01, 0.1]), workdir)
  names = sorted(os.listdir(os.path.join(workdir, "runs")))
  assert names == ["learning_rate=0.01", "learning_rate=0.1"]
  for name in names:
    events = event_accumulator.EventAccumulator(os.path.join(workdir, "runs", name))
    events.Reload()
    assert {"train/loss", "train/accuracy", "train/learning_rate", "train/grad_norm",
            "validation/loss", "validation/accuracy", "test/loss",
            "test/accuracy"} <= set(events.Tags()["scalars"])
    rate = float(name.split("=")[1])
    assert events.Scalars("train/learning_rate")[-1].value == pytest.approx(rate)
    data = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    assert data.session_start_info.hparams["optimizer.learning_rate"].number_value == (
        pytest.approx(rate))


def test_a_single_run_writes_hparams(tmp_path):
  config = tiny_config()
  training.train_and_evaluate(config, str(tmp_path))
  [path] = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  events = event_accumulator.EventAccumulator(path)
  events.Reload()
  data = plugin_data_pb2.HParamsPluginData.FromString(
      events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
  hparams = data.session_start_info.hparams
  assert hparams["optimizer.learning_rate"].number_value == pytest.approx(
      config.optimizer.learning_rate)
  assert hparams["dataset.name"].string_value == "synthetic"
