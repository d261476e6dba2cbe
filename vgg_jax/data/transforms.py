"""The host-side steps every in-memory source shares, applied once at load:
class subset, resize, grey to RGB, the held-out splits and the statistics.

Normalization and augmentation happen later, inside the compiled step
(pipeline.py).
"""

import re
from typing import Dict, Optional, Sequence, Tuple

import ml_collections
import numpy as np

from vgg_jax.data.dataset import Dataset, DatasetInfo, MeanStd, Split
from vgg_jax.errors import ConfigError, DataError

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def hold_out(n: int, num: int, *, key: str, value, of: str, too_few: str,
             zero_allowed: bool = False, sort: bool = True) -> Tuple[np.ndarray, np.ndarray]:
  """(held, rest) indices: a fixed, seed-independent carve of `num` of `n`
  examples, so that every seed is scored on the same ones.

  `key=value` is the config entry that asked for it, named when `num` would
  leave either side empty (zero_allowed: the key may also be 0, for no
  split); `too_few` is the error when n < 2. digits keeps
  its permuted order (sort=False), as its first version did, so that its
  results stay comparable.
  """
  if n < 2:
    raise DataError(too_few)
  if not 0 < num < n:
    zero = "0 (no validation split), or " if zero_allowed else ""
    raise ConfigError(key, value, f"{zero}a fraction that holds out between 1 and {n - 1} of "
                      f"the {n} {of}")
  order = np.random.default_rng(0).permutation(n)
  held, rest = order[:num], order[num:]
  return (np.sort(held), np.sort(rest)) if sort else (held, rest)


def with_test(config: ml_collections.ConfigDict, splits: Dict[str, Split]) -> Dict[str, Split]:
  """Holds out dataset.test_fraction of train as test where the source has no test split."""
  if "test" in splits:
    return splits
  x, y = splits["train"]
  num = max(1, int(round(len(y) * config.test_fraction)))
  test, train = hold_out(
      len(y), num, key="dataset.test_fraction", value=config.test_fraction, of="examples",
      too_few=f"{config.name} has {len(y)} example and no test split: too few to hold one "
      "out; add data, or give a test split")
  return {"train": (x[train], y[train]), "test": (x[test], y[test])}


def carve(config: ml_collections.ConfigDict, splits: Dict[str, Split]) -> Dict[str, Split]:
  """Validation split and training subset, from fixed (seed-independent) orders."""
  x, y = splits["train"]
  if config.validation_fraction > 0:
    val, rest = hold_out(
        len(y), int(round(len(y) * config.validation_fraction)),
        key="dataset.validation_fraction", value=config.validation_fraction,
        of="training examples", zero_allowed=True,
        too_few=f"{config.name} has {len(y)} training example: too few to hold out a "
        "validation split; add data, or set dataset.validation_fraction=0")
    splits = {**splits, "validation": (x[val], y[val])}
    x, y = x[rest], y[rest]
  if config.num_train_examples > 0:
    check_subset(config, len(y))
    keep = np.sort(np.random.default_rng(1).permutation(len(y))[:config.num_train_examples])
    x, y = x[keep], y[keep]
  return {**splits, "train": (x, y)}


def check_subset(config: ml_collections.ConfigDict, num_train: int) -> None:
  """dataset.num_train_examples must not ask for more than training has."""
  if config.num_train_examples > num_train:
    raise ConfigError("dataset.num_train_examples", config.num_train_examples,
                      f"-1 or at most the {num_train} training examples")


