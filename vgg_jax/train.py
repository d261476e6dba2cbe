"""Training and evaluation: TrainState, train_step, eval_step, train_and_evaluate.

Library code: everything comes in through the config argument; no flags.
The data flow is one way:

    config -> dataset + model + head + optimizer -> jit(train_step) -> metrics,
    checkpoints

Determinism: the shuffle order is keyed on (seed, epoch) and dropout on
fold_in(key, step), so a run restarted from a checkpoint at step s sees the
same batches and masks as an uninterrupted one.
"""

import functools
import json
import logging
import math
import os
import time
from typing import Any, Callable, Dict

from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vgg_jax import checkpoint, config_validation, data, metrics, models, optim
from vgg_jax.data import pipeline
from vgg_jax.errors import DivergedError
from vgg_jax.models import common

logger = logging.getLogger(__name__)


class TrainState(train_state.TrainState):
  """Params, optimizer state and step, plus BatchNorm stats and the dropout key."""
  batch_stats: Any = None
  dropout_key: jax.Array = None


def create_train_state(rng: jax.Array, model, tx: optax.GradientTransformation,
                       image_shape) -> TrainState:
  params_rng, dropout_rng = jax.random.split(rng)
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(params_rng, dummy)
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats", {}),
                           dropout_key=dropout_rng)


def _variables(state: TrainState, params) -> Dict[str, Any]:
  if state.batch_stats:
    return {"params": params, "batch_stats": state.batch_stats}
  return {"params": params}


def train_step(state: TrainState, batch, *, head: models.Head, preprocess: Callable,
               lr_shape: Callable):
  """One SGD step on a batch of uint8 images; returns (state, metrics)."""
  images = preprocess(batch["image"])
  labels = batch["label"]
  dropout_rng = jax.random.fold_in(state.dropout_key, state.step)

  def loss_fn(params):
    logits, updates = state.apply_fn(_variables(state, params), images, train=True,
                                     rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
    return head.loss(logits, labels).mean(), (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads,
                                    batch_stats=updates.get("batch_stats", state.batch_stats))
  step_metrics = {
      "loss": loss,
      "accuracy": jnp.mean(head.predict(logits) == labels),
      "learning_rate": optim.learning_rate(state.opt_state, lr_shape, state.step),
      "grad_norm": optax.tree.norm(grads),
  }
  return new_state, step_metrics


def eval_step(state: TrainState, batch, mask, *, head: models.Head, preprocess: Callable):
  """Sums of loss and correct predictions over the real (mask=1) examples."""
  images = preprocess(batch["image"])
  logits = state.apply_fn(_variables(state, state.params), images, train=False)
  loss = head.loss(logits, batch["label"])
  correct = (head.predict(logits) == batch["label"]).astype(jnp.float32)
  return {"loss": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask),
          "count": jnp.sum(mask)}


def evaluate(eval_fn, state, images, labels, batch_size) -> Dict[str, float]:
  totals = None
  for batch, mask in pipeline.eval_batches(images, labels, min(batch_size, len(labels))):
    sums = eval_fn(state, batch, mask)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  return {"loss": float(totals["loss"] / totals["count"]),
          "accuracy": float(totals["correct"] / totals["count"])}


