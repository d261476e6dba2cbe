"""Training and evaluation: TrainState, train_step, eval_step, train_and_evaluate.

Library code: everything comes in through the config argument; no flags.
The data flow is one way:

    config -> dataset + model + head + optimizer -> jit(train_step) -> metrics,
    checkpoints

With the in-memory pipeline the step gathers its own batch from device
arrays, and with ``config.scan_epoch`` a whole epoch runs as one lax.scan.
Determinism: the batch order is keyed on (seed, epoch) and dropout and
augmentation on fold_in(rng, step), so a run restarted from a checkpoint at
step s sees the same batches, masks and crops as an uninterrupted one.
"""

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vgg_jax import (checkpoint, config_validation, data, faults, finetune, metrics, models,
                     optim, parallel)
from vgg_jax.data import pipeline
from vgg_jax.errors import ConfigError, DivergedError, UserError
from vgg_jax.models import common

logger = logging.getLogger(__name__)

PMAP_AXIS = "devices"
EVAL_SPLITS = ("validation", "test")
# Step metric: one flag per gradient leaf (tree order), False where non-finite.
GRAD_FINITE = "grad_finite"


class TrainState(train_state.TrainState):
  """Params, optimizer state and step, plus BatchNorm stats and the base PRNG key."""
  batch_stats: Any = None
  rng: jax.Array = None  # Step t uses fold_in(rng, t): no key state to carry.


@functools.lru_cache(maxsize=16)
def _jitted_init(model):
  """One compiled init per module (modules are hashable dataclasses); a sweep
  creating K states then compiles once, not K times."""
  return jax.jit(functools.partial(model.init, train=False))


def init_variables(rng: jax.Array, model, image_shape) -> Dict[str, Any]:
  """The model's initial variables, from the same key create_train_state uses."""
  params_rng, _ = jax.random.split(rng)
  return _jitted_init(model)(params_rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32))


def create_train_state(rng: jax.Array, model, tx: optax.GradientTransformation,
                       image_shape, params=None) -> TrainState:
  """Initial state; `params` (e.g. pretrained ones) replaces the model's init."""
  _, step_rng = jax.random.split(rng)
  variables = {"params": params} if params is not None else init_variables(rng, model,
                                                                           image_shape)
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats", {}), rng=step_rng)


def make_preprocess(mean, std, dtype=jnp.float32, crop_padding: int = 0,
                    flip: bool = False) -> Callable:
  """uint8 images (+ an augmentation key when training) -> model inputs."""

  def preprocess(images, key=None):
    if key is not None and (crop_padding or flip):
      images = pipeline.random_crop_flip(images, key, crop_padding, flip)
    return pipeline.normalize(images, mean, std, dtype)

  return preprocess


def _variables(state: TrainState, params) -> Dict[str, Any]:
  if state.batch_stats:
    return {"params": params, "batch_stats": state.batch_stats}
  return {"params": params}


