"""The data seam: a config's dataset section -> an in-memory or streaming dataset.

Researchers name a dataset; this module finds it wherever it is (prepared
TFDS data, IDX files such as Debian's dataset-fashion-mnist, an image folder,
a TFDS download) and applies the shape-changing steps (class subset, resize,
grey to RGB, validation carve, training subset). Normalization and
augmentation happen later, inside the compiled step (pipeline.py).

Sources and what they need:
  digits, synthetic           embedded, always offline
  mnist, fashion_mnist        TFDS data, else IDX files, else a TFDS download
  cifar10, cats_vs_dogs,
  imagenet2012                TFDS data, else a TFDS download
  image_folder                dataset.path
  module:function, file.py:function, or a register()ed name
                              your own loader (user.py)
"""

import dataclasses
import logging
import re
from typing import Dict, Optional, Tuple

import ml_collections
import numpy as np

from vgg_jax.data import idx as idx_lib
from vgg_jax.data import tfds_source
from vgg_jax.data import user as user_lib
from vgg_jax.data.sources import SOURCES as EMBEDDED
from vgg_jax.data.user import register
from vgg_jax.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DATASETS = tuple(EMBEDDED) + tuple(tfds_source.SPECS) + ("image_folder",)
NORMALIZATIONS = ("auto", "computed", "unit", "imagenet")
PIPELINES = ("auto", "memory", "streaming")
# Where Debian's packages put the IDX files (apt-get install dataset-fashion-mnist).
DEBIAN_IDX_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist",
                   "mnist": "/usr/share/datasets/mnist"}
