"""Dataset sources: name -> (train, test) uint8 NHWC images and int labels.

Every source returns raw pixels as uint8 so the whole split can sit on the
device cheaply; normalization happens inside the compiled step.
"""

import dataclasses
import gzip
import importlib.util
import os
from typing import Callable, Tuple

import ml_collections
import numpy as np

from vgg_jax.errors import ConfigError

Split = Tuple[np.ndarray, np.ndarray]  # (uint8 [n, h, w, c], int32 [n])


@dataclasses.dataclass(frozen=True)
class Source:
  """How to load one dataset, and what it looks like without loading it."""
  load: Callable[[ml_collections.ConfigDict], Tuple[Split, Split]]
  image_shape: Callable[[ml_collections.ConfigDict], Tuple[int, int, int]]
  description: str


def digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits as its load_digits gives them: images float64
  [1797, 8, 8] in 0..16, labels int.

  Read from the package's own digits.csv.gz the way load_digits reads it, but
  without importing scikit-learn, which took 1.2 s of a digits run's 2.5 s
  of imports; load_digits itself where the file is not where this version
  of scikit-learn keeps it.
  """
  spec = importlib.util.find_spec("sklearn")
  roots = list(spec.submodule_search_locations or []) if spec else []
  paths = [os.path.join(r, "datasets", "data", "digits.csv.gz") for r in roots]
  path = next((p for p in paths if os.path.isfile(p)), None)
  if path is None:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    return digits.images, digits.target
  with gzip.open(path, "rt", encoding="utf-8") as f:
    data = np.loadtxt(f, delimiter=",")
  return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def load_digits(config: ml_collections.ConfigDict) -> Tuple[Split, Split]:
  """scikit-learn's bundled 8x8 digits (1,797 images, offline).

  The test split is a fixed stratified-by-shuffle fraction, independent of
  config.seed, so every seed is scored on the same images.
  """
  digit_images, digit_labels = digits_arrays()
  # Values are 0..16; map onto 0..255 so digits looks like every other source.
  images = np.round(digit_images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digit_labels.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  num_test = int(round(len(labels) * config.test_fraction))
  if not 0 < num_test < len(labels):
    raise ConfigError("dataset.test_fraction", config.test_fraction,
                      f"a fraction that holds out between 1 and {len(labels) - 1} of the "
                      f"{len(labels)} digits")
  test, train = order[:num_test], order[num_test:]
  return (images[train], labels[train]), (images[test], labels[test])


def load_synthetic(config: ml_collections.ConfigDict) -> Tuple[Split, Split]:
  """Learnable random data: one random prototype per class, plus noise.

  The data depend only on the synthetic config, never on config.seed.
  """
  cfg = config.synthetic
  rng = np.random.default_rng(1234)
  shape = tuple(cfg.image_shape)
  prototypes = rng.uniform(0, 255, size=(cfg.num_classes,) + shape)

  prototypes = prototypes.astype(np.float32)

  def make(n):
    labels = rng.integers(0, cfg.num_classes, size=n).astype(np.int32)
    images = rng.standard_normal((n,) + shape, dtype=np.float32)
    images *= 64.0
    images += prototypes[labels]
    np.clip(images, 0, 255, out=images)
    return images.astype(np.uint8), labels

  return make(cfg.num_train), make(cfg.num_test)


SOURCES = {
    "digits": Source(load_digits, lambda c: (8, 8, 1),
                     "scikit-learn's bundled 8x8 handwritten digits"),
    "synthetic": Source(load_synthetic, lambda c: tuple(c.synthetic.image_shape),
                        "random prototypes plus noise"),
}
