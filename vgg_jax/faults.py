"""Fault injection for the reliability tests: signal this process at a named point.

    VGG_JAX_KILL_AT=<point>:<step>   [VGG_JAX_KILL_SIGNAL=KILL|TERM|INT]

sends the signal (default SIGKILL: no cleanup, no flush, no atexit) the
first time training reaches <point> at or after step <step>; TERM and INT
test graceful preemption, and are sent once. Points:

  step        right after a training chunk is dispatched
  eval        after the first eval split is written, before the next
  checkpoint  right after a checkpoint write starts (orbax writes in the background)
  sweep_eval  in a sweep, after an eval's rows are written

The engine calls install() once per training loop. Unset, it returns what
it was given, and the loop never calls into this module again; set, it wraps
the one place its point names (the chunk iterator, the checkpoint save, or
the outputs' method that `outputs.fault_points` names).
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


def install(outputs, chunks, save):
  """(chunks, save), with the kill point of VGG_JAX_KILL_AT wrapped around
  the one it names; unchanged when the variable is unset."""
  target = _target()
  if target is None:
    return chunks, save
  point = target[0]
  if point == "step":
    chunks = _after_each_chunk(chunks)
  elif point == "checkpoint":
    save = _kill_after(save, point, 1)  # checkpoint.save(manager, step, ...)
  elif point in outputs.fault_points:  # eval (a single run) or sweep_eval (a group).
    name = outputs.fault_points[point]
    setattr(outputs, name, _kill_after(getattr(outputs, name), point, 0))  # (step, ...)
  return chunks, save


def _after_each_chunk(chunks):
  for state, step, pieces in chunks:
    maybe_kill("step", step)
    yield state, step, pieces


def _kill_after(fn, point: str, step_arg: int):
  """fn, then the kill check at the step that is its argument `step_arg`."""
  def wrapped(*args, **kwargs):
    fn(*args, **kwargs)
    maybe_kill(point, args[step_arg])
  return wrapped


def maybe_kill(point: str, step: int) -> None:
  target = _target()
  if target is not None and target[0] == point and step >= target[1] and not _sent:
    name = os.environ.get(SIGNAL_ENV, "KILL")
    if name != "KILL":
      _sent.append(name)  # A graceful stop: once, as a scheduler would.
    os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
