"""Shared helpers for the benchmark scripts: timing, a matmul-peak reference, and
the PyTorch eager MLP loop the MLP benchmarks compare against."""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np


def best_seconds(fn, repeats: int = 5, number: int = 10) -> float:
  """Best-of-`repeats` mean seconds per call of fn() over `number` calls."""
  fn()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(number):
      out = fn()
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - start) / number)
  return best


def matmul_peak_flops(n: int = 2048) -> dict:
  """float32 matmul FLOP/s of this machine: the best of XLA and NumPy (BLAS)."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
  mm = jax.jit(jnp.matmul)
  xla = 2 * n**3 / best_seconds(lambda: mm(a, a))
  a_np = np.asarray(a)
  blas = 2 * n**3 / best_seconds(lambda: a_np @ a_np, repeats=3, number=5)
  return {"xla": xla, "numpy": blas, "peak": max(xla, blas)}


def torch_mlp_trainer(x: np.ndarray, y: np.ndarray, mean: float, std: float, hidden,
                      learning_rate: float, seed: int, batch: int = 128):
  """A function that trains a PyTorch MLP (ReLU, SGD + momentum 0.9) for one
  eager epoch on uint8 images x and labels y, gathering and normalizing each
  batch as vgg_jax's pipeline does; returns (seconds, last loss). Raises
  ImportError without torch."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  torch.set_num_threads(os.cpu_count() or 1)
  images = torch.from_numpy(x.reshape(len(x), -1))
  targets = torch.from_numpy(y.astype(np.int64))
  sizes = (images.shape[1],) + tuple(hidden)
  layers = []
  for a, b in zip(sizes[:-1], sizes[1:]):
    layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
  model = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], int(y.max()) + 1))
  opt = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9)

  def run_epoch():
    order = torch.randperm(len(targets))
    start = time.perf_counter()
    for i in range(len(targets) // batch):
      idx = order[i * batch:(i + 1) * batch]
      images_batch = (images[idx].float() / 255.0 - mean) / std
      loss = torch.nn.functional.cross_entropy(model(images_batch), targets[idx])
      opt.zero_grad()
      loss.backward()
      opt.step()
    return time.perf_counter() - start, float(loss.detach())

  return run_epoch
