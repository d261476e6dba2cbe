"""Damaged checkpoints: fall back to an older good one. Where none is left, the
refusal on the command line: tests/e2e/test_bad_input.py."""

import logging
import os

import pytest

from conftest import tiny_config
from vgg_jax import checkpoint, metrics, training


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
  training.train_and_evaluate(config, full)
  expected = comparable(metrics.read_metrics(full))

  work = str(tmp_path / "work")
  config.num_train_steps = 16
  training.train_and_evaluate(config, work)  # Stops at 16: checkpoints 8 and 16.
  damage(os.path.join(work, "checkpoints", "16"))
  config.num_train_steps = -1
  with caplog.at_level(logging.WARNING, logger="vgg_jax"):
    training.train_and_evaluate(config, work)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("checkpoint at step 16 is unreadable" in w for w in warnings), warnings
  assert os.listdir(os.path.join(work, checkpoint.CORRUPT_DIR))  # Moved, not deleted.
  assert comparable(metrics.read_metrics(work)) == expected  # Steps 9..24 redone exactly.
