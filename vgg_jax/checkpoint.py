"""Orbax CheckpointManager helpers: save every N steps, keep K, resume latest.

A checkpoint holds two items: the TrainState, and (as JSON) the per-step
train metrics since the last log row, so a resumed run writes the same rows
as an uninterrupted one. Orbax writes each step into a temporary directory
and renames it when complete, so a process killed mid-save leaves the
previous step as the latest good checkpoint.
"""

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from vgg_jax.errors import UserError, is_disk_full

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
# Unreadable checkpoints are moved here, never deleted: the data stays for a post-mortem.
CORRUPT_DIR = "corrupt_checkpoints"


class CheckpointError(UserError):
  """No checkpoint in the workdir can be read; the run will not start over it."""


def create_manager(workdir: str, keep: int, name: str = "",
                   read_only: bool = False) -> ocp.CheckpointManager:
  """Checkpoints in workdir/checkpoints (a sweep group's in checkpoints/<name>).

  read_only: a reader's manager (predict, visualize): it creates, cleans up
  and deletes nothing, so it can read a run that is training (the trainer's
  in-flight temp directory is the trainer's own).
  """
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR, *([name] if name else [])))
  if not read_only:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "train_rows"))
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None,
                                         save_interval_steps=0, cleanup_tmp_directories=False)
  absl_logger = logging.getLogger("absl")  # Orbax warns that a read-only manager reads only.
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "train_rows"))
  finally:
    absl_logger.setLevel(level)


