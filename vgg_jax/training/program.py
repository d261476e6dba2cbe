"""The program builder: what a config compiles into, built once.

    program = build(config, dataset_info, total_steps)

gives the model, head, Optax chain (with the frozen mask), preprocessing,
train step and eval step, and the pretrained layers to start from. Fine-
tuning is handled here and only here:

- model.pretrained: the weights file is read once; every member's init
  (its own seed) gets the pretrained layers put in, and the inputs are
  normalized the way the weights expect;
- model.freeze: frozen layers get exactly zero updates, through the optimizer;
- model.cache_features: the trainable module is the VGG's classifier alone,
  on the frozen base's features, which `features_dataset` computes once.

Single runs, sweep members and inference all build their state here, so
they cannot drift apart.
"""

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vgg_jax import data, finetune, models, optim
from vgg_jax.errors import ConfigError
from vgg_jax.models import components
from vgg_jax.training import steps

PMAP_AXIS = "devices"
# Values a member of a sweep group may change without recompiling: they live
# in the optimizer state (optax.inject_hyperparams) or only pick the init.
INJECTED = ("learning_rate", "momentum", "weight_decay")
INJECTED_KEYS = ("seed",) + tuple(f"optimizer.{name}" for name in INJECTED)


@dataclasses.dataclass(frozen=True)
class Program:
  """Everything compiled from one config; members differ only in injected values."""
  config: ml_collections.ConfigDict
  head: models.Head
  full_model: nn.Module  # The whole network, as inference sees it.
  model: nn.Module  # What trains: the whole network, or its classifier on cached features.
  tx: optax.GradientTransformation
  lr_multiplier: Callable  # The schedule: step -> multiplier of the peak learning rate.
  image_info: data.DatasetInfo  # The images, normalized as the (pretrained) weights expect.
  input_shape: Tuple[int, ...]  # What `model` takes: the image, or the cached features.
  pretrained_layers: Optional[Dict[str, Any]]
  train_step: Callable  # (state, batch) -> (state, metrics); takes axis_name under pmap.
  eval_step: Callable  # (state, batch, mask) -> sums of loss, correct, count.
  eval_preprocess: Callable  # Inputs as the eval step sees them (no augmentation).

  @property
  def cached(self) -> bool:
    return bool(self.config.model.cache_features)

  def full_params(self, seed: int) -> Dict[str, Any]:
    """The whole network's initial params for `seed`, with the pretrained layers in."""
    variables = steps.init_variables(jax.random.PRNGKey(seed), self.full_model,
                                     self.image_info.image_shape)
    params = variables["params"]
    return params if self.pretrained_layers is None else finetune.merge(
        params, self.pretrained_layers)

  def create_state(self, member: Optional[ml_collections.ConfigDict] = None) -> steps.TrainState:
    """A member's initial state: its seed's init and its injected optimizer values."""
    member = member or self.config
    rng = jax.random.PRNGKey(member.seed)
    params = batch_stats = None
    if self.cached:
      full = self.full_params(member.seed)
      params = {k: full[k] for k in finetune.classifier_layers(self.config.model)}
    elif self.pretrained_layers is not None:
      variables = steps.init_variables(rng, self.full_model, self.image_info.image_shape)
      params = finetune.merge(variables["params"], self.pretrained_layers)
      batch_stats = variables.get("batch_stats")
    state = steps.create_train_state(rng, self.model, self.tx, self.input_shape, params=params,
                                     batch_stats=batch_stats)
    for name in INJECTED:
      state.opt_state.hyperparams[name] = jnp.asarray(member.optimizer[name], jnp.float32)
    return state

  def features_dataset(self, dataset: data.Dataset, workdir: str,
                       seeds: Sequence[int]) -> data.Dataset:
    """With model.cache_features, the frozen base's outputs as a Dataset; else dataset.

    The base runs once, with the first seed's params; members with other
    seeds share those features only if every base layer is pretrained.
    """
    if not self.cached:
      return dataset
    params = self.full_params(seeds[0])
    trained = set(finetune.classifier_layers(self.config.model))
    random_base = sorted(k for k in params if k not in trained
                         and k not in (self.pretrained_layers or {}))
    if len(set(seeds)) > 1 and random_base:
      raise ConfigError("model.cache_features", True,
                        f"False for a sweep over seeds: frozen layers {random_base} are not in "
                        "the weights file, so each seed's base (and its features) differs")
    preprocess = steps.make_preprocess(self.image_info.mean, self.image_info.std,
                                       components.DTYPES[self.config.dtype])
    # A base with randomly initialized layers depends on the seed, and so do its features.
    return finetune.cache_features(self.config, dataset, self.full_model, params, preprocess,
                                   workdir, seed=seeds[0] if random_base else None)


