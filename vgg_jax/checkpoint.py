"""Orbax CheckpointManager helpers: save every N steps, keep K, resume latest.

Orbax writes each step into a temporary directory and renames it when the
write is complete, so a process killed mid-save leaves the previous step as
the latest good checkpoint.
"""

import os
from typing import Any, Tuple

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
                               options=options)


def restore_latest(manager: ocp.CheckpointManager, state: Any) -> Tuple[Any, int]:
  """Returns (restored state, its step), or (state, 0) when there is none."""
  step = manager.latest_step()
  if step is None:
    return state, 0
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  return restored, step


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  manager.save(step, args=ocp.args.StandardSave(state), force=True)
