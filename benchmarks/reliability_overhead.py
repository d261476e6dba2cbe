"""What checkpoints and NaN checks cost: a run with them against one without.

"On" is the default: orbax checkpoints every `checkpoint_every_steps` (200
by default) and the per-step, per-layer finiteness flags of the gradients.
"Off" keeps only the final checkpoint and drops the flags from the step
(XLA then removes their computation; the host still glances at the loss);
"NaN checks only" keeps the flags but not the periodic checkpoints.
Both train the same config end to end; rounds alternate and each variant's
best wall time counts (compile, data and eval are in both, equally).

    python benchmarks/reliability_overhead.py [--config configs/fashion_mnist.py] [--rounds 3]

Goal: overhead under 5% at the default checkpoint interval.
"""

import argparse
import functools
import os
import runpy
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _without_flags(train_step):
  @functools.wraps(train_step)
  def step(*args, **kwargs):
    from vgg_jax import training  # pylint: disable=g-import-not-at-top
    state, metrics = train_step(*args, **kwargs)
    return state, {k: v for k, v in metrics.items() if k != training.GRAD_FINITE}
  return step


VARIANTS = {"off": (False, False), "NaN checks only": (False, True), "on": (True, True)}


def run(config, checkpoints: bool, nan_checks: bool) -> float:
  from vgg_jax import training  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  original = training.train_step
  if not checkpoints:
    config.checkpoint_every_steps = 10**9  # Only the final save.
  if not nan_checks:
    training.train_step = _without_flags(original)
  workdir = tempfile.mkdtemp(prefix="reliability_overhead_")
  try:
    start = time.perf_counter()
    training.train_and_evaluate(config, workdir)
    return time.perf_counter() - start
  finally:
    training.train_step = original
    shutil.rmtree(workdir, ignore_errors=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=os.path.join(ROOT, "configs", "fashion_mnist.py"))
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--epochs", type=int, default=5)
  args = parser.parse_args()
  config = runpy.run_path(args.config)["get_config"]()
  config.num_epochs = args.epochs
  config.checkpoint_every_steps = 200  # The default interval, whatever the config says.
  best = {name: float("inf") for name in VARIANTS}
  for r in range(args.rounds):
    for name, flags in VARIANTS.items():
      seconds = run(config, *flags)
      best[name] = min(best[name], seconds)
      print(f"round {r + 1}: {name:16s} {seconds:.2f} s", flush=True)
  print(f"\n{os.path.basename(args.config)}, {args.epochs} epochs, checkpoint every 200 steps, "
        f"best of {args.rounds} (whole run: data, compile, evals included)")
  print(f"off (final checkpoint only, no NaN flags): {best['off']:.2f} s")
  print(f"NaN checks only                          : {best['NaN checks only']:.2f} s "
        f"({100 * (best['NaN checks only'] / best['off'] - 1):+.1f}%)")
  print(f"checkpoints + NaN checks (the default)   : {best['on']:.2f} s "
        f"({100 * (best['on'] / best['off'] - 1):+.1f}%)   goal: under +5%")


if __name__ == "__main__":
  main()
