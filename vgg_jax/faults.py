"""Fault injection for the reliability tests: signal this process at a named point.

    VGG_JAX_KILL_AT=<point>:<step>   [VGG_JAX_KILL_SIGNAL=KILL|TERM|INT]

sends the signal (default SIGKILL: no cleanup, no flush, no atexit) the
first time training reaches <point> at or after step <step>; TERM and INT
test graceful preemption, and are sent once. Points:

  step        right after a training chunk is dispatched
  eval        after the first eval split is written, before the next
  checkpoint  right after a checkpoint write starts (orbax writes in the background)
  sweep_eval  in a sweep, after an eval's rows are written

Unset, every call is one dictionary lookup.
"""

import os
import signal

ENV = "VGG_JAX_KILL_AT"
SIGNAL_ENV = "VGG_JAX_KILL_SIGNAL"
_sent = []
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
  if target is not None and target[0] == point and step >= target[1] and not _sent:
    name = os.environ.get(SIGNAL_ENV, "KILL")
    if name != "KILL":
      _sent.append(name)  # A graceful stop: once, as a scheduler would.
    os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
