"""The metrics writer: rows in metrics.jsonl, the same numbers as TensorBoard
scalars that TensorBoard's own reader reads back."""

import glob
import math

from tensorboard.backend.event_processing import event_accumulator

from vgg_jax import metrics


def test_rows_and_tensorboard_scalars_hold_the_same_numbers(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path), resume_step=0)
  writer.write(10, "train", {"loss": 0.5, "accuracy": 0.75})
  writer.write(20, "test", {"loss": 0.25, "accuracy": float("nan")})
  writer.close()
  assert metrics.read_metrics(str(tmp_path)) == [
      {"step": 10, "split": "train", "loss": 0.5, "accuracy": 0.75},
      {"step": 20, "split": "test", "loss": 0.25, "accuracy": None}]  # JSON has no NaN.
  [path] = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  events = event_accumulator.EventAccumulator(path)
  events.Reload()
  assert sorted(events.Tags()["scalars"]) == ["test/accuracy", "test/loss", "train/accuracy",
                                              "train/loss"]
  assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(10, 0.5)]
  assert [(e.step, e.value) for e in events.Scalars("train/accuracy")] == [(10, 0.75)]
  assert math.isnan(events.Scalars("test/accuracy")[0].value)
