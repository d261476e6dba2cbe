"""Sweeps in process: specs, K models per vmap program, divergence, rerun.

From the command line (shards, a dataset registered in the config file):
tests/e2e/test_sweeps.py. Resume: tests/e2e/test_resume.py."""

import json
import os

import pytest

from conftest import read_csv, tiny_config
from vgg_jax import sweep, training
from vgg_jax.errors import ConfigError


def test_product_and_zip():
  runs = sweep.product(sweep.axis("a", [1, 2]), sweep.zip_(sweep.axis("b", [3, 4]),
                                                           sweep.axis("c", [5, 6])))
  assert runs == [{"a": 1, "b": 3, "c": 5}, {"a": 1, "b": 4, "c": 6},
                  {"a": 2, "b": 3, "c": 5}, {"a": 2, "b": 4, "c": 6}]
  with pytest.raises(ValueError):
    sweep.zip_(sweep.axis("a", [1]), sweep.axis("b", [1, 2]))


def test_vmapped_models_equal_separate_runs(tmp_path):
  config = tiny_config()
  config.model.dropout_rate = 0.1
  config.optimizer.name = "momentum"
  runs = sweep.product(sweep.axis("optimizer.learning_rate", [0.01, 0.05]),
                       sweep.axis("seed", [0, 3]))
  config.sweep = sweep.to_config(runs)
  results = sweep.run_sweep(config, str(tmp_path / "sweep"))
  assert len(results) == 4
  for i, (run, r) in enumerate(zip(runs, results)):
    assert r["optimizer.learning_rate"] == run["optimizer.learning_rate"] and r["seed"] == run["seed"]
    single = sweep.apply_overrides(config, run)
    alone = training.train_and_evaluate(single, str(tmp_path / f"alone{i}"))
    assert r["test_loss"] == pytest.approx(alone["loss"], rel=1e-4)
    assert r["test_accuracy"] == pytest.approx(alone["accuracy"], abs=1e-6)
  # Different seeds and rates really are different models.
  assert len({round(r["test_loss"], 6) for r in results}) == 4


def test_one_model_at_a_time_uses_each_runs_own_seed(tmp_path):
  """A group trained one model at a time (sweep_vmap_size=1, or a model too big
  to vmap on CPU) is single-member programs: each must see its own run's data
  order, bit for bit what the run alone trains (it once used the group's first
  seed for every member)."""
  config = tiny_config()
  config.sweep_vmap_size = 1
  runs = sweep.axis("seed", [0, 1, 2])
  config.sweep = sweep.to_config(runs)
  results = sweep.run_sweep(config, str(tmp_path / "sweep"))
  status = json.loads((tmp_path / "sweep" / "status.json").read_text())
  hashes = [status["runs"][r["run_id"]]["params_sha256"] for r in results]
  for i, r in enumerate(runs):
    single = sweep.apply_overrides(config, r)
    training.train_and_evaluate(single, str(tmp_path / f"alone{i}"))
    alone = json.loads((tmp_path / f"alone{i}" / "status.json").read_text())
    assert hashes[i] == alone["params_sha256"], i


def test_members_with_one_seed_share_one_batch_and_equal_separate_runs(tmp_path, monkeypatch):
  """One seed, one data order: the group gathers one batch for all members
  (an unbatched order, so their first layers are one wide matmul), and each
  member still trains exactly what its own run trains."""
  from vgg_jax.training import steps  # pylint: disable=g-import-not-at-top
  ranks = []
  members_chunk = steps.members_chunk

  def spy(states, alive, images, labels, orders, *args, **kwargs):
    ranks.append(orders.ndim)
    return members_chunk(states, alive, images, labels, orders, *args, **kwargs)

  monkeypatch.setattr(steps, "members_chunk", spy)
  config = tiny_config()
  config.optimizer.name = "momentum"
  rates = [0.02, 0.05, 0.1]
  config.sweep = sweep.to_config(sweep.axis("optimizer.learning_rate", rates))
  results = sweep.run_sweep(config, str(tmp_path / "sweep"))
  assert ranks and set(ranks) == {1}
  for i, (rate, r) in enumerate(zip(rates, results)):
    single = sweep.apply_overrides(config, {"optimizer.learning_rate": rate})
    alone = training.train_and_evaluate(single, str(tmp_path / f"alone{i}"))
    assert r["test_loss"] == pytest.approx(alone["loss"], rel=1e-5)
  assert len({round(r["test_loss"], 6) for r in results}) == 3


def test_diverged_member_is_frozen_and_siblings_are_untouched(tmp_path):
  config = tiny_config()
  config.optimizer.name = "sgd"
  config.sweep = sweep.to_config(sweep.axis("optimizer.learning_rate", [0.05, 1e12]))
  results = sweep.run_sweep(config, str(tmp_path / "s"))
  assert results[1]["status"] == "diverged" and results[0]["status"] == "done"
  config.sweep, config.optimizer.learning_rate = "", 0.05
  alone = training.train_and_evaluate(config, str(tmp_path / "alone"))
  assert results[0]["test_loss"] == pytest.approx(alone["loss"], rel=1e-5)


def test_shape_changing_axes_become_separate_groups(tmp_path):
  config = tiny_config()
  config.sweep = sweep.to_config(sweep.product(sweep.axis("model.hidden_sizes", [[8], [16, 16]]),
                                               sweep.axis("seed", [0, 1])))
  results = sweep.run_sweep(config, str(tmp_path))
  assert len({r["run_id"] for r in results}) == 4
  rows = read_csv(os.path.join(tmp_path, "results.csv"))
  assert {r["model.hidden_sizes"] for r in rows} == {"[8]", "[16, 16]"}


def test_sweep_composes_with_data_parallel(tmp_path):
  config = tiny_config()
  config.sweep = sweep.to_config(sweep.axis("seed", [0, 1, 2]))
  one = sweep.run_sweep(config, str(tmp_path / "one"))
  config.num_devices = 8
  eight = sweep.run_sweep(config, str(tmp_path / "eight"))
  for a, b in zip(one, eight):
    assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)


def test_rerun_skips_finished_runs(tmp_path):
  config = tiny_config()
  config.sweep = sweep.to_config(sweep.axis("seed", [0, 1]))
  sweep.run_sweep(config, str(tmp_path))
  before = read_csv(os.path.join(tmp_path, "results.csv"))
  assert sweep.run_sweep(config, str(tmp_path)) == []
  assert read_csv(os.path.join(tmp_path, "results.csv")) == before


def test_bad_sweep_axis_and_shard_are_config_errors(tmp_path):
  config = tiny_config()
  config.sweep = sweep.to_config(sweep.axis("optimizer.lerning_rate", [0.1]))
  with pytest.raises(ConfigError, match="optimizer.lerning_rate"):
    sweep.run_sweep(config, str(tmp_path))
  with pytest.raises(ConfigError, match="sweep_shard"):
    sweep.parse_shard("2/2")
