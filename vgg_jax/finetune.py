"""Fine-tuning a VGG from ImageNet weights: pretrained init, frozen layers, cached features.

The seed's headline: take ImageNet-trained VGG16, replace the last layer,
train only that on cats vs dogs for one epoch. Here that is config:

    model.pretrained = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    model.freeze = "all_but_head"     # or "conv": train fc1, fc2 and the head
    model.cache_features = True       # run the frozen base once, not every epoch

Freezing goes through the optimizer (optax.masked(set_to_zero)): frozen
updates are exactly zero whatever the optimizer or weight decay. With cached
features the frozen base runs once over every split (eval mode), the
features are kept in workdir/features.npz, and training continues on a
VGGClassifier holding only the trainable layers, under the same names.
"""

import dataclasses
import hashlib
import json
import logging
import os
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vgg_jax import checks, data, pretrained
from vgg_jax.errors import ConfigError
from vgg_jax.models import components
from vgg_jax.models.vgg import VGGClassifier

logger = logging.getLogger(__name__)
FEATURES_FILE = "features.npz"


# model.freeze: nothing; the conv base (train fc1, fc2 and the head); all but the head.
FREEZES = ("none", "conv", "all_but_head")
PRETRAINED_LAYERS = ("all", "conv")


def validate(config: ml_collections.ConfigDict) -> None:
  """model.pretrained, freeze and cache_features: which combinations can work."""
  checks.choice(config, "model.freeze", FREEZES)
  checks.choice(config, "model.pretrained_layers", PRETRAINED_LAYERS)
  m = config.model
  if (m.pretrained or m.freeze != "none") and m.name == "mlp":
    raise ConfigError("model.name", m.name, "a VGG (vgg11/13/16/19) with model.pretrained or "
                      "model.freeze")
  if m.pretrained and (m.batch_norm or m.width_multiplier != 1.0):
    raise ConfigError("model.width_multiplier" if m.width_multiplier != 1.0 else
                      "model.batch_norm", m.width_multiplier if m.width_multiplier != 1.0
                      else m.batch_norm, "1.0 and no batch norm: ImageNet VGG weights are "
                      "full width without BN")
  if m.freeze != "none" and not m.pretrained:
    raise ConfigError("model.pretrained", m.pretrained, "a Keras .h5 or torchvision .pth/"
                      ".safetensors weights file when model.freeze is set (a frozen random "
                      "base learns nothing); get one from keras.applications or torchvision "
                      "on a machine with network")
  if m.cache_features:
    if m.freeze == "none":
      raise ConfigError("model.cache_features", True, "False unless model.freeze is conv or "
                        "all_but_head (only a frozen base's features can be cached)")
    if config.dataset.crop_padding or config.dataset.flip:
      raise ConfigError("model.cache_features", True, "False with augmentation (crop_padding, "
                        "flip): cached features see each image once")
    if config.dataset.pipeline != "memory":
      raise ConfigError("dataset.pipeline", config.dataset.pipeline, "memory with "
                        "model.cache_features (features are computed from in-memory arrays)")


def is_conv(layer: str) -> bool:
  return layer.startswith(("conv", "bn"))


def frozen_fn(freeze: str) -> Optional[Callable]:
  """params -> a pytree of bools (True: frozen), for optim.create_optimizer."""
  if freeze == "none":
    return None

  def mask(params):
    return {layer: jax.tree.map(lambda _: is_conv(layer) if freeze == "conv" else layer != "head",
                                sub) for layer, sub in params.items()}

  return mask


