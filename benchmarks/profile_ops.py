"""Where a training step's time goes, per XLA op, from a jax.profiler trace.

    python -m benchmarks.profile_ops --config=default
    python -m benchmarks.profile_ops --config=fashion_mnist \\
        --set optimizer.name=momentum --set model.hidden_sizes='(256,256)' --set model.dropout_rate=0.0

Trains the config (a sweep config trains its sweep) with
config.profile_steps, the same trace `vgg-jax train --config.profile_steps=N`
writes for TensorBoard's Profile tab, then reads the trace back
(jax.profiler.ProfileData) and prints each op's time per step and its share
of the step's op time, then the share of the ops named dot* (XLA's matmuls)
and ynn_fusion* (the fusions XLA:CPU hands YNNPACK: matmuls with what is
fused around them).
"""

import argparse
import ast
import collections
import glob
import os
import sys
import tempfile


def parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def op_times(trace_path: str):
  """{op name: (total ns, count)} of the XLA ops on the CPU plane's executor
  threads (the thunk executor's own bookkeeping left out)."""
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  plane = ProfileData.from_file(trace_path).find_plane_with_name("/host:CPU")
  total, count = collections.Counter(), collections.Counter()
  for line in plane.lines:
    if not line.name.startswith("tf_XLA"):
      continue
    for event in line.events:
      if event.name.startswith(("ThunkExecutor", "while", "SlinkyThreadPool")):
        continue  # Wrappers around the ops below, and thread-pool waits.
      total[event.name] += event.duration_ns
      count[event.name] += 1
  return total, count


def is_matmul(name: str) -> bool:
  return name.startswith(("dot", "ynn_fusion"))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="default", help="a built-in config's name or a path")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override, e.g. optimizer.name=momentum (repeatable)")
  parser.add_argument("--steps", type=int, default=200, help="steps to trace")
  parser.add_argument("--start", type=int, default=50, help="first step to trace (warm)")
  parser.add_argument("--top", type=int, default=12, help="ops to list")
  args = parser.parse_args(argv)

  import vgg_jax  # pylint: disable=g-import-not-at-top
  config = vgg_jax.load_config(args.config)
  for item in args.set:
    key, value = item.split("=", 1)
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = parse_value(value)
  config.profile_steps, config.profile_start_step = args.steps, args.start
  workdir = tempfile.mkdtemp(prefix="vgg_jax_profile_")
  if config.sweep:
    vgg_jax.sweep(config, workdir)
  else:
    vgg_jax.train(config, workdir)
  traces = glob.glob(os.path.join(workdir, "plugins", "profile", "*", "*.xplane.pb"))
  if not traces:
    sys.exit(f"no trace was written in {workdir}: is the run longer than --start?")
  total, count = op_times(traces[0])
  if not total:
    sys.exit("the trace holds no steps: training runs in chunks (an epoch, or eval_every_steps), "
             "and the trace starts at a chunk boundary after --start; lower --start, or set "
             "eval_every_steps smaller than the run")
  # Every op of a step runs once a step: the most frequent count is the steps traced.
  steps = collections.Counter(count.values()).most_common(1)[0][0]
  step_ns = sum(total.values()) / steps
  print(f"{args.config} {' '.join(args.set)}: {steps} steps traced, op time per step "
        f"{step_ns / 1e6:.3f} ms ({traces[0]})")
  print(f"{'op':<32} {'ms/step':>9} {'share':>7}")
  for name, ns in total.most_common(args.top):
    print(f"{name[:32]:<32} {ns / steps / 1e6:>9.4f} {ns / steps / step_ns:>7.1%}")
  matmul = sum(ns for name, ns in total.items() if is_matmul(name)) / steps
  print(f"dot* and ynn_fusion* (matmuls): {matmul / step_ns:.1%} of the step's op time")


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