def build(config: ml_collections.ConfigDict, info: data.DatasetInfo, total_steps: int, *,
          pmap: bool = False, augment: bool = True) -> Program:
  """The Program of `config` for a dataset described by `info`.

  pmap: BatchNorm averages its statistics over the pmap axis. augment:
  crops and flips in the step (the streaming pipeline augments in tf.data).
  """
  head = models.get_head(config.head)
  num_outputs = head.num_outputs(info.num_classes)
  full = models.create_model(config.model, num_outputs, config.dtype,
                             bn_axis_name=PMAP_AXIS if pmap else None)
  example = jax.ShapeDtypeStruct((1,) + tuple(info.image_shape), jnp.float32)
  layers = None
  if config.model.pretrained:
    shapes = jax.eval_shape(functools.partial(full.init, train=False), jax.random.PRNGKey(0),
                            example)["params"]
    layers, weights = finetune.load_pretrained(config.model, shapes, info.image_shape[-1])
    info = dataclasses.replace(info, mean=tuple(weights["mean"]), std=tuple(weights["std"]))
  model, input_shape, mean, std = full, tuple(info.image_shape), info.mean, info.std
  frozen = finetune.frozen_fn(config.model.freeze)
  if config.model.cache_features:  # The classifier trains on the frozen base's outputs.
    model, frozen, mean, std = (finetune.classifier_for(config.model, num_outputs, config.dtype),
                                None, (0.0,), (1.0,))
    cut = finetune.cut_for(config.model)
    features = jax.eval_shape(
        lambda x: full.init_with_output(jax.random.PRNGKey(0), x, train=False, cut=cut)[0],
        example)
    input_shape = tuple(features.shape[1:])
  tx, lr_multiplier = optim.create_optimizer(config.optimizer, total_steps, frozen)
  dtype = components.DTYPES[config.dtype]
  augmentation = dict(crop_padding=config.dataset.crop_padding,
                      flip=config.dataset.flip) if augment else {}
  eval_preprocess = steps.make_preprocess(mean, std, dtype)
  return Program(
      config=config, head=head, full_model=full, model=model, tx=tx,
      lr_multiplier=lr_multiplier, image_info=info, input_shape=input_shape,
      pretrained_layers=layers,
      train_step=functools.partial(steps.train_step, head=head, lr_multiplier=lr_multiplier,
                                   preprocess=steps.make_preprocess(mean, std, dtype,
                                                                    **augmentation)),
      eval_step=functools.partial(steps.eval_step, head=head, preprocess=eval_preprocess),
      eval_preprocess=eval_preprocess)


def total_train_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * (num_train // config.batch_size)


def resolve_batch_size(config: ml_collections.ConfigDict,
                       num_train: int, num_devices: int = 1) -> ml_collections.ConfigDict:
  """batch_size=-1 means full batch: every training example (rounded down to
  a multiple of the device count) in each step. The one place it is resolved."""
  if config.batch_size != -1:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.batch_size = num_train - num_train % num_devices
  return config