def total_train_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * (num_train // config.batch_size)


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  path = os.path.join(workdir, "config.json")
  resolved = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) != resolved:
        logger.warning("config differs from the one in %s; resuming with the new one", path)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(resolved, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Trains config's model, evaluating and checkpointing into workdir.

  Resumes from the latest checkpoint in workdir if there is one. Returns the
  final test metrics. Raises ConfigError or DataError before writing anything.
  """
  start_time = time.time()
  config_validation.validate(config)
  dataset = data.load(config.dataset)
  num_train = len(dataset.train_labels)
  steps_per_epoch = num_train // min(config.batch_size, num_train)
  total_steps = total_train_steps(config, num_train)
  config_validation.validate_derived(config, num_train, total_steps)

  head = models.get_head(config.head)
  model = models.create_model(config.model, head.num_outputs(dataset.num_classes), config.dtype)
  tx, lr_shape = optim.create_optimizer(config.optimizer, total_steps)
  state = create_train_state(jax.random.PRNGKey(config.seed), model, tx, dataset.image_shape)
  logger.info("%s on %s: %s params, %d train / %d test examples, %d steps",
               config.model.name, dataset.name,
               f"{sum(x.size for x in jax.tree.leaves(state.params)):,}", num_train,
               len(dataset.test_labels), total_steps)

  os.makedirs(workdir, exist_ok=True)
  _write_config(config, workdir)
  manager = checkpoint.create_manager(workdir, config.keep_checkpoints)
  state, start_step = checkpoint.restore_latest(manager, state)
  if start_step:
    logger.info("resumed from checkpoint at step %d", start_step)
  writer = metrics.MetricsWriter(workdir, resume_step=start_step)

  preprocess = functools.partial(pipeline.normalize, mean=dataset.mean, std=dataset.std,
                                 dtype=common.DTYPES[config.dtype])
  p_train_step = jax.jit(functools.partial(train_step, head=head, preprocess=preprocess,
                                           lr_shape=lr_shape), donate_argnums=0)
  p_eval_step = jax.jit(functools.partial(eval_step, head=head, preprocess=preprocess))
  eval_every = steps_per_epoch if config.eval_every_steps == -1 else config.eval_every_steps

  progress = metrics.Progress(total_steps)
  batches = pipeline.train_batches(dataset.train_images, dataset.train_labels,
                                   config.batch_size, config.seed, start_step)
  pending = []  # Device metrics since the last log line; fetched in one transfer.
  last_logged, train_rate, test_metrics = start_step, math.nan, None
  for step in range(start_step + 1, total_steps + 1):
    state, step_metrics = p_train_step(state, next(batches))
    pending.append(step_metrics)
    if step == start_step + 1:
      jax.block_until_ready(step_metrics)  # Leave compile time out of steps/s.
      progress.mark(step)
    if step % config.log_every_steps == 0 or step == total_steps:
      summary = {k: float(np.mean(v)) for k, v in jax.device_get(
          jax.tree.map(lambda *xs: jnp.stack(xs), *pending)).items()}
      pending = []
      if not math.isfinite(summary["loss"]):
        raise DivergedError(f"training diverged: loss became {summary['loss']} between steps "
                            f"{last_logged + 1} and {step}; lower optimizer.learning_rate or "
                            "set optimizer.grad_clip_norm")
      train_rate = progress.rate(step)
      progress.mark(step)
      summary["steps_per_sec"] = train_rate
      summary["epoch"] = step / steps_per_epoch
      writer.write(step, "train", summary)
      logger.info("%s", progress.line(step, {"loss": summary["loss"],
                                              "acc": summary["accuracy"]}))
      last_logged = step
    if step % eval_every == 0 or step == total_steps:
      test_metrics = evaluate(p_eval_step, state, dataset.test_images, dataset.test_labels,
                              config.eval_batch_size)
      lr = float(optim.learning_rate(state.opt_state, lr_shape, state.step - 1))
      writer.write(step, "test", {**test_metrics, "learning_rate": lr,
                                  "steps_per_sec": train_rate, "epoch": step / steps_per_epoch})
      logger.info("step %d/%d | test loss %.4f acc %.4f", step, total_steps,
                   test_metrics["loss"], test_metrics["accuracy"])
      progress.mark(step)
    if step % config.checkpoint_every_steps == 0 or step == total_steps:
      checkpoint.save(manager, step, state)
  manager.wait_until_finished()
  manager.close()
  writer.close()

  if test_metrics is None:  # Resumed a finished run: score the restored state.
    test_metrics = evaluate(p_eval_step, state, dataset.test_images, dataset.test_labels,
                            config.eval_batch_size)
  test_metrics = {**test_metrics, "step": total_steps, "wall_seconds": time.time() - start_time}
  return test_metrics