def load_pretrained(model_config: ml_collections.ConfigDict, params,
                    num_channels: int) -> Tuple[Dict, dict]:
  """The pretrained layers that fit `params` (arrays or shapes), and the
  preprocessing they expect. Read once; merge() puts them into any init."""
  path = model_config.pretrained
  if num_channels != 3:
    raise ConfigError("dataset.channels", num_channels, "3 for ImageNet weights (set "
                      "dataset.channels=3 to repeat grey images over RGB)")
  imported, preprocessing = pretrained.load(path, model_config.name)
  if model_config.pretrained_layers == "conv":
    imported = {k: v for k, v in imported.items() if is_conv(k)}
  if "head" in imported and imported["head"]["kernel"].shape != params["head"]["kernel"].shape:
    logger.info("new head: %d classes instead of the weights' %d",
                params["head"]["kernel"].shape[1], imported["head"]["kernel"].shape[1])
    del imported["head"]
  pretrained.check_shapes(imported, params, path,
                          only_conv=model_config.pretrained_layers == "conv")
  layers = {layer: {k: jnp.asarray(v) for k, v in arrays.items()}
            for layer, arrays in imported.items()}
  logger.info("pretrained %s: %d layers from %s (%s preprocessing)", model_config.name,
              len(layers), path, preprocessing["name"])
  return layers, preprocessing


def merge(params, layers: Dict) -> Dict:
  """params with the pretrained layers put in."""
  return {**params, **layers}


def _cache_key(config, cut: str, seed: Optional[int]) -> str:
  path = config.model.pretrained
  stat = os.stat(path) if path and os.path.exists(path) else None
  key = {"weights": path, "size": stat.st_size if stat else None,
         "mtime": stat.st_mtime if stat else None, "model": config.model.to_dict(),
         "dataset": config.dataset.to_dict(), "cut": cut, "seed": seed}
  return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def cache_features(config, dataset, model, params, preprocess, workdir: str,
                   seed: Optional[int] = None):
  """The Dataset of a frozen base's outputs: `model` with `params` run once
  per split in eval mode, saved to workdir/features.npz and reused while the
  config, weights file (and `seed`, for a base with random layers) match."""
  cut = cut_for(config.model)
  key = _cache_key(config, cut, seed)
  path = os.path.join(workdir, FEATURES_FILE)
  features = None
  if os.path.exists(path):
    with np.load(path) as cached:
      if str(cached["key"]) == key:
        features = {s: (cached[f"{s}_x"], cached[f"{s}_y"]) for s in dataset.splits}
        logger.info("features from %s", path)
  if features is None:
    base = jax.jit(lambda p, x: model.apply({"params": p}, preprocess(x), train=False, cut=cut))
    features = {}
    for split, (x, y) in dataset.splits.items():
      out = [np.asarray(base(params, x[i:i + config.eval_batch_size]))
             for i in range(0, len(y), config.eval_batch_size)]
      features[split] = (np.concatenate(out).astype(np.float32), y)
      logger.info("cached %s features of %d %s examples", features[split][0].shape[1:],
                  len(y), split)
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      tmp = path + ".tmp.npz"
      np.savez(tmp, key=key, **{f"{s}_x": f[0] for s, f in features.items()},
               **{f"{s}_y": f[1] for s, f in features.items()})
      os.replace(tmp, path)
  dim = features["train"][0].shape[1:]
  info = dataclasses.replace(dataset.info, image_shape=tuple(dim), mean=(0.0,), std=(1.0,),
                             source=dataset.info.source + f", cached {cut} features")
  return data.Dataset(info, features)


def cut_for(model_config) -> str:
  return "conv" if model_config.freeze == "conv" else "fc"


def classifier_for(model_config, num_outputs: int, dtype: str = "float32") -> VGGClassifier:
  """The module that trains on cached features: the VGG's layers after the
  cut, with the VGG's activation, init and compute dtype."""
  return VGGClassifier(num_outputs=num_outputs,
                       classifier_sizes=tuple(model_config.classifier_sizes),
                       dropout_rate=model_config.dropout_rate,
                       activation=model_config.activation,
                       kernel_init=model_config.kernel_init,
                       dtype=components.DTYPES[dtype], start=cut_for(model_config))


def classifier_layers(model_config):
  names = [f"fc{j}" for j in range(1, len(model_config.classifier_sizes) + 1)]
  return (names if cut_for(model_config) == "conv" else []) + ["head"]