def restore_latest(manager: ocp.CheckpointManager, state: Any) -> Tuple[Any, int, Dict]:
  """Returns (state, step, train_rows) from the newest readable checkpoint.

  (state, 0, {}) when there is none. An unreadable checkpoint (truncated,
  bytes flipped, a file missing) is moved to workdir/corrupt_checkpoints
  with a one-line warning, and the next older one is tried. If checkpoints
  exist but none can be read, CheckpointError: the run never silently
  starts from scratch over a workdir that had progress. (Readers use
  read_latest, which moves nothing.)
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return state, 0, {}
  tried = []
  for step in steps:
    try:
      restored = _restore(manager, step, state)
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and TensorStore raise many types for damaged files.
      moved = _move_aside(manager, step)
      logger.warning("checkpoint at step %d is unreadable (%s); moved to %s, trying an older one",
                     step, _reason(e), moved)
      tried.append(step)
      continue
    if tried:
      logger.warning("resuming from step %d instead of %s", step, tried)
    return restored.state, step, restored.train_rows or {}
  raise CheckpointError(
      f"no readable checkpoint in {manager.directory} (unreadable steps {tried}, moved to "
      f"{CORRUPT_DIR}/); refusing to start from scratch over this workdir: move it away or "
      "use a new --workdir")


def _restore(manager: ocp.CheckpointManager, step: int, state: Any):
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  with _stderr_captured_unless_ok():
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), train_rows=ocp.args.JsonRestore()))
  _check_finite(restored.state, step)
  return restored


def _reason(e: Exception) -> str:
  return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__


READ_ATTEMPTS = 20


def read_latest(workdir: str, state: Any, name: str = "") -> Tuple[Any, int, Dict]:
  """A reader's restore (predict, visualize): the newest step that reads,
  through a read-only manager, moving and deleting nothing.

  A run that is training deletes old steps (keep_checkpoints) as it saves
  new ones, so a step listed a moment ago may be gone by the time it is
  read (or stat'ed while listing): the steps are listed again and the
  newest tried again, a few times, before giving up with one line.
  """
  failures = {}
  for attempt in range(READ_ATTEMPTS):
    if attempt:
      time.sleep(0.05 * attempt)
    try:
      manager = create_manager(workdir, 1, name, read_only=True)
    except OSError as e:  # A step deleted while the manager listed them.
      failures[-1] = _reason(e)
      continue
    try:
      steps = sorted(manager.all_steps(), reverse=True)
      if not steps:
        return state, 0, {}
      for step in steps:
        try:
          restored = _restore(manager, step, state)
        except Exception as e:  # pylint: disable=broad-except
          failures[step] = _reason(e)
          continue
        return restored.state, step, restored.train_rows or {}
    finally:
      manager.close()
  newest = max(failures)
  raise CheckpointError(f"no readable checkpoint in {os.path.join(workdir, CHECKPOINT_DIR)} "
                        f"after {READ_ATTEMPTS} tries ({'step %d: ' % newest if newest >= 0 else ''}"
                        f"{failures[newest]})")


@contextlib.contextmanager
def _stderr_captured_unless_ok():
  """Holds back stderr (the file descriptor: TensorStore's threads write there).

  When a restore fails, orbax closes its event loop while TensorStore reads
  are still finishing, and their callbacks print walls of 'RuntimeError:
  Event loop is closed'. The failure is reported in our one-line warning,
  so that noise is dropped; after a successful restore, anything captured
  is written out unchanged.
  """
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # "Task exception never retrieved".
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    ok = False
    try:
      yield
      ok = True
    finally:
      time.sleep(0.05 if ok else 0.5)  # Let stray callbacks land in the capture.
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      if ok:
        capture.seek(0)
        os.write(2, capture.read())


def _check_finite(state, step: int) -> None:
  """Flipped bytes in float data often decode as NaN/Inf: treat that as damage."""
  for leaf in jax.tree.leaves(state):
    leaf = np.asarray(leaf)
    if np.issubdtype(leaf.dtype, np.floating) and not np.all(np.isfinite(leaf)):
      raise ValueError(f"non-finite values in the restored state of step {step}")


def _move_aside(manager: ocp.CheckpointManager, step: int) -> str:
  if jax.process_count() > 1:  # One mover only; the others just skip the step.
    if jax.process_index() != 0:
      return "(moved by process 0)"
  directory = os.fspath(manager.directory)
  tag = f"{step}-{int(time.time())}"
  if os.path.basename(directory) != CHECKPOINT_DIR:  # A sweep group's: checkpoints/<name>.
    directory, tag = os.path.dirname(directory), f"{os.path.basename(directory)}-{tag}"
  workdir = os.path.dirname(directory)
  dest = os.path.join(workdir, CORRUPT_DIR, tag)
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  shutil.move(os.path.join(os.fspath(manager.directory), str(step)), dest)
  manager.reload()  # Forget the step that is gone.
  return dest


class _DropDiskFullEchoes(logging.Filter):
  """Orbax logs a failed async write (a full disk) from each of its threads,
  traceback and all; the same error is raised again in the main thread
  (check_for_errors, wait_until_finished), where the run reports it in one
  line. Those echoes are dropped; other errors are logged as usual."""

  def filter(self, record):
    return not (record.exc_info and record.exc_info[1] is not None
                and is_disk_full(record.exc_info[1])
                or record.levelno >= logging.ERROR and is_disk_full(Exception(record.getMessage())))


def _closed_loop(value) -> bool:
  return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"


def _drop_closed_loop_callbacks():
  """After a failed or abandoned async write, orbax's event loop is closed
  while TensorStore still completes the pending writes; each completion
  callback fails with 'Event loop is closed' and is printed through one of
  Python's hooks. Those say nothing the failure itself does not."""
  excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

  def quiet_excepthook(kind, value, tb):
    if not _closed_loop(value):
      excepthook(kind, value, tb)

  def quiet_unraisablehook(unraisable):
    if not _closed_loop(unraisable.exc_value):
      unraisablehook(unraisable)

  sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook


for _name in ("absl", "asyncio"):  # asyncio: "Task exception was never retrieved".
  logging.getLogger(_name).addFilter(_DropDiskFullEchoes())
_drop_closed_loop_callbacks()


def save(manager: ocp.CheckpointManager, step: int, state: Any, train_rows: Dict) -> None:
  """Starts an async save of step; first raises the error of a previous one
  (a full disk, say) once orbax knows of it."""
  manager.check_for_errors()
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             train_rows=ocp.args.JsonSave(train_rows)),
               force=True)
