"""Inference helpers shared by predict and visualize (no flags here).

Images from files, resized and converted like the training data; a trained
run's or an ImageNet weights file's model; class probabilities; ImageNet
class names from a file when there is one.
"""

import json
import os
from typing import List, Tuple

import numpy as np

from vgg_jax.errors import UserError

KERAS_CLASS_INDEX = os.path.expanduser("~/.keras/models/imagenet_class_index.json")


def load_images(paths: List[str], height: int, width: int, channels: int) -> np.ndarray:
  """uint8 [n, height, width, channels], resized; one line naming a bad file."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  out = []
  for path in paths:
    try:
      with Image.open(path) as img:
        img = img.convert("RGB" if channels == 3 else "L").resize((width, height),
                                                                   Image.BILINEAR)
        array = np.asarray(img, np.uint8)
    except (OSError, UnidentifiedImageError) as e:
      raise UserError(f"cannot read image {path}: {e}") from None
    out.append(array.reshape(height, width, channels))
  return np.stack(out)


def imagenet_names(path=None) -> List[str]:
  path = path or (KERAS_CLASS_INDEX if os.path.exists(KERAS_CLASS_INDEX) else None)
  if path is None:
    return [f"class {i}" for i in range(1000)]
  try:
    with open(path) as f:
      if path.endswith(".json"):
        index = json.load(f)
        return [index[str(i)][1] for i in range(len(index))]
      return [line.strip() for line in f if line.strip()]
  except (OSError, ValueError, KeyError, IndexError) as e:
    raise UserError(f"cannot read class names from {path}: {e}") from None


def run_classifier(workdir: str):
  """(apply_fn(images uint8) -> probabilities, class names, image shape) of a run."""
  from vgg_jax import train  # pylint: disable=g-import-not-at-top
  model, variables, info, head = train.restore_for_inference(workdir)
  mean, std = info["mean"], info["std"]
  probabilities = probabilities_fn(model, variables, mean, std, head)
  return probabilities, info["class_names"], tuple(info["image_shape"])


def model_from_weights(path: str, name: str):
  """(model, variables, mean, std): a VGG with ImageNet weights from a file."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vgg_jax import models, pretrained  # pylint: disable=g-import-not-at-top
  from vgg_jax.config_lib import base_config  # pylint: disable=g-import-not-at-top
  params, preprocessing = pretrained.load(path, name)
  if "head" not in params:
    raise UserError(f"{path} has no classifier (fc1, fc2, predictions): an include_top=False "
                    "file cannot predict ImageNet classes")
  config = base_config().model
  config.name = name
  model = models.create_model(config, params["head"]["bias"].shape[0])
  variables = {"params": {k: {n: jnp.asarray(a) for n, a in v.items()} for k, v in params.items()}}
  return model, variables, preprocessing["mean"], preprocessing["std"]


def imagenet_classifier(path: str, name: str, class_names=None):
  from vgg_jax import models  # pylint: disable=g-import-not-at-top
  model, variables, mean, std = model_from_weights(path, name)
  probabilities = probabilities_fn(model, variables, mean, std, models.get_head("category"))
  return probabilities, imagenet_names(class_names), (224, 224, 3)


def probabilities_fn(model, variables, mean, std, head):
  import jax  # pylint: disable=g-import-not-at-top
  from vgg_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  @jax.jit
  def probabilities(images):
    logits = model.apply(variables, pipeline.normalize(images, mean, std), train=False)
    return head.probabilities(logits)

  return lambda images: np.asarray(probabilities(images))


def top_classes(probs: np.ndarray, names, k: int) -> List[Tuple[str, float]]:
  order = np.argsort(-probs)[:k]
  return [(names[i] if i < len(names) else f"class {i}", float(probs[i])) for i in order]


