"""K models in one vmap program vs the same K trained one after another.

Fashion-MNIST-shaped synthetic data (28x28x1, 10 classes), batch 128,
SGD + momentum, through the project's sweep engine (auto vmap choice vs
sweep_vmap_size=1), seconds of training by the engine's own clock. Prints,
in one run:

1. the sweep table: 8 MLPs 784-32-32-10, 2 epochs each, as 8 learning rates
   with one seed (members share their batches) and as 8 seeds (each its own
   data order), against the project's own one-at-a-time runs and against 8
   PyTorch eager runs one after another (skipped with a note without torch);
2. one program vs one by one across widths (8 seeds, one epoch), with what
   the automatic choice picks;
3. the whole 8-LR sweep's wall time, compiles included, one model at a
   time with vgg_jax.compile_cache off and on, next to the one program
   (each in a fresh process, as a user runs it);
4. the jit data-parallel step over 1, 2, 4 and 8 forced host devices (on
   one CPU this shows overhead, not speed-up).

    python benchmarks/sweep_vmap.py [--examples 60000] [--k 8] [--epochs 2]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _config(hidden, examples, epochs=1):
  from vgg_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.dataset.name = "synthetic"
  config.dataset.synthetic.image_shape = (28, 28, 1)
  config.dataset.synthetic.num_train = examples
  config.dataset.synthetic.num_test = 1000
  config.model.hidden_sizes = hidden
  config.optimizer.name, config.optimizer.learning_rate = "momentum", 0.01
  config.batch_size, config.num_epochs, config.eval_batch_size = 128, epochs, 1000
  config.num_devices = 1
  return config


def learning_rates(k: int):
  """The sweep table's and the wall table's k learning rates."""
  return [0.001 * 2**i for i in range(k)]


def train_seconds(config, axis, vmap_size: int, workdir: str) -> float:
  """Seconds to train the sweep `axis` through the sweep engine, vmap_size
  models per program (-1: the automatic choice): the sum over programs of
  the engine's own train_seconds clock (compile, evals and checkpoint writes
  left out)."""
  from vgg_jax import sweep  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(config.to_dict())
  config.sweep = sweep.to_config(axis)
  config.sweep_vmap_size = vmap_size
  sweep.run_sweep(config, workdir)
  groups = {i: r["group"] for i, r in sweep.status(workdir)["runs"].items()}
  per_program = {}  # A program's members share its clock: count it once.
  for r in sweep.results(workdir):
    program = groups[r["run_id"]]
    per_program[program] = max(per_program.get(program, 0.0), float(r["train_seconds"]))
  return sum(per_program.values())


def torch_seconds(dataset, hidden, learning_rates, seeds, epochs: int):
  """Seconds for PyTorch eager to train one model per (rate, seed), one after
  another, the same MLP and batches as the engine; None without torch."""
  from benchmarks.common import torch_mlp_trainer  # pylint: disable=g-import-not-at-top
  x, y = dataset.splits["train"]
  total = 0.0
  for lr, seed in zip(learning_rates, seeds):
    try:
      run_epoch = torch_mlp_trainer(x, y, dataset.info.mean[0], dataset.info.std[0], hidden,
                                    learning_rate=lr, seed=seed)
    except ImportError:
      return None
    total += sum(run_epoch()[0] for _ in range(epochs))
  return total


def sweep_table(args):
  """The 8-small-models sweep, one program vs one at a time vs PyTorch."""
  import logging  # pylint: disable=g-import-not-at-top
  logging.getLogger("vgg_jax").setLevel(logging.WARNING)
  from vgg_jax import data, sweep  # pylint: disable=g-import-not-at-top
  hidden, k = (32, 32), args.k
  config = _config(hidden, args.examples, args.epochs)
  dataset = data.load(config.dataset)
  rates = learning_rates(k)
  cases = {f"{k} LRs, one seed": (sweep.axis("optimizer.learning_rate", rates), rates, [0] * k),
           f"{k} seeds, one LR": (sweep.axis("seed", list(range(k))), [0.01] * k, list(range(k)))}
  print(f"{k} MLPs 784-{'-'.join(map(str, hidden))}-10, {args.epochs} epochs of {args.examples} "
        "examples each, batch 128, SGD+momentum; seconds of training (vgg_jax: the engine's "
        f"clock, compile and evals left out), best of {args.rounds} rounds")
  print(f"{'sweep':<18}{'one program':>12}{'one by one':>12}{'PyTorch x' + str(k):>12}"
        f"{'vs own':>9}{'vs PyTorch':>12}")
  for name, (axis, lrs, seeds) in cases.items():
    # Rounds interleave the three, so a burst of machine noise hits all of
    # them rather than one; each keeps its best round.
    vm = seq = torch_s = float("inf")
    for _ in range(args.rounds):
      with tempfile.TemporaryDirectory() as d:
        vm = min(vm, train_seconds(config, axis, -1, os.path.join(d, "vmap")))
        seq = min(seq, train_seconds(config, axis, 1, os.path.join(d, "seq")))
      torch_s = min(torch_s, torch_seconds(dataset, hidden, lrs, seeds, args.epochs) or
                    float("inf"))
    torch_cols = (f"{torch_s:>12.2f}", f"{torch_s / vm:>11.2f}x") if torch_s < float(
        "inf") else (f"{'-':>12}", f"{'-':>12}")
    print(f"{name:<18}{vm:>12.2f}{seq:>12.2f}{torch_cols[0]}{seq / vm:>8.2f}x{torch_cols[1]}")
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    print("(PyTorch not installed: pip install torch for the PyTorch column)")
  print("goals: vs own >= 3x (LRs, one seed) and >= 1.5x (seeds); vs PyTorch >= 5x")


def vmap_table(args):
  import logging  # pylint: disable=g-import-not-at-top
  logging.getLogger("vgg_jax").setLevel(logging.WARNING)
  from vgg_jax import data, sweep  # pylint: disable=g-import-not-at-top
  print(f"\nK={args.k} models (seeds), one epoch of {args.examples} examples each (Fashion-MNIST "
        "shape), batch 128, SGD+momentum; seconds of training by the engine's clock "
        "(compile, evals and checkpoint writes excluded)")
  print(f"{'MLP':<22}{'one by one s':>13}{'vmap K s':>10}{'speed-up':>10}{'auto picks':>12}")
  for hidden in [(32, 32), (128, 128), (256, 256), (512, 512), (1024, 1024)]:
    config = _config(hidden, args.examples)
    dataset = data.load(config.dataset)
    with tempfile.TemporaryDirectory() as d:
      axis = sweep.axis("seed", list(range(args.k)))
      seq = train_seconds(config, axis, 1, os.path.join(d, "seq"))
      vm = train_seconds(config, axis, args.k, os.path.join(d, "vmap"))
    picked = sweep.vmap_size(config, dataset.info, args.k)
    name = "784-" + "-".join(map(str, hidden)) + "-10"
    print(f"{name:<22}{seq:>13.2f}{vm:>10.2f}{seq / vm:>9.2f}x{'vmap ' + str(picked):>12}")
  print("goals: 784-32-32-10 >= 3x; 784-1024-1024-10 never below 1.0x with the auto choice")


def wall_table(args):
  print(f"\nThe {args.k}-LR sweep above, whole wall time in a fresh process (data, compiles, "
        "evals, checkpoints and training)")
  print(f"{'how':<40}{'wall s':>9}")
  cases = [("one by one, compile cache off", "1", "0"), ("one by one, compile cache on", "1", ""),
           ("one program (vmap), compile cache on", "-1", "")]
  for name, vmap_size, cache in cases:
    env = dict(os.environ, VGG_JAX_COMPILATION_CACHE=cache)
    out = subprocess.run([sys.executable, __file__, "--wall_child", vmap_size,
                          "--examples", str(args.examples), "--k", str(args.k),
                          "--epochs", str(args.epochs)], env=env, capture_output=True,
                         text=True, cwd=ROOT)
    print(f"{name:<40}{out.stdout.strip() or out.stderr.strip()[-200:]:>9}")


def wall_child(args):
  import logging  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  from vgg_jax import compile_cache, sweep  # pylint: disable=g-import-not-at-top
  compile_cache.enable()
  logging.getLogger("vgg_jax").setLevel(logging.WARNING)
  config = _config((32, 32), args.examples, args.epochs)
  config.sweep = sweep.to_config(sweep.axis("optimizer.learning_rate",
                                            learning_rates(args.k)))
  config.sweep_vmap_size = args.wall_child
  with tempfile.TemporaryDirectory() as d:
    sweep.run_sweep(config, d)
  print(f"{time.perf_counter() - start:.2f}")


def scaling_table(args):
  print("\njit data-parallel step over forced host devices (MLP 784-256-256-10, batch 128; "
        "all devices share the same 2 cores)")
  print(f"{'devices':<10}{'steps/s':>10}")
  for n in (1, 2, 4, 8):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    out = subprocess.run([sys.executable, __file__, "--scaling_child", str(n)], env=env,
                         capture_output=True, text=True, cwd=ROOT)
    print(f"{n:<10}{out.stdout.strip() or out.stderr.strip()[-200:]:>10}")


def scaling_child(n):
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vgg_jax import config_lib, models, optim, parallel, training  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.model.hidden_sizes = (256, 256)
  config.optimizer.name = "momentum"
  model = models.create_model(config.model, 10)
  tx, shape = optim.create_optimizer(config.optimizer, 1000)
  dp = parallel.DataParallel.create(n)
  state = dp.replicate(training.create_train_state(jax.random.PRNGKey(0), model, tx, (28, 28, 1)))
  step = jax.jit(functools.partial(training.train_step, head=models.get_head("category"),
                                   preprocess=training.make_preprocess((0.5,), (0.25,)),
                                   lr_multiplier=shape), donate_argnums=0)
  rng = np.random.default_rng(0)
  batch = dp.shard_batch({"image": rng.integers(0, 256, (128, 28, 28, 1), np.uint8),
                          "label": rng.integers(0, 10, 128).astype(np.int32)})
  for _ in range(20):
    state, m = parallel.bounded_dispatch(step(state, batch), n)
  start = time.perf_counter()
  for _ in range(200):
    state, m = parallel.bounded_dispatch(step(state, batch), n)
  jax.block_until_ready(m)
  print(f"{200 / (time.perf_counter() - start):.0f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=60000)
  parser.add_argument("--k", type=int, default=8)
  parser.add_argument("--epochs", type=int, default=2, help="epochs per model in the sweep table")
  parser.add_argument("--rounds", type=int, default=3, help="sweep table: best of this many")
  parser.add_argument("--scaling_child", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--wall_child", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.scaling_child:
    scaling_child(args.scaling_child)
    return
  if args.wall_child:
    wall_child(args)
    return
  sweep_table(args)
  vmap_table(args)
  wall_table(args)
  scaling_table(args)


if __name__ == "__main__":
  main()
