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


def load_images(paths: List[str], *shape: int) -> np.ndarray:
  """uint8 [n, height, width, channels] for shape (height, width, channels),
  resized; one line naming a bad file."""
  if len(shape) != 3:
    raise UserError(f"this model takes features of shape {list(shape)}, not images; "
                    "predict and visualize read image files")
  height, width, channels = shape
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vgg_jax.data import image_folder  # pylint: disable=g-import-not-at-top
  out = []
  for path in paths:
    try:
      with image_folder.open_image(path) as img:
        img = image_folder.to_8bit(img, path, "RGB" if channels == 3 else "L").resize(
            (width, height), Image.BILINEAR)
        array = np.asarray(img, np.uint8)
    except image_folder.DeepImageError as e:
      raise UserError(str(e)) from None
    except Exception as e:  # pylint: disable=broad-except
      # Pillow raises many types for bad files (OSError, SyntaxError,
      # DecompressionBombError, ValueError...).
      raise UserError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
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


def _read_json_object(path: str) -> dict:
  """A JSON object from a file, or a one-line UserError naming the file."""
  try:
    with open(path, "rb") as f:
      value = json.loads(f.read().decode("utf-8"))
  except (OSError, ValueError) as e:
    raise UserError(f"{path} is damaged ({type(e).__name__}: {e})") from None
  if not isinstance(value, dict):
    raise UserError(f"{path} is damaged (it holds {type(value).__name__}, not a JSON object)")
  return value


def restore_for_inference(workdir: str):
  """(model, variables, model_info, head) from a run's newest checkpoint.

  The state is built by the training program builder, as in training. For a
  run on cached features the checkpoint holds the classifier; the frozen
  base comes from the pretrained file again, making a whole VGG.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from vgg_jax import checkpoint, config_validation, data  # pylint: disable=g-import-not-at-top
  from vgg_jax.training import program as program_lib  # pylint: disable=g-import-not-at-top
  from vgg_jax.training import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  paths = [os.path.join(workdir, f) for f in ("config.json", workdir_lib.MODEL_INFO_FILE)]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise UserError(f"{workdir} holds no trained run ({', '.join(missing)} missing)")
  config, info = (_read_json_object(p) for p in paths)
  try:
    config = ml_collections.ConfigDict(config)
    names = tuple(str(n) for n in info["class_names"])
    dataset_info = data.DatasetInfo(
        name=config.dataset.name, num_classes=len(names), class_names=names,
        image_shape=tuple(int(d) for d in info["image_shape"]),
        mean=tuple(float(m) for m in info["mean"]), std=tuple(float(s) for s in info["std"]),
        source=workdir)
    if not config.model.cache_features:  # The checkpoint has every layer: no weights file needed.
      config.model.pretrained = ""
    config_validation.validate(config)  # A one-line error naming a missing or bad key.
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise UserError(f"{workdir}: config.json or {workdir_lib.MODEL_INFO_FILE} lacks a field or "
                    f"has one of the wrong type ({type(e).__name__}: {e})") from None
  program = program_lib.build(config, dataset_info, total_steps=1)
  if not os.path.isdir(os.path.join(workdir, checkpoint.CHECKPOINT_DIR)):
    raise UserError(f"{workdir} has no checkpoint yet")
  # Read-only: a reader never cleans up, moves or deletes anything, so it can
  # read a run that is still training.
  state, step, _ = checkpoint.read_latest(workdir, program.create_state())
  if not step:
    raise UserError(f"{workdir} has no checkpoint yet")
  params = state.params
  if program.cached:
    params = {**program.full_params(config.seed), **params}
  variables = {"params": params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return program.full_model, variables, info, program.head


def run_classifier(workdir: str):
  """(apply_fn(images uint8) -> probabilities, class names, image shape) of a run."""
  model, variables, info, head = restore_for_inference(workdir)
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


