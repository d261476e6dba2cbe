"""Streaming pipeline for datasets that do not fit in memory (imagenet2012,
cats_vs_dogs at 224): tf.data from TFDS, sharded per process, with parallel
decode and augmentation and prefetch to the device.

The iterator's state is (epoch, position), a function of the checkpointed
step: epoch e is read in an order keyed on (seed, e) (file shuffle and
shuffle buffer both seeded), and a resumed run rebuilds that epoch and skips
the examples already seen before decoding them. So a resumed run sees the
same order without storing a shuffle buffer in the checkpoint.
"""

import dataclasses
import logging
import re
from typing import Dict, Iterator, Optional, Tuple

import jax
import numpy as np

from vgg_jax.data import tfds_source, transforms
from vgg_jax.data.dataset import DatasetInfo

logger = logging.getLogger(__name__)


def _sub_split(b, split: str, lo: float, hi: float) -> str:
  """The [lo, hi) fraction of `split` (which may itself be sliced) as a TFDS split."""
  match = re.fullmatch(r"(\w+)(?:\[(-?\d*)(%?):(-?\d*)(%?)\])?", split)
  base = match.group(1)
  total = tfds_source.num_examples(b, base)
  if total is None:  # Unknown size (e.g. mocked data): use the split as is.
    return split

  def bound(value, pct, default):
    if value in (None, ""):
      return default
    v = int(value) * total // 100 if pct else int(value)
    return v + total if v < 0 else v

  start = bound(match.group(2), match.group(3), 0)
  end = bound(match.group(4), match.group(5), total)
  size = end - start
  return f"{base}[{start + int(round(lo * size))}:{start + int(round(hi * size))}]"


@dataclasses.dataclass
class StreamingDataset:
  info: DatasetInfo
  builder: object
  splits: Dict[str, str]  # Our split name -> TFDS split string.
  num_examples: Dict[str, int]
  config: object  # The dataset config.
  classes: Tuple[int, ...]

  @classmethod
  def create(cls, config, spec: "tfds_source.TfdsSource", b, source: str) -> "StreamingDataset":
    names = spec.class_names(config) or tuple(b.info.features["label"].names)
    classes = transforms.class_ids(config, names)
    train = spec.train_split
    splits = {"test": spec.test_split}
    if config.validation_fraction > 0:
      splits["validation"] = _sub_split(b, train, 1 - config.validation_fraction, 1.0)
      train = _sub_split(b, train, 0.0, 1 - config.validation_fraction)
    splits["train"] = train
    self = cls(None, b, splits, {}, config, classes)
    self.num_examples = {s: self._count(s) for s in splits}
    if config.num_train_examples > 0:
      transforms.check_subset(config, self.num_examples["train"])
      self.num_examples["train"] = config.num_train_examples
    h, w, c = transforms.shape_after(config, spec.image_shape)
    mean, std = transforms.mean_std(config, spec.mean_std, None, c)
    out_names = tuple(names[i] for i in classes) if classes else tuple(names)
    self.info = DatasetInfo(config.name, len(out_names), out_names, (h, w, c), mean, std,
                            source + " (streaming)")
    logger.info("streaming %s: %s", config.name,
                ", ".join(f"{s} {n} ({splits[s]})" for s, n in self.num_examples.items()))
    return self

  @property
  def num_train(self) -> int:
    return self.num_examples["train"]

  def _count(self, split: str) -> int:
    if not self.classes:
      n = tfds_source.num_examples(self.builder, self.splits[split])
      if n is not None:
        return n
    # A class subset (or unknown metadata) needs one pass over the labels.
    ds = self._raw(self.splits[split], shuffle_seed=None)
    return int(ds.reduce(0, lambda count, _: count + 1).numpy())

  def _raw(self, split: str, shuffle_seed: Optional[int]):
    """Examples with undecoded images (cheap to skip), class subset applied."""
    tf, tfds = tfds_source.import_tf()
    split = tfds.split_for_jax_process(split) if jax.process_count() > 1 else split
    # A training subset must be the same examples every epoch: read it in file
    # order and let the shuffle buffer do the shuffling.
    shuffle_files = shuffle_seed is not None and self.config.num_train_examples <= 0
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed) if shuffle_files else None
    ds = self.builder.as_dataset(split=split, shuffle_files=shuffle_files,
                                 read_config=read_config,
                                 decoders={"image": tfds.decode.SkipDecoding()})
    keep, _ = tfds_source.class_filter(self.classes)
    if keep is not None:
      ds = ds.filter(keep)
    del tf
    return ds

  def _example_fn(self):
    fn = tfds_source.example_fn(self.builder, image_size=self.config.image_size,
                                channels=self.config.channels, decode=True)
    _, relabel = tfds_source.class_filter(self.classes)
    return fn, relabel

  def train_batches(self, batch_size: int, seed: int, start_step: int) -> Iterator[dict]:
    """Host batches forever from global step start_step, epoch by epoch."""
    tf, tfds = tfds_source.import_tf()
    steps_per_epoch = self.num_train // batch_size
    fn, relabel = self._example_fn()
    padding, flip = self.config.crop_padding, self.config.flip
    step = start_step
    while True:
      epoch, index = divmod(step, steps_per_epoch)
      epoch_seed = int(np.random.default_rng([seed, epoch]).integers(2**31 - 1))
      ds = self._raw(self.splits["train"], shuffle_seed=epoch_seed)
      ds = ds.take(self.num_train).shuffle(self.config.shuffle_buffer, seed=epoch_seed)
      ds = ds.skip(index * batch_size).enumerate(start=index * batch_size)

      def prepare(i, example, epoch_seed=epoch_seed):
        image, label = fn(example)
        if relabel is not None:
          image, label = relabel(image, label)
        seed_pair = tf.stack([tf.constant(epoch_seed, tf.int64), i])
        return {"image": _augment(tf, image, seed_pair, padding, flip), "label": label}

      ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
      yield from tfds.as_numpy(ds)
      step = (epoch + 1) * steps_per_epoch

  def eval_batches(self, split: str, batch_size: int) -> Iterator[Tuple[dict, np.ndarray]]:
    tf, tfds = tfds_source.import_tf()
    fn, relabel = self._example_fn()
    ds = self._raw(self.splits[split], shuffle_seed=None).map(
        fn, num_parallel_calls=tf.data.AUTOTUNE)
    if relabel is not None:
      ds = ds.map(relabel)
    for images, labels in tfds.as_numpy(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)):
      n = len(labels)
      mask = np.zeros(batch_size, np.float32)
      mask[:n] = 1
      if n < batch_size:  # Pad the last batch so the eval step compiles once.
        idx = np.minimum(np.arange(batch_size), n - 1)
        images, labels = images[idx], labels[idx]
      yield {"image": images, "label": labels}, mask


def _augment(tf, image, seed, padding: int, flip: bool):
  if padding:
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    image = tf.image.stateless_random_crop(padded, shape, seed=seed)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, seed=seed + 1)
  return image


def prefetch_to_device(batches: Iterator[dict], size: int = 2,
                       place=jax.device_put) -> Iterator[dict]:
  """Keeps `size` batches in flight to the device(s) while the step runs."""
  import collections  # pylint: disable=g-import-not-at-top
  queue = collections.deque()
  for batch in batches:
    queue.append(place(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
