"""Shared helpers for the benchmark scripts: a matmul-peak reference and timing."""

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
