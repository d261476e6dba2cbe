"""The sources that need no download: digits and synthetic (embedded), an
image folder, and your own loader (user.py). TFDS datasets: tfds_source.py.

Every image source gives raw pixels as uint8 so the whole split can sit on
the device cheaply; normalization happens inside the compiled step.
"""

import dataclasses
import gzip
import importlib.util
import os
from typing import Callable, Optional, Tuple

import ml_collections
import numpy as np

from vgg_jax import checks
from vgg_jax.data import transforms
from vgg_jax.data import user as user_lib
from vgg_jax.data.dataset import Source, Split
from vgg_jax.errors import ConfigError


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
  n = len(labels)
  test, train = transforms.hold_out(
      n, int(round(n * config.test_fraction)), key="dataset.test_fraction",
      value=config.test_fraction, of="digits", too_few="", sort=False)
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


def validate_synthetic(config: ml_collections.ConfigDict) -> None:
  checks.number(config, "synthetic.num_train", 1, integer=True, prefix="dataset.")
  checks.number(config, "synthetic.num_test", 1, integer=True, prefix="dataset.")
  checks.number(config, "synthetic.num_classes", 2, integer=True, prefix="dataset.")
  checks.positive_ints(config, "synthetic.image_shape", allow_empty=False, prefix="dataset.")
  if len(config.synthetic.image_shape) != 3:
    raise ConfigError("dataset.synthetic.image_shape", tuple(config.synthetic.image_shape),
                      "(height, width, channels)")


@dataclasses.dataclass(frozen=True)
class Embedded(Source):
  """A dataset made here, offline: arrays(config) gives (train, test)."""
  name: str
  description: str
  arrays: Callable[[ml_collections.ConfigDict], Tuple[Split, Split]]
  names: Callable[[ml_collections.ConfigDict], Tuple[str, ...]]
  shape: Callable[[ml_collections.ConfigDict], Tuple[int, int, int]]
  check: Optional[Callable[[ml_collections.ConfigDict], None]] = None

  def class_names(self, config):
    return self.names(config)

  def native_shape(self, config):
    return self.shape(config)

  def validate(self, config):
    if self.check:
      self.check(config)

  def load(self, config):
    train, test = self.arrays(config)
    return transforms.finish(config, {"train": train, "test": test}, self.class_names(config),
                             self.description)


DIGITS = Embedded("digits", "scikit-learn's bundled 8x8 handwritten digits", load_digits,
                  lambda c: tuple(str(i) for i in range(10)), lambda c: (8, 8, 1))
SYNTHETIC = Embedded("synthetic", "random prototypes plus noise", load_synthetic,
                     lambda c: tuple(f"class_{i}" for i in range(c.synthetic.num_classes)),
                     lambda c: tuple(c.synthetic.image_shape), validate_synthetic)


class ImageFolder(Source):
  """<root>/<class>/*.jpg or <root>/<class>.<n>.jpg, optionally under train/ and test/."""
  name = "image_folder"

  def native_shape(self, config):
    return (None, None, 3)  # Decoded as RGB, sizes vary.

  def validate(self, config):
    if not config.path:
      raise ConfigError("dataset.path", config.path, "the root directory of the image folder")

  def load(self, config):
    from vgg_jax.data import image_folder  # pylint: disable=g-import-not-at-top
    splits, names = image_folder.load(config.path, config.image_size)
    splits = transforms.with_test(config, splits)
    return transforms.finish(config, splits, names, f"image folder {config.path}", resized=True)


class UserLoader(Source):
  """dataset.name names your own loader: module:function, file.py:function
  or a register()ed name (user.py). Its arrays are loaded once per process."""

  def __init__(self, name: str):
    self.name = name

  def class_names(self, config):
    return user_lib.load(config).class_names

  def native_shape(self, config):
    return user_lib.load(config).shape

  def is_image(self, config) -> bool:
    return user_lib.load(config).is_image

  def load(self, config):
    user = user_lib.load(config)
    splits = transforms.with_test(config, dict(user.splits))
    kind = "uint8 images" if splits["train"][0].dtype == np.uint8 else "float32"
    return transforms.finish(config, splits, user.class_names,
                             f"your loader: {kind} {list(user.shape)}")
