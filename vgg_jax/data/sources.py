"""Dataset sources: name -> (train, test) uint8 NHWC images and int labels.

Every source returns raw pixels as uint8 so the whole split can sit on the
device cheaply; normalization happens inside the compiled step.
"""

import dataclasses
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


def load_digits(config: ml_collections.ConfigDict) -> Tuple[Split, Split]:
  """scikit-learn's bundled 8x8 digits (1,797 images, offline).

  The test split is a fixed stratified-by-shuffle fraction, independent of
  config.seed, so every seed is scored on the same images.
  """
  from sklearn import datasets  # Lazy: only digits runs pay for sklearn.

  digits = datasets.load_digits()
  # Values are 0..16; map onto 0..255 so digits looks like every other source.
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
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
