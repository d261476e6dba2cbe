"""What a run says about itself at start: its model's layers and their
parameters, the train program's compile time and FLOPs, and an optional
jax.profiler trace of a few steps (config.profile_steps)."""

import logging
import os
import time
from typing import Optional

import jax
import numpy as np

logger = logging.getLogger(__name__)


def model_table(params, num_members: int = 1) -> str:
  """One line per layer (a top-level module of the parameter tree): its
  parameter shapes and count, then the total. Stacked members (a vmapped
  sweep group) count once."""
  rows = []
  for layer, tree in params.items():
    shapes = [tuple(x.shape[1:] if num_members > 1 else x.shape)
              for x in jax.tree.leaves(tree)]
    shapes.sort(key=len, reverse=True)  # The kernel first, then bias or scale.
    count = sum(int(np.prod(s)) for s in shapes)
    rows.append((layer, " + ".join("x".join(map(str, s)) for s in shapes), count))
  width = max([len(r[0]) for r in rows] + [5])
  shape_width = max([len(r[1]) for r in rows] + [5])
  total = sum(r[2] for r in rows)
  lines = [f"  {name:<{width}}  {shapes:<{shape_width}}  {count:>12,}" for name, shapes, count in rows]
  lines.append(f"  {'total':<{width}}  {'':<{shape_width}}  {total:>12,}")
  return "\n".join(lines)


_logged_tables = set()


def log_model_table(params, num_members: int = 1) -> None:
  """The model's layer table, one log line per layer, once per process for
  each model (an experiment's many groups of one model show it once)."""
  table = model_table(params, num_members)
  if table in _logged_tables:
    return
  _logged_tables.add(table)
  logger.info("layers (parameters per model):")
  for line in table.splitlines():
    logger.info("%s", line)


def log_compile(what: str, lower, examples_per_call: int):
  """Compiles `lower()` (a jax Lowered) with a "compiling ..." line before and
  "compiled in X s" after, with XLA's FLOPs per example where it counts
  them (custom calls, e.g. the oneDNN convolutions, it does not)."""
  logger.info("compiling %s ...", what)
  start = time.perf_counter()
  compiled = lower().compile()
  flops = flops_of(compiled)
  per_example = (f"; {_si(flops / examples_per_call)}FLOP per example (XLA's count)"
                 if flops and examples_per_call else "")
  logger.info("compiled %s in %.1f s%s", what, time.perf_counter() - start, per_example)
  return compiled


def flops_of(compiled) -> float:
  """XLA's FLOP count of a compiled program (0 where it has none)."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return 0.0
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0) or 0.0)


def _si(value: float) -> str:
  for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if value >= scale:
      return f"{value / scale:.3g} {unit}"
  return f"{value:.3g} "


class Profiler:
  """A jax.profiler trace of config.profile_steps steps into
  WORKDIR/plugins/profile, which TensorBoard's profile tab opens
  (tensorboard --logdir=WORKDIR). Training runs in compiled chunks, so the
  trace starts at the first chunk boundary at or after profile_start_step
  and stops at the first one profile_steps later: it covers whole chunks."""

  def __init__(self, config, workdir: str):
    self.steps = int(config.profile_steps)
    self.start_step = int(config.profile_start_step)
    self.workdir = workdir
    self.started: Optional[int] = None
    self.done = self.steps <= 0 or jax.process_index() != 0

  def at(self, step: int) -> None:
    """Called at each chunk boundary, before the next chunk runs."""
    if self.done:
      return
    if self.started is None and step >= self.start_step:
      jax.profiler.start_trace(self.workdir)
      self.started = step
      logger.info("profiling from step %d for %d steps", step, self.steps)
    elif self.started is not None and step >= self.started + self.steps:
      self.stop(step)

  def stop(self, step: int) -> None:
    if self.started is not None and not self.done:
      jax.profiler.stop_trace()
      self.done = True
      logger.info("profile of steps %d-%d in %s (tensorboard --logdir=%s, Profile tab)",
                  self.started + 1, step, os.path.join(self.workdir, "plugins", "profile"),
                  self.workdir)
