"""The one engine: a single run is a sweep of one, vmapped members keep their
own status, plus full batch and the no-validation sweep. Sweeps with
pretrained weights, freezing and cached features: tests/e2e/test_transfer.py;
a sweep stopped mid-group resumes from its checkpoint: tests/e2e/test_resume.py."""

import json

from conftest import read_csv, tiny_config
from vgg_jax import metrics, sweep, training


def test_sweep_of_one_equals_the_single_run_bit_for_bit(tmp_path):
  config = tiny_config()
  config.model.dropout_rate = 0.1
  config.optimizer.name = "momentum"
  alone = training.train_and_evaluate(config, str(tmp_path / "alone"))
  config.sweep = sweep.to_config([{"seed": 0}])
  [result] = sweep.run_sweep(config, str(tmp_path / "sweep"))
  status = json.load(open(tmp_path / "sweep" / metrics.STATUS_FILE))
  single = json.load(open(tmp_path / "alone" / metrics.STATUS_FILE))
  run = status["runs"][result["run_id"]]
  assert status["status"] == "done" and run["status"] == "done"
  assert run["params_sha256"] == single["params_sha256"]
  assert result["test_loss"] == alone["loss"] and result["test_accuracy"] == alone["accuracy"]


def test_vmapped_members_record_their_own_fingerprints(tmp_path):
  config = tiny_config()
  config.sweep = sweep.to_config(sweep.axis("seed", [0, 1]))
  first, second = sweep.run_sweep(config, str(tmp_path))
  runs = json.load(open(tmp_path / metrics.STATUS_FILE))["runs"]
  assert {r["status"] for r in runs.values()} == {"done"}
  assert runs[first["run_id"]]["params_sha256"] != runs[second["run_id"]]["params_sha256"]
  for result in (first, second):  # Each run's own status says the same.
    own = json.load(open(tmp_path / "runs" / result["name"] / metrics.STATUS_FILE))
    assert own["params_sha256"] == runs[result["run_id"]]["params_sha256"]


def test_sweep_without_validation_and_test_only_at_the_end(tmp_path):
  """Used to die with IndexError: no split to evaluate between the first and last eval."""
  config = tiny_config()
  config.optimizer.name = "sgd"
  config.num_epochs = 3
  config.eval_every_steps = 5
  config.test_every_eval = False
  config.sweep = sweep.to_config(sweep.axis("optimizer.learning_rate", [0.01, 0.1]))
  results = sweep.run_sweep(config, str(tmp_path))
  assert [r["status"] for r in results] == ["done", "done"]
  rows = read_csv(tmp_path / "results.csv")
  test_steps = {int(r["step"]) for r in rows if r["split"] == "test"}
  train_steps = sorted({int(r["step"]) for r in rows if r["split"] == "train"})
  assert test_steps == {24} and train_steps == [5, 10, 15, 20, 24]
  # Evals land exactly on their interval, mid-epoch too (8 steps per epoch).
  assert all(0 <= float(r["test_accuracy"]) <= 1 for r in results)


def test_full_batch_is_batch_size_minus_one(tmp_path):
  config = tiny_config()
  config.batch_size = -1
  config.num_epochs = 3
  config.optimizer.name = "sgd"
  result = training.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 3  # One step per epoch: all 256 examples in each.
  rows = metrics.read_metrics(str(tmp_path), "test")
  assert [r["step"] for r in rows] == [1, 2, 3]
