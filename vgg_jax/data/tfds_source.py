"""TensorFlow Datasets: lookup, optional download, and the tf.data readers.

TensorFlow is imported lazily and hidden from GPUs (JAX owns them). The
same per-example function (decode, class subset, resize, channel repeat)
feeds both the in-memory loader and the streaming pipeline, so the two see
identical pixels.
"""

import dataclasses
import socket
from typing import Optional, Sequence, Tuple
from urllib import parse

import numpy as np

from vgg_jax import tf_import
from vgg_jax.errors import DataError

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  tfds_name: str
  train_split: str
  test_split: str
  image_shape: Tuple[Optional[int], Optional[int], int]  # None: varies per image.
  num_classes: int
  approx_train_examples: int  # For the memory-vs-streaming choice before any read.
  mean_std: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]


SPECS = {
    "mnist": TfdsSpec("mnist", "train", "test", (28, 28, 1), 10, 60_000,
                      ((0.1307,), (0.3081,))),
    "fashion_mnist": TfdsSpec("fashion_mnist", "train", "test", (28, 28, 1), 10, 60_000,
                              ((0.2860,), (0.3530,))),
    "cifar10": TfdsSpec("cifar10", "train", "test", (32, 32, 3), 10, 50_000,
                        ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))),
    # cats_vs_dogs has one split; the last 10% is held out as test.
    "cats_vs_dogs": TfdsSpec("cats_vs_dogs", "train[:90%]", "train[90%:]", (None, None, 3), 2,
                             20_936, IMAGENET_MEAN_STD),
    "imagenet2012": TfdsSpec("imagenet2012", "train", "validation", (None, None, 3), 1000,
                             1_281_167, IMAGENET_MEAN_STD),
}


def import_tf():
  """Returns (tf, tfds), imported quietly with TF kept off the GPUs."""
  tf = tf_import.import_tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tf, tfds


def builder(name: str, data_dir: str):
  _, tfds = import_tf()
  return tfds.builder(SPECS[name].tfds_name, data_dir=data_dir or None)


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
