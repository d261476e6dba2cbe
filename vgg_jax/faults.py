"""Fault injection for the reliability tests: SIGKILL this process at a named point.

    VGG_JAX_KILL_AT=<point>:<step>

kills the process (SIGKILL: no cleanup, no flush, no atexit) the first time
training reaches <point> at or after step <step>. Points:

  step        right after a training chunk is dispatched
  eval        after the first eval split is written, before the next
  checkpoint  right after a checkpoint write starts (orbax writes in the background)
  sweep_eval  in a sweep, after an eval's rows are written

Unset, every call is one dictionary lookup.
"""

import os
import signal

ENV = "VGG_JAX_KILL_AT"
POINTS = ("step", "eval", "checkpoint", "sweep_eval")


def _target():
  value = os.environ.get(ENV, "")
  if not value:
    return None
  point, _, step = value.partition(":")
  if point not in POINTS or not step.isdigit():
    raise ValueError(f"{ENV}={value!r}: expected <point>:<step> with point in {POINTS}")
  return point, int(step)


def maybe_kill(point: str, step: int) -> None:
  target = _target()
  if target is not None and target[0] == point and step >= target[1]:
    os.kill(os.getpid(), signal.SIGKILL)
