"""TensorFlow Datasets sources: where to find each (prepared TFDS data, IDX
files, a TFDS download), and the tf.data readers.

TensorFlow is imported lazily and hidden from GPUs (JAX owns them). The
same per-example function (decode, class subset, resize, channel repeat)
feeds both the in-memory loader and the streaming pipeline, so the two see
identical pixels.
"""

import dataclasses
import logging
import socket
from typing import List, Optional, Sequence, Tuple
from urllib import parse

import numpy as np

from vgg_jax import tf_import
from vgg_jax.data import idx as idx_lib
from vgg_jax.data import transforms
from vgg_jax.data.dataset import MeanStd, Source
from vgg_jax.data.transforms import IMAGENET_MEAN_STD
from vgg_jax.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

_DIGITS = tuple(str(i) for i in range(10))


@dataclasses.dataclass(frozen=True)
class TfdsSource(Source):
  """A TFDS dataset. In memory it is read from prepared TFDS data, else from
  IDX files (idx_dir: where Debian's package puts them), else downloaded;
  streaming reads TFDS data only."""
  name: str
  train_split: str
  test_split: str
  image_shape: Tuple[Optional[int], Optional[int], int]  # None: varies per image.
  num_classes: int
  approx_train_examples: int  # For the memory-vs-streaming choice before any read.
  mean_std: Optional[MeanStd]
  names: Optional[Tuple[str, ...]] = None  # None: from the builder's metadata.
  idx_dir: str = ""

  def class_names(self, config):
    return self.names if self.names is not None else class_names(self.name)

  def native_shape(self, config):
    return self.image_shape

  def streams(self, config) -> bool:
    """dataset.pipeline; 'auto' streams what would not fit memory_limit_mb."""
    if config.pipeline != "auto":
      return config.pipeline == "streaming"
    h, w, c = transforms.shape_after(config, self.image_shape)
    if h is None:
      return True
    return self.approx_train_examples * h * w * c > config.memory_limit_mb * 2**20

  def validate(self, config):
    if self.streams(config) and config.normalization == "computed":
      raise ConfigError("dataset.normalization", config.normalization,
                        "auto, unit or imagenet when streaming (computed needs every pixel)")

  def load(self, config):
    tried: List[str] = []
    streaming = self.streams(config)
    b = _prepared(config, self.test_split, tried)
    source = f"TFDS {self.name} in {config.data_dir or 'the default data_dir'}"
    if b is None and self.idx_dir and not streaming:
      arrays, where = _idx_arrays(config, self.idx_dir, tried)
      if arrays is not None:
        train, test = arrays
        return transforms.finish(config, {"train": train, "test": test},
                                 self.class_names(config), where, published=self.mean_std)
    if b is None:
      b = _download(config, tried)
      source = f"TFDS {self.name}, downloaded"
    if b is None:
      raise self._missing(config, tried)
    if streaming:
      from vgg_jax.data import streaming as streaming_lib  # pylint: disable=g-import-not-at-top
      return streaming_lib.StreamingDataset.create(config, self, b, source)
    return self._read_into_memory(config, b, source)

  def _read_into_memory(self, config, b, source):
    names = self.class_names(config) or tuple(b.info.features["label"].names)
    classes = transforms.class_ids(config, names)
    fn = example_fn(b, image_size=config.image_size, channels=config.channels, decode=False)
    keep, relabel = class_filter(classes)
    splits = {}
    for split, tfds_split in (("train", self.train_split), ("test", self.test_split)):
      ds = b.as_dataset(split=tfds_split, shuffle_files=False)
      splits[split] = read_all(ds, fn, keep, relabel)
    return transforms.finish(config, splits, names, source, published=self.mean_std,
                             subset_done=True, resized=True)

  def _missing(self, config, tried) -> DataError:
    how = ["with network, rerun with dataset.download=True (the default)"]
    if self.idx_dir:
      if self.name == "fashion_mnist":
        how.append("offline: apt-get install dataset-fashion-mnist, then python -m "
                   f"vgg_jax.data.prepare fashion_mnist --from {self.idx_dir}")
      how.append("or put the four IDX files in a directory and set dataset.idx_dir=DIR")
    how.append("or copy prepared TFDS data into dataset.data_dir")
    return DataError(f"dataset {self.name} not found; tried: {'; '.join(tried)}. "
                     f"To get it: {'; '.join(how)}")


SOURCES = {s.name: s for s in (
    TfdsSource("mnist", "train", "test", (28, 28, 1), 10, 60_000, ((0.1307,), (0.3081,)),
               _DIGITS, idx_dir="/usr/share/datasets/mnist"),
    TfdsSource("fashion_mnist", "train", "test", (28, 28, 1), 10, 60_000,
               ((0.2860,), (0.3530,)),
               ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                "Sneaker", "Bag", "Ankle boot"),
               idx_dir="/usr/share/datasets/fashion-mnist"),  # apt-get install dataset-fashion-mnist
    TfdsSource("cifar10", "train", "test", (32, 32, 3), 10, 50_000,
               ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck")),
    # cats_vs_dogs has one split; the last 10% is held out as test.
    TfdsSource("cats_vs_dogs", "train[:90%]", "train[90%:]", (None, None, 3), 2, 20_936,
               IMAGENET_MEAN_STD, ("cat", "dog")),
    TfdsSource("imagenet2012", "train", "validation", (None, None, 3), 1000, 1_281_167,
               IMAGENET_MEAN_STD),
)}


