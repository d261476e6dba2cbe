"""Damaged checkpoints: fall back to an older good one, or refuse clearly."""

import logging
import os
import shutil

import pytest

from conftest import run_cli, tiny_config
from vgg_jax import checkpoint, metrics, train


def comparable(rows):
  return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in rows]


def delete_manifest(step_dir):
  os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


def flip_bytes(step_dir):
  for root, _, files in os.walk(os.path.join(step_dir, "state", "d")):
    for name in files:
      path = os.path.join(root, name)
      data = bytearray(open(path, "rb").read())
      for i in range(0, len(data), 7):
        data[i] ^= 0xFF
      open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("damage", [delete_manifest, flip_bytes])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, caplog):
  config = tiny_config()
  config.num_epochs = 3  # Checkpoints at 8, 16, 24.
  full = str(tmp_path / "full")
  train.train_and_evaluate(config, full)
  expected = comparable(metrics.read_metrics(full))

  work = str(tmp_path / "work")
  config.num_train_steps = 16
  train.train_and_evaluate(config, work)  # Stops at 16: checkpoints 8 and 16.
  damage(os.path.join(work, "checkpoints", "16"))
  config.num_train_steps = -1
  with caplog.at_level(logging.WARNING, logger="vgg_jax"):
    train.train_and_evaluate(config, work)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("checkpoint at step 16 is unreadable" in w for w in warnings), warnings
  assert os.listdir(os.path.join(work, checkpoint.CORRUPT_DIR))  # Moved, not deleted.
  assert comparable(metrics.read_metrics(work)) == expected  # Steps 9..24 redone exactly.


def test_no_readable_checkpoint_is_a_clear_error_and_keeps_the_workdir(tmp_path):
  args = ["--config=configs/default.py", "--config.num_train_steps=40",
          "--config.checkpoint_every_steps=20", "--config.log_every_steps=20"]
  first = run_cli(args, workdir=tmp_path)
  assert first.returncode == 0, first.stderr
  steps = [d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
  assert len(steps) == 2
  for step in steps:
    delete_manifest(os.path.join(tmp_path, "checkpoints", step))
  rows = open(tmp_path / "metrics.jsonl").read()
  again = run_cli(args, workdir=tmp_path)
  assert again.returncode == 2
  errors = [l for l in again.stderr.splitlines() if l.startswith("vgg_jax:")]
  assert len(errors) == 1 and errors[0].startswith("vgg_jax: no readable checkpoint")
  assert "refusing to start" in errors[0]
  # Each damaged step got its own one-line warning.
  assert again.stderr.count("is unreadable") == 2
  assert open(tmp_path / "metrics.jsonl").read() == rows  # Nothing was overwritten.
  assert sorted(os.listdir(tmp_path / checkpoint.CORRUPT_DIR))
  shutil.rmtree(tmp_path)
