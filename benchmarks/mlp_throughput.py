"""Training throughput of an MLP 784-1024-1024-1024-10, batch 128, Adam, float32.

Prints examples/s, the FLOP/s that implies, this machine's measured float32
matmul FLOP/s and the fraction (goal: >= 80% of the square-matmul peak),
all from one run. Two
references: the peak of a large square matmul (best of XLA and NumPy), and
the step's own matmuls timed alone at batch-128 shapes (what the step would
reach if activations, loss and Adam's elementwise update were free).

    python benchmarks/mlp_throughput.py [--steps 300]
"""

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from benchmarks.common import best_seconds, matmul_peak_flops
from vgg_jax import config_lib, models, optim, training

LAYERS = (784, 1024, 1024, 1024, 10)
BATCH = 128


def training_flops_per_example() -> int:
  """Matmul FLOPs: forward and weight-gradient for every layer, input-gradient
  for all but the first (nothing upstream needs it)."""
  pairs = list(zip(LAYERS[:-1], LAYERS[1:]))
  fwd = sum(2 * i * o for i, o in pairs)
  return 2 * fwd + (fwd - 2 * pairs[0][0] * pairs[0][1])


def step_matmuls_seconds() -> float:
  """Seconds for just the matmuls one training step must do, at their shapes:
  the best this step could run if everything else (activations, loss, Adam)
  were free."""
  rng = np.random.default_rng(1)
  pairs = list(zip(LAYERS[:-1], LAYERS[1:]))
  xs = [jnp.asarray(rng.standard_normal((BATCH, i)), jnp.float32) for i, _ in pairs]
  ws = [jnp.asarray(rng.standard_normal((i, o)), jnp.float32) for i, o in pairs]
  dys = [jnp.asarray(rng.standard_normal((BATCH, o)), jnp.float32) for _, o in pairs]

  @jax.jit
  def matmuls(xs, ws, dys):
    fwd = [x @ w for x, w in zip(xs, ws)]
    dw = [x.T @ dy for x, dy in zip(xs, dys)]
    dx = [dy @ w.T for dy, w in zip(dys[1:], ws[1:])]
    return fwd, dw, dx

  return best_seconds(lambda: matmuls(xs, ws, dys), number=50)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  args = parser.parse_args()

  config = config_lib.base_config()
  config.model.hidden_sizes = LAYERS[1:-1]
  config.optimizer.name = "adam"
  head = models.get_head("category")
  model = models.create_model(config.model, LAYERS[-1])
  tx, shape = optim.create_optimizer(config.optimizer, total_steps=args.steps)
  state = training.create_train_state(jax.random.PRNGKey(0), model, tx, (28, 28, 1))
  preprocess = training.make_preprocess(mean=(0.5,), std=(0.25,))
  step_fn = jax.jit(functools.partial(training.train_step, head=head, preprocess=preprocess,
                                      lr_multiplier=shape), donate_argnums=0)
  rng = np.random.default_rng(0)
  batches = [jax.device_put({"image": rng.integers(0, 256, (BATCH, 28, 28, 1), np.uint8),
                             "label": rng.integers(0, 10, (BATCH,), np.int32)})
             for _ in range(8)]

  holder = {"state": state}

  def run_steps():
    s = holder["state"]
    for i in range(args.steps):
      s, m = step_fn(s, batches[i % len(batches)])
    holder["state"] = s
    return m

  seconds = best_seconds(run_steps, repeats=3, number=1) / args.steps
  examples_per_sec = BATCH / seconds
  achieved = examples_per_sec * training_flops_per_example()
  peak = matmul_peak_flops()
  shaped = BATCH * training_flops_per_example() / step_matmuls_seconds()
  print(f"backend: {jax.default_backend()} ({jax.device_count()} device(s), "
        f"{os.cpu_count()} CPU cores), jax {jax.__version__}")
  print(f"MLP {'-'.join(map(str, LAYERS))}, batch {BATCH}, Adam, float32, "
        f"{args.steps} steps per timing")
  print(f"{'training examples/s':<34}{examples_per_sec:>12,.0f}")
  print(f"{'training matmul GFLOP/s':<34}{achieved / 1e9:>12.1f}")
  print(f"{'float32 matmul GFLOP/s (XLA)':<34}{peak['xla'] / 1e9:>12.1f}")
  print(f"{'float32 matmul GFLOP/s (NumPy)':<34}{peak['numpy'] / 1e9:>12.1f}")
  print(f"{'same-shape matmuls GFLOP/s (XLA)':<34}{shaped / 1e9:>12.1f}")
  print(f"{'fraction of square-matmul peak':<34}{achieved / peak['peak']:>12.1%}   (goal >= 80%)")
  print(f"{'fraction of same-shape matmuls':<34}{achieved / shaped:>12.1%}   (the most the step could reach)")


if __name__ == "__main__":
  main()