def _prepared(config, test_split: str, tried):
  """A builder whose data is prepared, or None."""
  b = builder(config.name, config.data_dir)
  where = config.data_dir or "the default TFDS data_dir"
  if try_as_dataset(b, test_split):
    return b
  tried.append(f"TFDS data in {where}: not prepared")
  return None


def _download(config, tried):
  """A builder whose data was downloaded now, or None."""
  if not config.download:
    tried.append("TFDS download: off (dataset.download=False)")
    return None
  b = builder(config.name, config.data_dir)
  ok, detail = network_reachable(b)
  if not ok:
    tried.append(f"TFDS download: no network ({detail})")
    return None
  logger.info("downloading %s with TFDS into %s", config.name, config.data_dir or "default")
  try:
    download_and_prepare(b)
  except Exception as e:  # pylint: disable=broad-except
    tried.append(f"TFDS download: failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    return None
  return b


def _idx_arrays(config, default_dir: str, tried):
  """((train, test), where) from IDX files, or (None, None)."""
  d = config.idx_dir or default_dir
  if idx_lib.find_files(d):
    return idx_lib.load_dir(d), f"IDX files in {d}"
  tried.append(f"IDX files in {d}: not found")
  return None, None


def import_tf():
  """Returns (tf, tfds), imported quietly with TF kept off the GPUs."""
  tf = tf_import.import_tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tf, tfds


def builder(name: str, data_dir: str):
  _, tfds = import_tf()
  return tfds.builder(name, data_dir=data_dir or None)


def class_names(name: str) -> Tuple[str, ...]:
  """Label names from the builder's metadata (no data needed)."""
  return tuple(builder(name, "").info.features["label"].names)


def try_as_dataset(b, split: str, **kwargs):
  """The split as a tf.data.Dataset, or None when the data is not prepared."""
  try:
    return b.as_dataset(split=split, **kwargs)
  except AssertionError as e:  # TFDS's way of saying "could not find data in ...".
    if "could not find data" in str(e):
      return None
    raise


def network_reachable(b, timeout: float = 3.0) -> Tuple[bool, str]:
  """Fast check that a download could start (TFDS itself retries for minutes)."""
  urls = list(getattr(type(b), "url_infos", None) or {}) or ["https://storage.googleapis.com"]
  url = parse.urlparse(urls[0])
  port = url.port or (443 if url.scheme == "https" else 80)
  try:
    socket.create_connection((url.hostname, port), timeout=timeout).close()
    return True, url.hostname
  except OSError as e:
    return False, f"{url.hostname} unreachable ({e.__class__.__name__})"


def download_and_prepare(b) -> None:
  b.download_and_prepare()


def num_examples(b, split: str) -> Optional[int]:
  try:
    return int(b.info.splits[split].num_examples)
  except (KeyError, ValueError, TypeError):
    return None


def example_fn(b, *, image_size: int, channels: int, decode: bool):
  """tf function: a raw TFDS example -> (uint8 image [h, w, c], int32 label)."""
  tf, _ = import_tf()
  image_feature = b.info.features["image"]

  def fn(example):
    image = example["image"]
    if decode:
      image = image_feature.decode_example(image)
    if image_size:
      image = tf.image.resize(image, (image_size, image_size), antialias=True)
      image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    if channels == 3 and image.shape[-1] == 1:
      image = tf.repeat(image, 3, axis=-1)
    return image, tf.cast(example["label"], tf.int32)

  return fn


def class_filter(classes: Sequence[int]):
  """tf functions that keep `classes` and relabel them 0..k-1 (identity if empty)."""
  tf, _ = import_tf()
  if not classes:
    return None, None
  table = np.full(max(classes) + 1, -1, np.int32)
  table[list(classes)] = np.arange(len(classes), dtype=np.int32)
  table = tf.constant(table)

  def keep(example):
    label = tf.cast(example["label"], tf.int32)
    return tf.logical_and(label < tf.size(table), tf.gather(table, tf.minimum(
        label, tf.size(table) - 1)) >= 0)

  def relabel(image, label):
    return image, tf.gather(table, label)

  return keep, relabel


def read_all(ds, fn, keep, relabel) -> Tuple[np.ndarray, np.ndarray]:
  """Reads a whole (ordered) split into uint8 images and int32 labels."""
  tf, tfds = import_tf()
  if keep is not None:
    ds = ds.filter(keep)
  ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
  if relabel is not None:
    ds = ds.map(relabel)
  images, labels = [], []
  for x, y in tfds.as_numpy(ds.batch(1024)):
    images.append(x)
    labels.append(y)
  if not images:
    raise DataError("the split is empty after the class subset")
  return np.concatenate(images), np.concatenate(labels).astype(np.int32)
