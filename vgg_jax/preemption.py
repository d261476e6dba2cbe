"""Graceful preemption: SIGTERM and SIGINT stop training at a checkpoint.

SLURM, Kubernetes and TPU maintenance send SIGTERM some seconds before they
kill a job. While training, the first SIGTERM or SIGINT (Ctrl-C) only sets a
flag. The loop finishes the chunk it is in (one step, or a scanned epoch or
eval interval) and the evals and checkpoint due after it, then writes a
checkpoint at that step with the pending metric rows. It sets status.json to
`preempted` and raises Preempted; the command line prints one line and exits
with EXIT_CODE. Rerunning the same command resumes bit for bit.

A second signal is harmless: it only says that the run is already stopping,
so a checkpoint being written is never cut short. A third stops at once,
without a checkpoint (the previous checkpoints stay intact: they are written
atomically).

With several processes, all of them stop at the same step: after each chunk
they agree whether any of them was signalled (`agreed`).
"""

import contextlib
import logging
import signal
import threading
from typing import Iterator, Optional

logger = logging.getLogger(__name__)

# EX_TEMPFAIL (sysexits.h): a temporary failure; the caller is invited to retry.
EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Training stopped on a signal, after writing a checkpoint at `step`."""

  def __init__(self, step: Optional[int], workdir: str, signal_name: str):
    self.step, self.workdir, self.signal_name = step, workdir, signal_name
    where = (f"at step {step}; checkpoint saved in {workdir}" if step is not None
             else f"between sweep groups; finished runs are kept in {workdir}")
    super().__init__(f"stopped by {signal_name} {where}. Rerun the same command to resume")


class Guard:
  """Catches SIGTERM and SIGINT while active; `requested` once one arrived."""

  def __init__(self):
    self.signal_name: Optional[str] = None
    self.count = 0
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signal_name is not None

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    name = signal.Signals(signum).name
    self.count += 1
    if self.count == 1:
      self.signal_name = name
      logger.warning("%s: stopping after the current chunk, with a checkpoint", name)
    elif self.count == 2:
      logger.warning("%s: already stopping; a third signal stops at once, without a checkpoint",
                     name)
    else:
      self.uninstall()
      signal.raise_signal(signum)

  def install(self) -> None:
    for s in SIGNALS:
      self._previous[s] = signal.signal(s, self._handle)

  def uninstall(self) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}


_active: Optional[Guard] = None


@contextlib.contextmanager
def guard() -> Iterator[Guard]:
  """The active Guard, installed by the outermost caller (a sweep and its
  groups share one). Off the main thread, where Python cannot install signal
  handlers, a Guard that never fires."""
  global _active
  if _active is not None:
    yield _active
    return
  current = Guard()
  on_main = threading.current_thread() is threading.main_thread()
  if on_main:
    current.install()
  _active = current
  try:
    yield current
  finally:
    _active = None
    if on_main:
      current.uninstall()


def agreed(requested: bool) -> bool:
  """Whether any process was signalled; every process gets the same answer.
  One process: `requested` itself, with no communication."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return requested
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.int32(requested))))