def train_step(state: TrainState, batch, *, head: models.Head, preprocess: Callable,
               lr_shape: Callable, axis_name: Optional[str] = None):
  """One optimizer step on a batch of uint8 images; returns (state, metrics).

  Under pmap, axis_name names the device axis: gradients and metrics are
  averaged over it (BatchNorm averages its statistics itself), and each
  device draws its own dropout masks and crops.
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
  dropout_rng, augment_rng = jax.random.split(step_rng)
  images = preprocess(batch["image"], augment_rng)
  labels = batch["label"]

  def loss_fn(params):
    logits, updates = state.apply_fn(_variables(state, params), images, train=True,
                                     rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
    return head.loss(logits, labels).mean(), (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  accuracy = jnp.mean(head.predict(logits) == labels)
  if axis_name is not None:
    grads, loss, accuracy = jax.lax.pmean((grads, loss, accuracy), axis_name)
  new_state = state.apply_gradients(grads=grads,
                                    batch_stats=updates.get("batch_stats", state.batch_stats))
  # Per-leaf sums of squares give the global norm and, for free, which layers'
  # gradients are non-finite (Inf and NaN survive the square and the sum).
  squares = [jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)]
  step_metrics = {
      "loss": loss,
      "accuracy": accuracy,
      "learning_rate": optim.learning_rate(state.opt_state, lr_shape, state.step),
      "grad_norm": jnp.sqrt(sum(squares)),
      GRAD_FINITE: jnp.stack([jnp.isfinite(x) for x in squares]),
  }
  return new_state, step_metrics


def train_chunk(state: TrainState, images, labels, order, first, *, length: int,
                batch_size: int, step_fn: Callable, batch_sharding=None):
  """`length` steps of the in-memory pipeline as one lax.scan.

  Batch first+i of the epoch `order` is gathered on the device; the metrics
  come back stacked, one row per step. With batch_sharding (jit data
  parallel) each gathered batch is split over the mesh's data axis.
  """

  def body(state, i):
    return step_fn(state, pipeline.gather_batch(images, labels, order, first + i, batch_size,
                                                batch_sharding))

  if length == 1:  # No loop: XLA:CPU runs some ops (convolutions) far slower in one.
    state, step_metrics = body(state, 0)
    return state, jax.tree.map(lambda x: x[None], step_metrics)
  return jax.lax.scan(body, state, jnp.arange(length))


def eval_step(state: TrainState, batch, mask, *, head: models.Head, preprocess: Callable):
  """Sums of loss and correct predictions over the real (mask=1) examples."""
  images = preprocess(batch["image"])
  logits = state.apply_fn(_variables(state, state.params), images, train=False)
  loss = head.loss(logits, batch["label"])
  correct = (head.predict(logits) == batch["label"]).astype(jnp.float32)
  return {"loss": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask),
          "count": jnp.sum(mask)}


def eval_means(eval_fn, state, batches: Iterator[Tuple[dict, np.ndarray]]) -> Dict[str, np.ndarray]:
  """Mean loss and accuracy over all real examples; arrays, so a vmapped
  eval_fn gives one value per model."""
  totals = None
  for batch, mask in batches:
    sums = eval_fn(state, batch, mask)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  return {"loss": totals["loss"] / totals["count"],
          "accuracy": totals["correct"] / totals["count"]}


def evaluate(eval_fn, state, batches: Iterator[Tuple[dict, np.ndarray]]) -> Dict[str, float]:
  return {k: float(v) for k, v in eval_means(eval_fn, state, batches).items()}


def total_train_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * (num_train // config.batch_size)


# What a rerun may change and still resume: the length (the schedule follows
# the new length), cadence, eval batching, devices, where the data lives, the
# NaN hunt. Anything else changes what the checkpoints mean, so a workdir
# written by another config refuses to resume.
RESUMABLE_CHANGES = ("num_epochs", "num_train_steps", "log_every_steps", "eval_every_steps",
                     "checkpoint_every_steps", "keep_checkpoints", "eval_batch_size",
                     "num_devices", "parallelism", "debug_nans", "dataset.data_dir",
                     "dataset.idx_dir", "dataset.download", "dataset.memory_limit_mb")


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses (before writing anything) to resume a workdir of a different config."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      old = _flatten(json.load(f))
  except (OSError, ValueError):
    raise ConfigError("--workdir", workdir, "a fresh directory, or one written by this "
                      f"config ({path} is unreadable)") from None
  new = _flatten(json.loads(config.to_json_best_effort()))
  differ = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
  if differ:
    shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in differ[:4])
    more = f"; and {len(differ) - 4} more" if len(differ) > 4 else ""
    raise UserError(f"{workdir} holds a run of a different config ({shown}{more}); "
                    "use a new --workdir, or the old values to resume it")


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  metrics.write_json(os.path.join(workdir, "config.json"),
                     json.loads(config.to_json_best_effort()), indent=2, sort_keys=True)


MODEL_INFO_FILE = "model_info.json"


def _write_model_info(config, info, workdir: str) -> None:
  """What predict needs besides the checkpoint: classes and input preprocessing."""
  metrics.write_json(os.path.join(workdir, MODEL_INFO_FILE), {
      "class_names": list(info.class_names), "image_shape": list(info.image_shape),
      "mean": list(info.mean), "std": list(info.std), "head": config.head,
      "cache_features": bool(config.model.cache_features)})


def restore_for_inference(workdir: str):
  """(model, variables, model_info, head) from a run's newest checkpoint.

  For a run on cached features, the checkpoint holds the classifier; the
  frozen base comes from the pretrained file again, making a whole VGG.
  """
  paths = [os.path.join(workdir, f) for f in ("config.json", MODEL_INFO_FILE)]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise UserError(f"{workdir} holds no trained run ({', '.join(missing)} missing)")
  with open(paths[0]) as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(paths[1]) as f:
    info = json.load(f)
  head = models.get_head(config.head)
  num_outputs = head.num_outputs(len(info["class_names"]))
  full = models.create_model(config.model, num_outputs, config.dtype)
  shape = tuple(info["image_shape"])
  rng = jax.random.PRNGKey(0)
  if config.model.cache_features:  # The checkpoint holds the classifier's state.
    features = jax.eval_shape(
        lambda x: full.init_with_output(rng, x, train=False, cut=finetune.cut_for(config.model))[0],
        jax.ShapeDtypeStruct((1,) + shape, jnp.float32))
    tx, _ = optim.create_optimizer(config.optimizer, 1)
    state = create_train_state(rng, finetune.classifier_for(config.model, num_outputs), tx,
                               features.shape[1:])
  else:
    tx, _ = optim.create_optimizer(config.optimizer, 1, finetune.frozen_fn(config.model.freeze))
    state = create_train_state(rng, full, tx, shape)
  manager = checkpoint.create_manager(workdir, config.keep_checkpoints)
  state, step, _ = checkpoint.restore_latest(manager, state)
  manager.close()
  if not step:
    raise UserError(f"{workdir} has no checkpoint yet")
  params = state.params
  if config.model.cache_features:
    base, _ = finetune.apply_pretrained(config.model, init_variables(rng, full, shape)["params"],
                                        shape[-1])
    params = {**base, **params}
  variables = {"params": params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return full, variables, info, head


def crossed(every: int, before: int, after: int) -> bool:
  """Whether a multiple of `every` lies in (before, after]."""
  return after // every > before // every


class _TrainRows:
  """Per-step metrics waiting to be averaged into log rows.

  Chunks stay on the device until a log point, eval or checkpoint, then come
  back in one transfer; a row averages the steps since the previous row. On
  the way, every step is checked for a non-finite loss or gradient: the first
  such step is kept in `divergence` as (step, loss, leaf-finite flags).
  """

  def __init__(self, last_logged: int, snapshot: Optional[Dict] = None):
    self.last_logged = last_logged
    self._device = []  # (first step, stacked metrics)
    snapshot = snapshot or {}
    self._steps = np.asarray(snapshot.get("steps", []), np.int64)
    self._host = {k: np.asarray(v, np.float32) for k, v in snapshot.get("metrics", {}).items()}
    self.divergence = None

  def snapshot(self) -> Dict:
    """The steps not yet in a row, exactly, for the checkpoint (JSON-able)."""
    self._fetch()
    return {"steps": self._steps.tolist(),
            "metrics": {k: [float(x) for x in v] for k, v in self._host.items()}}

  def _fetch(self) -> None:
    for first, stacked in self._device:
      stacked = dict(jax.device_get(stacked))
      finite = stacked.pop(GRAD_FINITE, None)
      n = len(stacked["loss"])
      if self.divergence is None:
        bad = ~np.isfinite(stacked["loss"])
        if finite is not None:
          bad |= ~finite.all(axis=1)
        if bad.any():
          i = int(np.argmax(bad))
          self.divergence = (first + i, float(stacked["loss"][i]),
                             None if finite is None else finite[i])
      self._steps = np.concatenate([self._steps, np.arange(first, first + n)])
      for k, v in stacked.items():
        self._host[k] = np.concatenate([self._host.get(k, np.zeros(0, v.dtype)), v])
    self._device = []

  def diverged_step(self) -> Optional[int]:
    """The first non-finite step among those added, or None (waits for the device)."""
    self._fetch()
    return None if self.divergence is None else self.divergence[0]

  def add(self, first_step: int, stacked) -> None:
    self._device.append((first_step, stacked))

  def rows_through(self, boundaries) -> Iterator[Tuple[int, Dict[str, float]]]:
    """Yields (step, means since the previous row) for each boundary, in order."""
    self._fetch()
    for b in boundaries:
      window = (self._steps > self.last_logged) & (self._steps <= b)
      yield b, {k: float(np.mean(v[window])) for k, v in self._host.items()}
      self.last_logged = b
    keep = self._steps > self.last_logged
    self._steps = self._steps[keep]
    self._host = {k: v[keep] for k, v in self._host.items()}


def params_fingerprint(params) -> str:
  """SHA-256 of every parameter's bytes and path: equal iff bit-for-bit equal."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    local = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf  # One replica.
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(jax.device_get(local)).tobytes())
  return digest.hexdigest()


