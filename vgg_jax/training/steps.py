"""The math of one step: TrainState, train_step, eval_step, and scanned chunks.

Pure functions of (state, batch); the program builder (program.py) binds
them to a config's head, preprocessing and schedule, and the drivers
(drivers.py) compile them. Determinism: dropout and augmentation use
fold_in(rng, step), so a run restarted at step s draws what an uninterrupted
one draws.
"""

import functools
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vgg_jax import models, optim
from vgg_jax.data import pipeline

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
                       image_shape, params=None, batch_stats=None) -> TrainState:
  """Initial state; `params` (e.g. pretrained ones) replaces the model's init."""
  _, step_rng = jax.random.split(rng)
  if params is None:
    variables = init_variables(rng, model, image_shape)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=batch_stats or {}, rng=step_rng)


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
               lr_multiplier: Callable, axis_name: Optional[str] = None):
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
      "learning_rate": optim.learning_rate(state.opt_state, lr_multiplier, state.step),
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


def members_chunk(states, alive, images, labels, orders, first, *, length: int,
                  batch_size: int, step_fn: Callable, freeze: bool, batch_sharding=None):
  """train_chunk for K stacked models (vmapped).

  orders is [K, N], one data order per member, or [N], one order all
  members share (they share a seed). A shared order means a shared batch:
  the first layer of the K models is then one wide matmul (the batch times
  the K kernels side by side, by JAX's batching rule for an unbatched
  operand) instead of K small batched ones, and the gather runs once.

  alive marks the members still training; the returned alive is False for
  every member with a non-finite step (the loss, or any gradient leaf: the
  test the loop's divergence check makes). With freeze, such a member keeps
  its last finite state from then on and its siblings are untouched. That
  costs a select over the whole state every step, so the driver runs
  freeze=False while every member is finite, and reruns a chunk with
  freeze=True from its start only if a member diverged in it.
  """

  def one(state, alive, order):
    def body(carry, i):
      state, alive = carry
      batch = pipeline.gather_batch(images, labels, order, first + i, batch_size,
                                    batch_sharding)
      new_state, m = step_fn(state, batch)
      ok = alive & jnp.isfinite(m["loss"]) & jnp.all(m[GRAD_FINITE])
      if freeze:
        new_state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, state)
      return (new_state, ok), m

    (state, alive), m = jax.lax.scan(body, (state, alive), jnp.arange(length))
    return state, alive, m

  return jax.vmap(one, in_axes=(0, 0, 0 if orders.ndim == 2 else None))(
      states, alive, orders)


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
