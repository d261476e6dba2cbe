"""The device side of the data: normalization, augmentation, in-memory batching.

In-memory pipeline: every split sits on the device as uint8. Each epoch's
order is a permutation keyed on (seed, epoch) (jax.random.permutation's); the
train step gathers its batch by index, augments it with a per-step key and
normalizes it, all inside jit, so an epoch can run as one lax.scan with no
Python per step. A run restarted at step s replays the same batches.
"""

import functools
from typing import Iterator, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import data as data_lib


def normalize(images, mean: Sequence[float], std: Sequence[float], dtype=jnp.float32):
  """uint8 pixels -> standardized floats (float inputs, e.g. cached features,
  skip the /255). Meant to run inside jit."""
  x = images.astype(jnp.float32)
  if jnp.issubdtype(images.dtype, jnp.integer):
    x = x / 255.0
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)


def random_crop_flip(images, key, padding: int, flip: bool):
  """Zero-pad by `padding`, crop back at a random offset, maybe mirror; per example."""
  n, h, w, _ = images.shape
  crop_key, flip_key = jax.random.split(key)
  if padding:
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * padding + 1)
    crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
    images = jax.vmap(crop)(padded, offsets)
  if flip:
    mirror = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
    images = jnp.where(mirror, images[:, :, ::-1, :], images)
  return images


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The data order of `epoch`: jax.random.permutation(fold_in(PRNGKey(seed),
  epoch), n), element for element.

  JAX permutes by rounds of a stable sort on fresh 32-bit random keys
  (jax._src.random.core._shuffle). The keys come from JAX here too; the
  sorts run in NumPy: 1.2 ms for 60,000 examples, where jax.random.permutation
  took 20 ms on XLA:CPU. A new epoch's order is computed on the training clock
  (a 784-32-32-10 MLP's whole epoch is 70 ms; a sweep of 8 seeds needs 8
  orders an epoch). tests/test_train.py checks the result against
  jax.random.permutation.
  """
  key = jax.random.fold_in(jax.random.PRNGKey(seed), epoch)
  rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))
  order, index = np.arange(n, dtype=np.int32), np.arange(n, dtype=np.uint64)
  for sort_keys in np.asarray(_sort_keys(key, n, rounds)):
    # A stable sort by key is a sort by (key, position): one uint64 each,
    # all distinct, so NumPy's unstable sort of them (6x its stable argsort
    # of the keys) gives the same order; the low 32 bits are the positions.
    by_key = np.sort((sort_keys.astype(np.uint64) << np.uint64(32)) | index)
    order = order[(by_key & np.uint64(0xFFFFFFFF)).astype(np.int64)]
  return order


@functools.partial(jax.jit, static_argnums=(1, 2))
def _sort_keys(key, n: int, rounds: int):
  """[rounds, n] uint32: the keys of jax.random.permutation's sort rounds."""
  keys = []
  for _ in range(rounds):
    key, subkey = jax.random.split(key)
    keys.append(jax.random.bits(subkey, (n,), jnp.uint32))
  return jnp.stack(keys) if keys else jnp.zeros((0, n), jnp.uint32)


def gather_batch(images, labels, order, index, batch_size: int, sharding=None):
  """Batch number `index` of an epoch's order. Traceable: index may be a tracer.

  With `sharding` (jit data parallel) the gathered batch is split over the
  mesh's data axis.
  """
  idx = jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size)
  batch = {"image": jnp.take(images, idx, axis=0), "label": jnp.take(labels, idx, axis=0)}
  if sharding is not None:
    batch = jax.lax.with_sharding_constraint(batch, sharding)
  return batch


class InMemoryPipeline:
  """A dataset's splits on the device, with per-epoch orders and eval batches."""

  def __init__(self, dataset: "data_lib.Dataset", batch_size: int, seed: int,
               place=jax.device_put, eval_train_examples: int = 0):
    """`place` puts a host array on the device(s): replicated for data parallel.

    eval_train_examples > 0 adds the eval split "train_eval": the first that
    many training examples, evaluated like validation and test.
    """
    self.info = dataset.info
    self.batch_size = batch_size
    self.seed = seed
    self.place = place
    splits = dict(dataset.splits)
    if eval_train_examples:
      x, y = splits["train"]
      splits["train_eval"] = (x[:eval_train_examples], y[:eval_train_examples])
    self.arrays = {s: (place(x), place(y)) for s, (x, y) in splits.items()}
    self.num_examples = {s: len(y) for s, (_, y) in splits.items()}
    self.steps_per_epoch = self.num_examples["train"] // batch_size

  def order(self, epoch: int) -> jax.Array:
    return self.place(np.asarray(epoch_permutation(self.seed, epoch, self.num_examples["train"])))

  def eval_batches(self, split: str, batch_size: int) -> Iterator[Tuple[dict, np.ndarray]]:
    images, labels = self.arrays[split]
    for batch, mask in eval_batches(images, labels, min(batch_size, self.num_examples[split])):
      yield batch, self.place(mask)


def eval_batches(images, labels, batch_size: int) -> Iterator[Tuple[dict, np.ndarray]]:
  """Yields every example once in fixed-shape batches; the last is padded.

  The mask is 1 for real examples and 0 for padding, so metrics count only
  real examples and the step compiles once.
  """
  n = len(labels)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    mask = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)
    if start + batch_size <= n:  # A plain slice: no gather for full batches.
      yield {"image": images[start:start + batch_size], "label": labels[start:start + batch_size]}, mask
    else:
      yield {"image": images[idx], "label": labels[idx]}, mask
