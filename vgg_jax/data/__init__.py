"""The data seam: a config's dataset section -> an in-memory ``Dataset``.

Sources (sources.py) give raw uint8 splits. This module applies the
host-side steps that change shapes (class subset, resize) and records the
normalization that the compiled step applies. Batching lives in pipeline.py.
"""

import dataclasses
from typing import Tuple

import ml_collections
import numpy as np

from vgg_jax.data.sources import SOURCES

DATASETS = tuple(SOURCES)


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train_images: np.ndarray  # uint8 [n, h, w, c]
  train_labels: np.ndarray  # int32 [n]
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: Tuple[float, ...]  # per channel, in [0, 1] pixel units
  std: Tuple[float, ...]

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])


def image_shape(config: ml_collections.ConfigDict) -> Tuple[int, int, int]:
  """The shape the model will see, computed without loading any data."""
  h, w, c = SOURCES[config.name].image_shape(config)
  if config.image_size:
    h = w = config.image_size
  return (h, w, c)


def num_classes(config: ml_collections.ConfigDict) -> int:
  """Classes after the optional subset, computed without loading any data."""
  return len(config.classes) if config.classes else SOURCES[config.name].num_classes(config)


def _select_classes(images, labels, classes):
  """Keeps only `classes` and relabels them 0..k-1 in the given order."""
  keep = np.isin(labels, classes)
  remap = {c: i for i, c in enumerate(classes)}
  return images[keep], np.array([remap[int(l)] for l in labels[keep]], np.int32)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  if images.shape[1:3] == (size, size):
    return images
  import jax  # The resize runs once at load time, on the host CPU.
  cpu = jax.devices("cpu")[0]
  with jax.default_device(cpu):
    out = jax.image.resize(images.astype(np.float32),
                           (images.shape[0], size, size, images.shape[3]), "bilinear")
    return np.asarray(np.clip(np.round(out), 0, 255)).astype(np.uint8)


def load(config: ml_collections.ConfigDict) -> Dataset:
  """Loads the dataset named by config.name with subset and resize applied."""
  (x_train, y_train), (x_test, y_test) = SOURCES[config.name].load(config)
  if config.classes:
    x_train, y_train = _select_classes(x_train, y_train, tuple(config.classes))
    x_test, y_test = _select_classes(x_test, y_test, tuple(config.classes))
  if config.image_size:
    x_train, x_test = _resize(x_train, config.image_size), _resize(x_test, config.image_size)
  pixels = x_train.reshape(-1, x_train.shape[-1]).astype(np.float64) / 255.0
  mean = tuple(float(m) for m in pixels.mean(0))
  std = tuple(float(max(s, 1e-3)) for s in pixels.std(0))
  return Dataset(config.name, x_train, y_train, x_test, y_test, num_classes(config), mean, std)
