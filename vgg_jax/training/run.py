"""A single run: the engine with one member, writing metrics.jsonl, TensorBoard
and status.json into its workdir.

    train_and_evaluate(config, workdir) -> final test metrics

Resumes from the newest checkpoint in workdir. Raises ConfigError or
DataError before writing anything, WorkdirBusyError when another process
holds the workdir, DivergedError (status.json: diverged) when a loss or
gradient turns non-finite, and preemption.Preempted (status.json:
preempted) after a SIGTERM or SIGINT, once a checkpoint is written.
"""

import logging
import math
import os
import time
from typing import Dict

import jax
import ml_collections

from vgg_jax import config_validation, data, metrics, preemption
from vgg_jax.errors import DivergedError
from vgg_jax.training import engine, workdir as workdir_lib
from vgg_jax.training.rows import MemberRows, TrainRows, divergence_error, params_fingerprint

logger = logging.getLogger(__name__)


class RunOutputs:
  """What one run writes: metrics.jsonl + TensorBoard rows, status.json."""

  freezes = False  # One model: a non-finite step ends the run.
  fault_points = {"eval": "eval_rows"}  # faults.py: after an eval split is written.

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.start_time = time.time()
    self.writer = None

  def start(self, setup: engine.Setup) -> None:
    self.setup = setup
    os.makedirs(self.workdir, exist_ok=True)
    if jax.process_index() == 0:
      workdir_lib.write_config(self.config, self.workdir)
      workdir_lib.write_model_info(self.config, setup.program.image_info, self.workdir)

  def restore(self, start_step: int, snapshot, schedule, state):
    self.total_steps = schedule.total_steps
    metrics.write_status(self.workdir, "running", step=start_step, total_steps=self.total_steps)
    self.writer = metrics.MetricsWriter(self.workdir, resume_step=start_step,
                                        hparams=hparams(self.config))
    self.progress = metrics.Progress(self.total_steps)
    self.train_rate = math.nan
    rows = TrainRows(last_logged=start_step - len(snapshot.get("steps", [])), snapshot=snapshot)
    return MemberRows([rows]), self.progress

  def snapshot(self, rows: MemberRows, progress) -> Dict:
    return rows.snapshots()[0]

  def _epoch(self, step: int) -> float:
    return step / self.setup.schedule.steps_per_epoch

  def train_rows(self, j: int, logged, train_rate: float) -> None:
    self.train_rate = train_rate
    for row_step, means in logged:
      self.writer.write(row_step, "train", {**means, "steps_per_sec": train_rate,
                                            "epoch": self._epoch(row_step)})
      logger.info("%s", self.progress.line(row_step, {"loss": means["loss"],
                                                      "acc": means["accuracy"]}))

  def eval_rows(self, step: int, split: str, means, lr) -> None:
    values = {k: float(v[0]) for k, v in means.items()}
    self.writer.write(step, split, {**values, "learning_rate": float(lr[0]),
                                    "steps_per_sec": self.train_rate, "epoch": self._epoch(step)})
    logger.info("step %d/%d | %s loss %.4f acc %.4f", step, self.total_steps, split,
                values["loss"], values["accuracy"])

  def evaluated(self, step: int, state, rows, done: bool) -> None:
    pass

  def diverged(self, j: int, divergence, state) -> None:
    self.close()
    error = divergence_error(divergence, state.params, self.workdir)
    metrics.write_status(self.workdir, "diverged", step=error.step, loss=error.loss,
                         layer=error.layer, message=str(error))
    raise error

  def preempted(self, step: int) -> None:
    self.close()
    metrics.write_status(self.workdir, "preempted", step=step, total_steps=self.total_steps)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.writer = None

  def results(self, state, step: int, results) -> Dict[str, float]:
    final = {k: float(v[0]) for k, v in results["test"].items()}
    final.update(step=step, wall_seconds=time.time() - self.start_time)
    if "validation" in results:
      final.update({f"validation_{k}": float(v[0]) for k, v in results["validation"].items()})
    metrics.write_status(self.workdir, "done", step=step, test_accuracy=final["accuracy"],
                         test_loss=final["loss"], params_sha256=params_fingerprint(state.params))
    return final


# A single run's HParams: what most often differs between runs compared in
# TensorBoard, plus every key whose value is not vgg_jax's default.
HPARAMS = ("model.name", "dataset.name", "optimizer.name", "optimizer.learning_rate",
           "batch_size", "num_epochs", "seed")


def hparams(config: ml_collections.ConfigDict) -> Dict:
  from vgg_jax import config_lib  # pylint: disable=g-import-not-at-top
  flat = workdir_lib.flat_config(config)
  default = workdir_lib.flat_config(config_lib.base_config())
  return {k: v for k, v in flat.items()
          if k in HPARAMS or (k in default and v != default[k] and k != "sweep")}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Trains config's model into workdir (a sweep of one); returns the final
  test metrics (+ validation_* where there is a validation split)."""
  if not config.get("debug_nans", False):
    return _train_and_evaluate(config, workdir)
  previous = jax.config.jax_debug_nans
  jax.config.update("jax_debug_nans", True)
  try:
    # Op by op: each primitive's output is checked as it is made, so the error
    # names the first one that makes a NaN (compiled, JAX's own post-check of
    # a jitted call's outputs missed it here).
    with jax.disable_jit():
      return _train_and_evaluate(config, workdir)
  except FloatingPointError as e:
    message = str(e).splitlines()[0]
    metrics.write_status(workdir, "diverged", message=message)
    raise DivergedError(f"jax_debug_nans: {message}") from None
  finally:
    jax.config.update("jax_debug_nans", previous)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  config_validation.validate(config)
  workdir_lib.check_workdir_config(config, workdir)
  with workdir_lib.locked(workdir, primary=jax.process_index() == 0), preemption.guard():
    outputs = RunOutputs(config, workdir)
    members = [engine.Member(config)]
    setup = engine.set_up(config, data.load(config.dataset), members, workdir)
    return engine.train_members(setup, members, outputs)
