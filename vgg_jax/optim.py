"""Optimizer registry: the lecture's lineage, SGD to Nadam, as Optax chains.

    sgd -> momentum -> nesterov (NAG) -> adagrad -> rmsprop -> adadelta
        -> adam -> nadam (+ adamw)

Optax does all the update math. The chain is

    [clip_by_global_norm] -> [add_decayed_weights] -> <optimizer at peak lr>
        -> scale_by_schedule(lr_multiplier)

wrapped in ``optax.inject_hyperparams`` so the peak learning rate, momentum
and weight decay live in the optimizer state as arrays: a sweep can set them
per model without recompiling. The schedule is a multiplier with peak 1.0,
which is equivalent to scheduling the rate itself because every optimizer
here ends by scaling its update by the learning rate.
"""

from typing import Callable

import jax.numpy as jnp
import ml_collections
import optax

from vgg_jax import checks
from vgg_jax.errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "nadam",
              "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")


def _base_optimizer(cfg, learning_rate, momentum, weight_decay) -> optax.GradientTransformation:
  name = cfg.name
  if name == "sgd":
    return optax.sgd(learning_rate)
  if name == "momentum":
    return optax.sgd(learning_rate, momentum=momentum)
  if name == "nesterov":
    return optax.sgd(learning_rate, momentum=momentum, nesterov=True)
  if name == "adagrad":
    return optax.adagrad(learning_rate, eps=cfg.eps)
  if name == "rmsprop":
    return optax.rmsprop(learning_rate, decay=cfg.rho, eps=cfg.eps)
  if name == "adadelta":
    return optax.adadelta(learning_rate, rho=cfg.rho, eps=cfg.eps)
  if name == "adam":
    return optax.adam(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  if name == "nadam":
    return optax.nadam(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  if name == "adamw":
    return optax.adamw(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=weight_decay)
  raise KeyError(name)


def schedule_multiplier(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """The learning-rate multiplier over training, peaking at 1.0."""
  if cfg.schedule == "constant":
    return optax.constant_schedule(1.0)
  if cfg.schedule == "cosine":
    return optax.cosine_decay_schedule(1.0, decay_steps=total_steps)
  if cfg.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=cfg.warmup_steps,
                                              decay_steps=total_steps)
  if cfg.schedule == "step":
    boundaries = {int(round(f * total_steps)): cfg.step_factor for f in cfg.step_boundaries}
    return optax.piecewise_constant_schedule(1.0, boundaries)
  raise KeyError(cfg.schedule)


def create_optimizer(cfg: ml_collections.ConfigDict, total_steps: int,
                     frozen=None) -> tuple[optax.GradientTransformation, Callable]:
  """Returns (tx, lr_multiplier): the Optax chain and its schedule (peak 1.0).

  The effective learning rate at step t is
  ``opt_state.hyperparams['learning_rate'] * lr_multiplier(t)``. `frozen` (a pytree
  of bools like the params, or a function of the params giving one) marks
  parameters whose updates are set to exactly zero, whatever the optimizer,
  weight decay or schedule.
  """
  lr_multiplier = schedule_multiplier(cfg, total_steps)

  def chain(learning_rate, momentum, weight_decay):
    parts = []
    if cfg.grad_clip_norm > 0:
      parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.weight_decay > 0 and cfg.name != "adamw":
      parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(_base_optimizer(cfg, learning_rate, momentum, weight_decay))
    parts.append(optax.scale_by_schedule(lr_multiplier))
    if frozen is not None:
      parts.append(optax.masked(optax.set_to_zero(), frozen))
    return optax.chain(*parts)

  # float32, not weakly typed: a sweep that writes its own arrays into
  # opt_state.hyperparams then hits the same compiled step.
  inject = optax.inject_hyperparams(chain, hyperparam_dtype=jnp.float32)
  tx = inject(learning_rate=cfg.learning_rate, momentum=cfg.momentum,
              weight_decay=cfg.weight_decay)
  return tx, lr_multiplier


def learning_rate(opt_state, lr_multiplier: Callable, step):
  """The effective learning rate at `step`: the peak (from the state) times the multiplier."""
  return opt_state.hyperparams["learning_rate"] * lr_multiplier(step)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the optimizer section (ConfigError)."""
  checks.choice(config, "optimizer.name", OPTIMIZERS)
  checks.choice(config, "optimizer.schedule", SCHEDULES)
  checks.number(config, "optimizer.learning_rate", 0, low_open=True)
  checks.number(config, "optimizer.momentum", 0, 1, high_open=True)
  checks.number(config, "optimizer.rho", 0, 1, low_open=True, high_open=True)
  checks.number(config, "optimizer.b1", 0, 1, high_open=True)
  checks.number(config, "optimizer.b2", 0, 1, high_open=True)
  checks.number(config, "optimizer.eps", 0, low_open=True)
  checks.number(config, "optimizer.weight_decay", 0)
  checks.number(config, "optimizer.grad_clip_norm", 0)
  checks.number(config, "optimizer.warmup_steps", 0, integer=True)
  checks.number(config, "optimizer.step_factor", 0, low_open=True)
  for value in config.optimizer.step_boundaries:
    if not isinstance(value, (int, float)) or not 0 < value < 1:
      raise ConfigError("optimizer.step_boundaries", tuple(config.optimizer.step_boundaries),
                        "fractions of training strictly between 0 and 1")
