"""train_and_evaluate on tiny models, in process: outputs, determinism,
resume from a middle checkpoint, epoch orders, evaluation, divergence.

Runs stopped by a signal and resumed: tests/e2e/test_resume.py."""

import glob
import json
import os

import jax
import numpy as np
import pytest

from conftest import status, tiny_config
from vgg_jax import checkpoint, data, metrics, models, optim, training
from vgg_jax.data import pipeline
from vgg_jax.errors import DivergedError

REQUIRED_KEYS = {"step", "split", "loss", "accuracy", "learning_rate", "steps_per_sec"}


def comparable(rows):
  """Metrics rows without the wall-clock field."""
  return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in rows]


def test_train_and_evaluate_writes_every_output(config, tmp_path):
  workdir = str(tmp_path / "run")
  result = training.train_and_evaluate(config, workdir)
  rows = metrics.read_metrics(workdir)
  assert {r["split"] for r in rows} == {"train", "test"}
  assert all(REQUIRED_KEYS <= set(r) for r in rows)
  total = 2 * (256 // 32)
  assert rows[-1]["step"] == total and result["step"] == total
  # The train rows are the log points; the test rows are once per epoch.
  assert [r["step"] for r in rows if r["split"] == "train"] == [4, 8, 12, 16]
  assert [r["step"] for r in rows if r["split"] == "test"] == [8, 16]
  assert rows[-1]["accuracy"] == pytest.approx(result["accuracy"])
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["hidden_sizes"] == [16]
  assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps == [8, 16]
  done = status(workdir)  # Done, with the final params' fingerprint.
  assert done["status"] == "done" and done["step"] == result["step"]
  assert len(done["params_sha256"]) == 64


def test_training_learns_the_synthetic_task(config, tmp_path):
  config.num_epochs = 6
  config.optimizer.learning_rate = 0.01
  result = training.train_and_evaluate(config, str(tmp_path))
  assert result["accuracy"] > 0.9  # Chance is 1/3.


def test_same_seed_gives_identical_metrics_and_other_seed_does_not(config, tmp_path):
  config.model.dropout_rate = 0.2
  runs = {}
  for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
    config.seed = seed
    training.train_and_evaluate(config, str(tmp_path / name))
    runs[name] = comparable(metrics.read_metrics(str(tmp_path / name)))
  assert runs["a"] == runs["b"]
  assert runs["a"] != runs["c"]


def test_rerun_after_finish_resumes_and_changes_nothing(config, tmp_path):
  first = training.train_and_evaluate(config, str(tmp_path))
  rows = metrics.read_metrics(str(tmp_path))
  again = training.train_and_evaluate(config, str(tmp_path))
  assert again["accuracy"] == first["accuracy"] and again["loss"] == first["loss"]
  assert metrics.read_metrics(str(tmp_path)) == rows


def test_resume_from_a_middle_checkpoint_matches_uninterrupted(config, tmp_path):
  """Delete the last checkpoint and the rows after the middle one: as if the
  process died right after step 8. The rerun must redo steps 9..16 exactly."""
  full = str(tmp_path / "full")
  training.train_and_evaluate(config, full)
  expected = comparable(metrics.read_metrics(full))
  cut = str(tmp_path / "cut")
  training.train_and_evaluate(config, cut)
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(os.path.join(cut, "checkpoints", "16"))
  with open(os.path.join(cut, "metrics.jsonl"), "a") as f:
    f.write('{"step": 12, "split": "train", "loss": 9.9}\n{"step": 13, "spl')  # Torn row.
  training.train_and_evaluate(config, cut)
  assert comparable(metrics.read_metrics(cut)) == expected


def test_epoch_order_is_a_seeded_permutation():
  a, b = pipeline.epoch_permutation(7, 3, 50), pipeline.epoch_permutation(7, 3, 50)
  np.testing.assert_array_equal(a, b)
  assert sorted(np.asarray(a).tolist()) == list(range(50))
  assert not np.array_equal(a, pipeline.epoch_permutation(7, 4, 50))
  assert not np.array_equal(a, pipeline.epoch_permutation(8, 3, 50))


@pytest.mark.parametrize("n", [0, 1, 2, 50, 1797, 60000])
def test_epoch_order_is_jax_random_permutation_element_for_element(n):
  # The NumPy sorts reproduce JAX's own shuffle, so data orders (and every
  # run's results) are what jax.random.permutation gives; one sort round up
  # to 1,625 examples, two from 1,626.
  for seed, epoch in [(0, 0), (3, 7), (12345, 1)]:
    key = jax.random.fold_in(jax.random.PRNGKey(seed), epoch)
    np.testing.assert_array_equal(pipeline.epoch_permutation(seed, epoch, n),
                                  np.asarray(jax.random.permutation(key, n)))


def test_eval_counts_each_example_once_with_padding():
  images = np.zeros((10, 1, 1, 1), np.uint8)
  labels = np.arange(10, dtype=np.int32)
  batches = list(pipeline.eval_batches(images, labels, 4))
  assert [b["label"].shape[0] for b, _ in batches] == [4, 4, 4]
  seen = np.concatenate([b["label"][m > 0] for b, m in batches])
  np.testing.assert_array_equal(seen, labels)


def test_vgg_with_batch_norm_trains_on_digits(tmp_path):
  from vgg_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.dataset.image_size = 17  # The smallest size a VGG's five pools accept.
  config.model.name = "vgg11"
  config.model.width_multiplier = 1 / 32
  config.model.classifier_sizes = (16,)
  config.model.batch_norm = True
  config.num_train_steps = 3
  config.batch_size = 16
  config.num_devices = 1
  result = training.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(result["loss"])
  state = training.create_train_state(jax.random.PRNGKey(0), models.create_model(
      config.model, 10), optim.create_optimizer(config.optimizer, 3)[0], (17, 17, 1))
  restored, step, _ = checkpoint.restore_latest(
      checkpoint.create_manager(str(tmp_path), 3), state)
  assert step == 3 and restored.batch_stats  # BatchNorm stats are checkpointed.


def test_digits_split_is_fixed_and_disjoint():
  from vgg_jax import config_lib  # pylint: disable=g-import-not-at-top
  cfg = config_lib.base_config().dataset
  a, b = data.load(cfg), data.load(cfg)
  np.testing.assert_array_equal(a.splits["test"][1], b.splits["test"][1])
  assert len(a.splits["train"][1]) + len(a.splits["test"][1]) == 1797
  assert a.splits["train"][0].dtype == np.uint8 and a.info.image_shape == (8, 8, 1)
  cfg.classes, cfg.image_size = (3, 8), 32
  sub = data.load(cfg)
  assert sub.info.num_classes == 2 and set(np.unique(sub.splits["train"][1])) == {0, 1}
  assert sub.info.image_shape == (32, 32, 1) and sub.info.class_names == ("3", "8")


# --------------------------------------------------------------- NaN runs


def _nan_config():
  """SGD whose rate jumps by 1e30 halfway: finite first, then non-finite."""
  config = tiny_config()
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.schedule = "step"
  config.optimizer.step_boundaries = (0.5,)
  config.optimizer.step_factor = 1e30
  config.num_epochs = 5  # 40 steps; the jump at step 20.
  config.scan_epoch = False
  return config


def test_divergence_stops_names_step_and_layer_and_keeps_earlier_checkpoints(tmp_path):
  with pytest.raises(DivergedError, match=r"diverged at step 2\d.*layer (hidden_0|output)"):
    training.train_and_evaluate(_nan_config(), str(tmp_path))
  at = status(tmp_path)
  assert at["status"] == "diverged" and 20 < at["step"] <= 40
  assert at["layer"] in ("hidden_0", "output")
  kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert kept and max(kept) < at["step"]  # Nothing saved from a non-finite state.
  assert all(np.isfinite(r["loss"]) for r in metrics.read_metrics(str(tmp_path)))


def test_divergence_inside_a_scanned_epoch_is_caught_at_its_end(tmp_path):
  config = _nan_config()
  config.scan_epoch = True
  with pytest.raises(DivergedError, match="diverged at step 2"):
    training.train_and_evaluate(config, str(tmp_path))
  assert status(tmp_path)["status"] == "diverged"