_CLASS_NAMES = {
    "digits": tuple(str(i) for i in range(10)),
    "mnist": tuple(str(i) for i in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"),
    "cats_vs_dogs": ("cat", "dog"),
}

Split = Tuple[np.ndarray, np.ndarray]  # (uint8 [n, h, w, c] or float32 [n, ...], int32 [n])


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  class_names: Tuple[str, ...]
  image_shape: Tuple[int, ...]  # What the model sees: (h, w, c), or a user's feature shape.
  mean: Tuple[float, ...]  # Per channel (last axis), in [0, 1] pixel units for uint8.
  std: Tuple[float, ...]
  source: str  # Where the data came from, for logs and reports.


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Every split in host memory (uint8 images, or a user's float features); the
  pipeline moves it to the device."""
  info: DatasetInfo
  splits: Dict[str, Split]  # train, test and maybe validation.

  @property
  def num_train(self) -> int:
    return len(self.splits["train"][1])


# ---------------------------------------------------------------- metadata


def is_user(config: ml_collections.ConfigDict) -> bool:
  """Whether dataset.name names the user's own loader rather than a built-in."""
  return config.name not in DATASETS and user_lib.is_user(config.name)


def is_image(config: ml_collections.ConfigDict) -> bool:
  """Whether the data are [h, w, c] images (all built-ins; a user's may be features)."""
  return not is_user(config) or user_lib.load(config).is_image


def native_shape(config: ml_collections.ConfigDict) -> Tuple[Optional[int], ...]:
  """(height, width, channels) of the stored images; a user loader's shape as given."""
  if is_user(config):
    return user_lib.load(config).shape
  if config.name in EMBEDDED:
    return tuple(EMBEDDED[config.name].image_shape(config))
  if config.name in tfds_source.SPECS:
    return tfds_source.SPECS[config.name].image_shape
  return (None, None, 3)  # image_folder: decoded as RGB, sizes vary.


def image_shape(config: ml_collections.ConfigDict) -> Tuple[Optional[int], ...]:
  """The shape the model will see, computed without loading any data (a user's
  loader runs once, and its arrays are kept for the run)."""
  shape = native_shape(config)
  if len(shape) != 3:  # A user's features: no resize or channel change applies.
    return tuple(shape)
  h, w, c = shape
  if config.image_size:
    h = w = config.image_size
  return (h, w, config.channels or c)


def native_class_names(config: ml_collections.ConfigDict) -> Optional[Tuple[str, ...]]:
  """Class names without reading data; None where only the data can tell."""
  if is_user(config):
    return user_lib.load(config).class_names
  if config.name == "synthetic":
    return tuple(f"class_{i}" for i in range(config.synthetic.num_classes))
  if config.name in _CLASS_NAMES:
    return _CLASS_NAMES[config.name]
  if config.name == "imagenet2012":
    return tfds_source.class_names("imagenet2012")
  return None


def _canonical(name: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def resolve_classes(config: ml_collections.ConfigDict,
                    names: Optional[Tuple[str, ...]] = None) -> Tuple[int, ...]:
  """dataset.classes as class ids; entries may be ids or names ('sneaker')."""
  names = names if names is not None else native_class_names(config)
  wanted = tuple(config.classes)
  allowed = (f"() or at least 2 distinct class ids or names of {config.name}" +
             (f": {', '.join(_canonical(n) for n in names[:12])}" if names else ""))
  ids = []
  for c in wanted:
    if isinstance(c, int) and not isinstance(c, bool):
      ok = names is None or 0 <= c < len(names)
      ids.append(c)
    elif isinstance(c, str) and names is not None and _canonical(c) in map(_canonical, names):
      ids.append([_canonical(n) for n in names].index(_canonical(c)))
      ok = True
    else:
      ok = False
    if not ok:
      raise ConfigError("dataset.classes", wanted, allowed)
  if wanted and (len(ids) < 2 or len(set(ids)) != len(ids)):
    raise ConfigError("dataset.classes", wanted, allowed)
  return tuple(ids)


def num_classes(config: ml_collections.ConfigDict) -> Optional[int]:
  """Classes after the optional subset; None if only the data can tell."""
  if config.classes:
    return len(config.classes)
  names = native_class_names(config)
  return len(names) if names is not None else None


def _mean_std(config, info_name: str, train_images: Optional[np.ndarray], channels: int):
  spec = tfds_source.SPECS.get(info_name)
  kind = config.normalization
  if kind == "auto":
    kind = "dataset" if spec and spec.mean_std else "computed"
  if kind == "unit":
    mean, std = (0.0,), (1.0,)
  elif kind == "imagenet":
    mean, std = tfds_source.IMAGENET_MEAN_STD
  elif kind == "dataset":
    mean, std = spec.mean_std
  else:
    if train_images is None:
      raise ConfigError("dataset.normalization", config.normalization,
                        "auto, unit or imagenet when streaming (computed needs all pixels)")
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
    mean, std = tuple(mean), tuple(std)
  if len(mean) == 1 and channels > 1:
    mean, std = mean * channels, std * channels
  return tuple(mean), tuple(std)


# ----------------------------------------------------------------- loading


def use_streaming(config: ml_collections.ConfigDict) -> bool:
  """The pipeline choice: 'auto' streams TFDS datasets too big for memory_limit_mb."""
  if config.pipeline != "auto":
    return config.pipeline == "streaming"
  spec = tfds_source.SPECS.get(config.name)
  if spec is None:
    return False
  h, w, c = image_shape(config)
  if h is None:
    return True
  return spec.approx_train_examples * h * w * c > config.memory_limit_mb * 2**20


def _missing(config, tried) -> DataError:
  how = ["with network, rerun with dataset.download=True (the default)"]
  if config.name in ("fashion_mnist", "mnist"):
    debian = DEBIAN_IDX_DIRS[config.name]
    if config.name == "fashion_mnist":
      how.append("offline: apt-get install dataset-fashion-mnist, then python -m "
                 f"vgg_jax.data.prepare fashion_mnist --from {debian}")
    how.append("or put the four IDX files in a directory and set dataset.idx_dir=DIR")
  if config.name in tfds_source.SPECS:
    how.append("or copy prepared TFDS data into dataset.data_dir")
  return DataError(f"dataset {config.name} not found; tried: {'; '.join(tried)}. "
                   f"To get it: {'; '.join(how)}")


def _tfds_dataset(config, tried, **kwargs):
  """A builder whose data is ready (prepared, or downloaded now), or None."""
  b = tfds_source.builder(config.name, config.data_dir)
  where = config.data_dir or "the default TFDS data_dir"
  if tfds_source.try_as_dataset(b, tfds_source.SPECS[config.name].test_split, **kwargs):
    return b
  tried.append(f"TFDS data in {where}: not prepared")
  return None


def _tfds_download(config, tried):
  if not config.download:
    tried.append("TFDS download: off (dataset.download=False)")
    return None
  b = tfds_source.builder(config.name, config.data_dir)
  ok, detail = tfds_source.network_reachable(b)
  if not ok:
    tried.append(f"TFDS download: no network ({detail})")
    return None
  logger.info("downloading %s with TFDS into %s", config.name, config.data_dir or "default")
  try:
    tfds_source.download_and_prepare(b)
  except Exception as e:  # pylint: disable=broad-except
    tried.append(f"TFDS download: failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    return None
  return b


def _idx_arrays(config, tried):
  dirs = [config.idx_dir] if config.idx_dir else [DEBIAN_IDX_DIRS[config.name]]
  for d in dirs:
    if idx_lib.find_files(d):
      return idx_lib.load_dir(d), f"IDX files in {d}"
    tried.append(f"IDX files in {d}: not found")
  return None, None


def _finish_memory(config, name, splits: Dict[str, Split], class_names_, source,
                   subset_done: bool, resized: bool) -> Dataset:
  """Shared tail of every in-memory source: subset, resize, channels, carve, stats."""
  classes = resolve_classes(config, class_names_)
  if classes and not subset_done:
    splits = {s: _select_classes(x, y, classes) for s, (x, y) in splits.items()}
  if classes:
    class_names_ = tuple(class_names_[c] for c in classes) if class_names_ else None
  if config.image_size and not resized and splits["train"][0].ndim == 4:
    splits = {s: (_resize(x, config.image_size), y) for s, (x, y) in splits.items()}
  if (config.channels and splits["train"][0].ndim == 4 and
      config.channels != splits["train"][0].shape[-1]):
    splits = {s: (np.repeat(x, config.channels, axis=-1), y) for s, (x, y) in splits.items()}
  splits = _carve(config, splits)
  count = len(class_names_) if class_names_ else int(splits["train"][1].max()) + 1
  names = class_names_ or tuple(str(i) for i in range(count))
  train_images = splits["train"][0]
  mean, std = _mean_std(config, name, train_images, train_images.shape[-1])
  info = DatasetInfo(name, count, tuple(names), tuple(train_images.shape[1:]), mean, std, source)
  return Dataset(info, splits)


def _carve(config, splits: Dict[str, Split]) -> Dict[str, Split]:
  """Validation split and training subset, from fixed (seed-independent) orders."""
  x, y = splits["train"]
  if config.validation_fraction > 0:
    order = np.random.default_rng(0).permutation(len(y))
    num_val = int(round(len(y) * config.validation_fraction))
    if len(y) < 2:
      raise DataError(f"{config.name} has {len(y)} training example: too few to hold out a "
                      "validation split; add data, or set dataset.validation_fraction=0")
    if not 0 < num_val < len(y):
      raise ConfigError("dataset.validation_fraction", config.validation_fraction,
                        f"0 (no validation split), or a fraction that holds out between 1 and "
                        f"{len(y) - 1} of the {len(y)} training examples")
    val, rest = np.sort(order[:num_val]), np.sort(order[num_val:])
    splits = {**splits, "validation": (x[val], y[val])}
    x, y = x[rest], y[rest]
  if config.num_train_examples > 0:
    if config.num_train_examples > len(y):
      raise ConfigError("dataset.num_train_examples", config.num_train_examples,
                        f"-1 or at most the {len(y)} training examples")
    keep = np.sort(np.random.default_rng(1).permutation(len(y))[:config.num_train_examples])
    x, y = x[keep], y[keep]
  return {**splits, "train": (x, y)}


def _with_test(config, splits: Dict[str, Split]) -> Dict[str, Split]:
  """Carves a fixed (seed-independent) test split where the source has none."""
  if "test" in splits:
    return splits
  x, y = splits["train"]
  order = np.random.default_rng(0).permutation(len(y))
  num_test = max(1, int(round(len(y) * config.test_fraction)))
  if len(y) < 2:
    raise DataError(f"{config.name} has {len(y)} example and no test split: too few to hold "
                    "one out; add data, or give a test split")
  if num_test >= len(y):
    raise ConfigError("dataset.test_fraction", config.test_fraction,
                      f"a fraction that holds out between 1 and {len(y) - 1} of the "
                      f"{len(y)} examples")
  test, train = np.sort(order[:num_test]), np.sort(order[num_test:])
  return {"train": (x[train], y[train]), "test": (x[test], y[test])}


def _select_classes(images, labels, classes):
  """Keeps only `classes` and relabels them 0..k-1 in the given order."""
  remap = np.full(max(int(labels.max()), max(classes)) + 1, -1, np.int32)
  remap[list(classes)] = np.arange(len(classes))
  new = remap[labels]
  keep = new >= 0
  return images[keep], new[keep]


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  if images.shape[1:3] == (size, size):
    return images
  import jax  # pylint: disable=g-import-not-at-top  # Runs once, on the host CPU.
  with jax.default_device(jax.devices("cpu")[0]):
    out = jax.image.resize(images.astype(np.float32),
                           (images.shape[0], size, size, images.shape[3]), "bilinear")
    if images.dtype != np.uint8:
      return np.asarray(out, np.float32)
    return np.asarray(np.clip(np.round(out), 0, 255)).astype(np.uint8)


def _load_tfds_memory(config, b, source) -> Dataset:
  spec = tfds_source.SPECS[config.name]
  names = native_class_names(config) or tuple(b.info.features["label"].names)
  classes = resolve_classes(config, names)
  fn = tfds_source.example_fn(b, image_size=config.image_size, channels=config.channels,
                              decode=False)
  keep, relabel = tfds_source.class_filter(classes)
  splits = {}
  for split, tfds_split in (("train", spec.train_split), ("test", spec.test_split)):
    ds = b.as_dataset(split=tfds_split, shuffle_files=False)
    splits[split] = tfds_source.read_all(ds, fn, keep, relabel)
  return _finish_memory(config, config.name, splits, names, source, subset_done=True,
                        resized=True)


def load(config: ml_collections.ConfigDict):
  """Loads config's dataset: a ``Dataset`` in memory, or a ``StreamingDataset``.

  Raises DataError listing every source tried when the data is nowhere.
  """
  name = config.name
  if is_user(config):
    user = user_lib.load(config)
    splits = _with_test(config, dict(user.splits))
    kind = "uint8 images" if splits["train"][0].dtype == np.uint8 else "float32"
    return _finish_memory(config, name, splits, user.class_names,
                          f"your loader: {kind} {list(user.shape)}",
                          subset_done=False, resized=False)
  if name in EMBEDDED:
    train, test = EMBEDDED[name].load(config)
    return _finish_memory(config, name, {"train": train, "test": test},
                          native_class_names(config), EMBEDDED[name].description,
                          subset_done=False, resized=False)
  if name == "image_folder":
    from vgg_jax.data import image_folder  # pylint: disable=g-import-not-at-top
    if not config.path:
      raise ConfigError("dataset.path", config.path, "the root directory of the image folder")
    splits, names = image_folder.load(config.path, config.image_size)
    splits = _with_test(config, splits)
    return _finish_memory(config, name, splits, names, f"image folder {config.path}",
                          subset_done=False, resized=True)

  tried = []
  streaming = use_streaming(config)
  b = _tfds_dataset(config, tried)
  if b is not None:
    source = f"TFDS {name} in {config.data_dir or 'the default data_dir'}"
  if b is None and name in DEBIAN_IDX_DIRS and not streaming:
    arrays, source = _idx_arrays(config, tried)
    if arrays is not None:
      train, test = arrays
      return _finish_memory(config, name, {"train": train, "test": test},
                            native_class_names(config), source, subset_done=False,
                            resized=False)
  if b is None:
    b = _tfds_download(config, tried)
    source = f"TFDS {name}, downloaded"
  if b is None:
    raise _missing(config, tried)
  if streaming:
    from vgg_jax.data import streaming as streaming_lib  # pylint: disable=g-import-not-at-top
    return streaming_lib.StreamingDataset.create(config, b, source)
  return _load_tfds_memory(config, b, source)
