"""In-memory batching with a resumable order.

The shuffle order of epoch e depends only on (seed, e), so a run restarted
at step s replays exactly the batches an uninterrupted run would have seen.
Normalization is applied by ``normalize`` inside the compiled step.
"""

from typing import Iterator, Sequence, Tuple

import jax.numpy as jnp
import numpy as np


def normalize(images, mean: Sequence[float], std: Sequence[float], dtype=jnp.float32):
  """uint8 pixels -> standardized floats. Meant to run inside jit."""
  x = images.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def train_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                  start_step: int = 0) -> Iterator[dict]:
  """Yields shuffled full batches forever, starting at global step start_step.

  Each epoch drops its last partial batch, so all steps have one shape.
  """
  steps_per_epoch = len(labels) // batch_size
  step = start_step
  while True:
    epoch, index = divmod(step, steps_per_epoch)
    order = epoch_permutation(seed, epoch, len(labels))
    for i in range(index, steps_per_epoch):
      idx = order[i * batch_size:(i + 1) * batch_size]
      yield {"image": images[idx], "label": labels[idx]}
    step = (epoch + 1) * steps_per_epoch


def eval_batches(images: np.ndarray, labels: np.ndarray,
                 batch_size: int) -> Iterator[Tuple[dict, np.ndarray]]:
  """Yields every example once in fixed-shape batches; the last is padded.

  The mask is 1 for real examples and 0 for padding, so metrics count only
  real examples and the step compiles once.
  """
  n = len(labels)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    mask = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)
    yield {"image": images[idx], "label": labels[idx]}, mask