def canonical(name: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def class_ids(config: ml_collections.ConfigDict,
              names: Optional[Tuple[str, ...]]) -> Tuple[int, ...]:
  """dataset.classes as class ids; entries may be ids or names ('sneaker')."""
  wanted = tuple(config.classes)
  allowed = (f"() or at least 2 distinct class ids or names of {config.name}" +
             (f": {', '.join(canonical(n) for n in names[:12])}" if names else ""))
  ids = []
  for c in wanted:
    if isinstance(c, int) and not isinstance(c, bool):
      ok = names is None or 0 <= c < len(names)
      ids.append(c)
    elif isinstance(c, str) and names is not None and canonical(c) in map(canonical, names):
      ids.append([canonical(n) for n in names].index(canonical(c)))
      ok = True
    else:
      ok = False
    if not ok:
      raise ConfigError("dataset.classes", wanted, allowed)
  if wanted and (len(ids) < 2 or len(set(ids)) != len(ids)):
    raise ConfigError("dataset.classes", wanted, allowed)
  return tuple(ids)


def shape_after(config: ml_collections.ConfigDict,
                native: Tuple[Optional[int], ...]) -> Tuple[Optional[int], ...]:
  """The shape the model sees, from the stored one: resized to
  dataset.image_size, with dataset.channels. A user's features (not
  [h, w, c]) stay as they are."""
  if len(native) != 3:
    return tuple(native)
  h, w, c = native
  if config.image_size:
    h = w = config.image_size
  return (h, w, config.channels or c)


def select_classes(images, labels, classes: Sequence[int]):
  """Keeps only `classes` and relabels them 0..k-1 in the given order."""
  remap = np.full(max(int(labels.max()), max(classes)) + 1, -1, np.int32)
  remap[list(classes)] = np.arange(len(classes))
  new = remap[labels]
  keep = new >= 0
  return images[keep], new[keep]


def resize(images: np.ndarray, size: int) -> np.ndarray:
  if images.shape[1:3] == (size, size):
    return images
  import jax  # pylint: disable=g-import-not-at-top  # Runs once, on the host CPU.
  with jax.default_device(jax.devices("cpu")[0]):
    out = jax.image.resize(images.astype(np.float32),
                           (images.shape[0], size, size, images.shape[3]), "bilinear")
    if images.dtype != np.uint8:
      return np.asarray(out, np.float32)
    return np.asarray(np.clip(np.round(out), 0, 255)).astype(np.uint8)


def mean_std(config: ml_collections.ConfigDict, published: Optional[MeanStd],
             train_images: Optional[np.ndarray], channels: int) -> MeanStd:
  """Per-channel normalization statistics for dataset.normalization: the
  dataset's published ones (auto, where it has them), ImageNet's, unit, or
  computed from train (auto otherwise; needs the images in memory)."""
  kind = config.normalization
  if kind == "auto":
    kind = "dataset" if published else "computed"
  if kind == "unit":
    mean, std = (0.0,), (1.0,)
  elif kind == "imagenet":
    mean, std = IMAGENET_MEAN_STD
  elif kind == "dataset":
    mean, std = published
  else:
    return _computed(train_images)
  if len(mean) == 1 and channels > 1:
    mean, std = mean * channels, std * channels
  return tuple(mean), tuple(std)


def _computed(train_images: np.ndarray) -> MeanStd:
  if train_images.dtype != np.uint8:  # A user's float features: exact moments per channel.
    x = train_images.reshape(-1, train_images.shape[-1]).astype(np.float64)
    std = x.std(axis=0)
    std[std < 1e-12] = 1.0  # A constant feature: left at 0 after centring.
    return tuple(float(v) for v in x.mean(axis=0)), tuple(float(v) for v in std)
  # uint8 has 256 values: a histogram per channel gives exact moments
  # without a float copy of the whole split.
  mean, std = [], []
  levels = np.arange(256) / 255.0
  for c in range(train_images.shape[-1]):
    hist = np.bincount(train_images[..., c].ravel(), minlength=256) / train_images[..., c].size
    m = float(hist @ levels)
    mean.append(m)
    std.append(max(float(np.sqrt(hist @ (levels - m) ** 2)), 1e-3))
  return tuple(mean), tuple(std)


def finish(config: ml_collections.ConfigDict, splits: Dict[str, Split],
           class_names: Optional[Tuple[str, ...]], source: str, *,
           published: Optional[MeanStd] = None, subset_done: bool = False,
           resized: bool = False) -> Dataset:
  """The shared tail of every in-memory source: subset, resize, channels,
  carve, statistics."""
  classes = class_ids(config, class_names)
  if classes and not subset_done:
    splits = {s: select_classes(x, y, classes) for s, (x, y) in splits.items()}
  if classes:
    class_names = tuple(class_names[c] for c in classes) if class_names else None
  if config.image_size and not resized and splits["train"][0].ndim == 4:
    splits = {s: (resize(x, config.image_size), y) for s, (x, y) in splits.items()}
  if (config.channels and splits["train"][0].ndim == 4 and
      config.channels != splits["train"][0].shape[-1]):
    splits = {s: (np.repeat(x, config.channels, axis=-1), y) for s, (x, y) in splits.items()}
  splits = carve(config, splits)
  count = len(class_names) if class_names else int(splits["train"][1].max()) + 1
  names = class_names or tuple(str(i) for i in range(count))
  train_images = splits["train"][0]
  mean, std = mean_std(config, published, train_images, train_images.shape[-1])
  info = DatasetInfo(config.name, count, tuple(names), tuple(train_images.shape[1:]), mean, std,
                     source)
  return Dataset(info, splits)