def first_nonfinite_layers(params, finite: Optional[np.ndarray]) -> List[str]:
  """Layers (in forward order) whose gradient had a non-finite leaf, per the
  per-leaf flags of the GRAD_FINITE step metric."""
  if finite is None:
    return []
  order = {name: i for i, name in enumerate(params)}  # Flax keeps creation order.
  bad = set()
  for (path, _), ok in zip(jax.tree_util.tree_leaves_with_path(params), finite):
    if not ok:
      bad.add(path[0].key)
  return sorted(bad, key=lambda name: order.get(name, len(order)))


def divergence_error(divergence, params, workdir: str) -> DivergedError:
  step, loss, finite = divergence
  layers = first_nonfinite_layers(params, finite)
  where = (f"; first non-finite gradient in layer {layers[0]}"
           + (f" (and {len(layers) - 1} more)" if len(layers) > 1 else "") if layers else "")
  error = DivergedError(f"training diverged at step {step}: loss {loss}{where}. Checkpoints "
                        f"before step {step} are kept in {workdir}; lower "
                        "optimizer.learning_rate or set optimizer.grad_clip_norm")
  error.step, error.layer = step, (layers[0] if layers else None)
  error.loss = loss
  return error


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Trains config's model, evaluating and checkpointing into workdir.

  Resumes from the latest checkpoint in workdir if there is one. Returns the
  final test metrics. Raises ConfigError or DataError before writing anything,
  and DivergedError (status.json: diverged) when a loss or gradient turns
  non-finite.
  """
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
  start_time = time.time()
  config_validation.validate(config)
  check_workdir_config(config, workdir)
  dataset = data.load(config.dataset)
  info = dataset.info
  num_train = dataset.num_train
  total_steps = total_train_steps(config, num_train)
  num_devices = parallel.resolve_num_devices(config.num_devices)
  config_validation.validate_derived(config, num_train, total_steps, info.num_classes,
                                     num_devices)
  steps_per_epoch = num_train // config.batch_size
  streaming = not isinstance(dataset, data.Dataset)
  use_pmap = config.parallelism == "pmap" and num_devices > 1
  if streaming and config.eval_train_examples:
    raise ConfigError("eval_train_examples", config.eval_train_examples,
                      "0 with the streaming pipeline (train_eval needs the in-memory one)")

  head = models.get_head(config.head)
  model = models.create_model(config.model, head.num_outputs(info.num_classes), config.dtype,
                              bn_axis_name=PMAP_AXIS if use_pmap else None)
  rng = jax.random.PRNGKey(config.seed)
  image_info, params, frozen = info, None, finetune.frozen_fn(config.model.freeze)
  if config.model.pretrained:
    params, weights_preprocessing = finetune.apply_pretrained(
        config.model, init_variables(rng, model, info.image_shape)["params"],
        info.image_shape[-1])
    info = image_info = dataclasses.replace(info, mean=tuple(weights_preprocessing["mean"]),
                                            std=tuple(weights_preprocessing["std"]))
  os.makedirs(workdir, exist_ok=True)
  if config.model.cache_features:  # From here on the model is the trainable classifier.
    dataset, model, params = finetune.cache_features(
        config, dataset, model, params,
        make_preprocess(info.mean, info.std, common.DTYPES[config.dtype]), workdir,
        head.num_outputs(info.num_classes))
    info, frozen = dataset.info, None
  tx, lr_shape = optim.create_optimizer(config.optimizer, total_steps, frozen)
  state = create_train_state(rng, model, tx, info.image_shape, params=params)
  logger.info("%s on %s (%s): %s params, %d train examples, %d steps (%d per epoch)",
              config.model.name, info.name, info.source,
              f"{sum(x.size for x in jax.tree.leaves(state.params)):,}", num_train, total_steps,
              steps_per_epoch)

  if jax.process_index() == 0:
    _write_config(config, workdir)
    _write_model_info(config, image_info, workdir)
  manager = checkpoint.create_manager(workdir, config.keep_checkpoints)
  state, start_step, rows_snapshot = checkpoint.restore_latest(manager, state)
  metrics.write_status(workdir, "running", step=start_step, total_steps=total_steps)
  if start_step:
    logger.info("resumed from checkpoint at step %d", start_step)
  if num_devices > 1:
    logger.info("%s data parallel over %d devices (%d per process)", config.parallelism,
                num_devices, jax.local_device_count())
  writer = metrics.MetricsWriter(workdir, resume_step=start_step)

  dtype = common.DTYPES[config.dtype]
  augment = {} if streaming else dict(crop_padding=config.dataset.crop_padding,
                                      flip=config.dataset.flip)
  preprocess = make_preprocess(info.mean, info.std, dtype, **augment)
  eval_preprocess = make_preprocess(info.mean, info.std, dtype)
  step_fn = functools.partial(train_step, head=head, preprocess=preprocess, lr_shape=lr_shape)
  p_eval_step = jax.jit(functools.partial(eval_step, head=head, preprocess=eval_preprocess))
  eval_every = steps_per_epoch if config.eval_every_steps == -1 else config.eval_every_steps
  eval_splits = [s for s in EVAL_SPLITS if s in (
      dataset.num_examples if streaming else dataset.splits)]
  if config.eval_train_examples:
    eval_splits.insert(0, "train_eval")

  progress = metrics.Progress(total_steps)
  dp = parallel.DataParallel.create(1 if use_pmap else num_devices)
  if not use_pmap:
    state = dp.replicate(state)
  if streaming:
    eval_source = dataset
    batches = dataset.train_batches(config.batch_size // jax.process_count(), config.seed,
                                    start_step)
  else:
    # Under pmap the data stays uncommitted on one device; pmap splits each batch.
    eval_source = pipeline.InMemoryPipeline(dataset, config.batch_size, config.seed,
                                            place=jax.device_put if use_pmap else dp.replicate,
                                            eval_train_examples=config.eval_train_examples)
  if use_pmap:
    if not streaming:
      batches = _memory_batches(eval_source, start_step)
    chunks = _pmap_chunks(batches, state, step_fn, num_devices, start_step, total_steps,
                          progress)
  elif streaming:
    chunks = _streaming_chunks(batches, dp, state, step_fn, start_step, total_steps, progress)
  else:
    chunks = _memory_chunks(eval_source, dp, state, step_fn, config, start_step, total_steps,
                            progress)

  rows = _TrainRows(last_logged=start_step - len(rows_snapshot.get("steps", [])),
                    snapshot=rows_snapshot)
  step, train_rate, results = start_step, math.nan, {}
  for state, new_step, stacked in chunks:
    if use_pmap:  # Eval and checkpoints use one copy; the metrics are pmean'ed already.
      state, stacked = parallel.unreplicate(state), parallel.unreplicate(stacked)
    rows.add(step + 1, stacked)
    faults.maybe_kill("step", new_step)
    done = new_step == total_steps
    boundaries = list(range((step // config.log_every_steps + 1) * config.log_every_steps,
                            new_step + 1, config.log_every_steps))
    if done and (not boundaries or boundaries[-1] != new_step):
      boundaries.append(new_step)
    evaluate_now = done or crossed(eval_every, step, new_step)
    save_now = done or crossed(config.checkpoint_every_steps, step, new_step)
    # Nothing is logged, evaluated or saved from a state past a non-finite step.
    bad_step = rows.diverged_step() if boundaries or evaluate_now or save_now else None
    if bad_step is not None:
      boundaries = [b for b in boundaries if b < bad_step]
    if boundaries:
      logged = list(rows.rows_through(boundaries))  # Waits for the device.
      train_rate = progress.rate(new_step)
      progress.mark(new_step)
      for row_step, means in logged:
        writer.write(row_step, "train", {**means, "steps_per_sec": train_rate,
                                         "epoch": row_step / steps_per_epoch})
        logger.info("%s", progress.line(row_step, {"loss": means["loss"],
                                                   "acc": means["accuracy"]}))
    if bad_step is not None:
      manager.wait_until_finished()
      writer.close()
      error = divergence_error(rows.divergence, state.params, workdir)
      metrics.write_status(workdir, "diverged", step=error.step, loss=error.loss,
                           layer=error.layer, message=str(error))
      raise error
    if evaluate_now:
      lr = float(optim.learning_rate(state.opt_state, lr_shape, state.step - 1))
      for split in eval_splits:
        results[split] = evaluate(p_eval_step, state,
                                  eval_source.eval_batches(split, config.eval_batch_size))
        writer.write(new_step, split, {**results[split], "learning_rate": lr,
                                       "steps_per_sec": train_rate,
                                       "epoch": new_step / steps_per_epoch})
        logger.info("step %d/%d | %s loss %.4f acc %.4f", new_step, total_steps, split,
                    results[split]["loss"], results[split]["accuracy"])
        faults.maybe_kill("eval", new_step)
    if save_now:
      checkpoint.save(manager, new_step, state, rows.snapshot())
      faults.maybe_kill("checkpoint", new_step)
    if evaluate_now or save_now:
      progress.mark(new_step)  # Eval and checkpoint time are not training time.
    step = new_step
  manager.wait_until_finished()
  manager.close()
  writer.close()

  if "test" not in results:  # Resumed a finished run: score the restored state.
    results["test"] = evaluate(p_eval_step, state,
                               eval_source.eval_batches("test", config.eval_batch_size))
  final = {**results["test"], "step": total_steps, "wall_seconds": time.time() - start_time}
  if "validation" in results:
    final.update({f"validation_{k}": v for k, v in results["validation"].items()})
  metrics.write_status(workdir, "done", step=total_steps, test_accuracy=final["accuracy"],
                       test_loss=final["loss"], params_sha256=params_fingerprint(state.params))
  return final


def _memory_chunks(pipe: pipeline.InMemoryPipeline, dp: parallel.DataParallel, state, step_fn,
                   config, start_step: int, total_steps: int, progress: metrics.Progress):
  """Yields (state, step reached, stacked metrics) for the in-memory pipeline.

  With config.scan_epoch, each epoch (or what is left of it) is one lax.scan
  call; otherwise one step per call. Each chunk length compiles once, ahead
  of time, so compile time stays out of the throughput clock.
  """
  images, labels = pipe.arrays["train"]
  sharding = dp.batch_sharding if dp.num_devices > 1 else None
  chunk = jax.jit(functools.partial(train_chunk, batch_size=config.batch_size, step_fn=step_fn,
                                    batch_sharding=sharding),
                  static_argnames="length", donate_argnums=0)
  compiled = {}
  step, spe = start_step, pipe.steps_per_epoch
  while step < total_steps:
    epoch, index = divmod(step, spe)
    order = pipe.order(epoch)
    end = min((epoch + 1) * spe, total_steps)
    length = end - step if config.scan_epoch else 1
    for first in range(index, index + end - step, length):
      if length not in compiled:
        compiled[length] = _ahead_of_time(chunk, state, images, labels, order, first,
                                          length=length)
        progress.mark(step)
      state, stacked = parallel.bounded_dispatch(
          compiled[length](state, images, labels, order, first), dp.num_devices)
      step += length
      yield state, step, stacked


def _ahead_of_time(jitted, *args, **static):
  """jitted compiled now (so compile time stays off the clock), as a callable
  of the non-static args. Under jax_debug_nans the jitted function itself:
  only it checks its outputs and re-runs op by op to name the culprit."""
  if jax.config.jax_debug_nans:
    return functools.partial(jitted, **static)
  return jitted.lower(*args, **static).compile()


def _memory_batches(pipe: pipeline.InMemoryPipeline, start_step: int) -> Iterator[dict]:
  """Global batches gathered on the default device, one per step (for pmap)."""
  images, labels = pipe.arrays["train"]
  gather = jax.jit(pipeline.gather_batch, static_argnames="batch_size")
  step = start_step
  while True:
    epoch, index = divmod(step, pipe.steps_per_epoch)
    order = pipe.order(epoch)
    for i in range(index, pipe.steps_per_epoch):
      yield gather(images, labels, order, i, batch_size=pipe.batch_size)
    step = (epoch + 1) * pipe.steps_per_epoch


def _streaming_chunks(batches, dp: parallel.DataParallel, state, step_fn, start_step: int,
                      total_steps: int, progress: metrics.Progress):
  """Yields (state, step reached, metrics with a leading axis of 1) from tf.data."""
  from vgg_jax.data import streaming  # pylint: disable=g-import-not-at-top
  batches = streaming.prefetch_to_device(batches, place=dp.shard_batch)
  compiled = None
  for step in range(start_step + 1, total_steps + 1):
    batch = next(batches)
    if compiled is None:
      compiled = _ahead_of_time(jax.jit(step_fn, donate_argnums=0), state, batch)
      progress.mark(step - 1)
    state, step_metrics = parallel.bounded_dispatch(compiled(state, batch), dp.num_devices)
    yield state, step, jax.tree.map(lambda x: x[None], step_metrics)


def _pmap_chunks(batches, state, step_fn, num_devices: int, start_step: int, total_steps: int,
                 progress: metrics.Progress):
  """The pmap form: state with a leading device axis, batches split per device."""
  p_step = jax.pmap(functools.partial(step_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS,
                    devices=jax.local_devices()[:num_devices], donate_argnums=0)
  state = parallel.replicate_for_pmap(state, num_devices)
  for step in range(start_step + 1, total_steps + 1):
    batch = parallel.split_for_pmap(next(batches), num_devices)
    state, step_metrics = parallel.bounded_dispatch(p_step(state, batch), num_devices)
    if step == start_step + 1:
      jax.block_until_ready(step_metrics)  # Leave the compile out of steps/s.
      progress.mark(step)
    yield state, step, jax.tree.map(lambda x: x[:, None], step_metrics)
