"""Orbax CheckpointManager helpers: save every N steps, keep K, resume latest.

A checkpoint holds two items: the TrainState, and (as JSON) the per-step
train metrics since the last log row, so a resumed run writes the same rows
as an uninterrupted one. Orbax writes each step into a temporary directory
and renames it when complete, so a process killed mid-save leaves the
previous step as the latest good checkpoint.
"""

import os
from typing import Any, Dict, Tuple

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
                               options=options, item_names=("state", "train_rows"))


def restore_latest(manager: ocp.CheckpointManager, state: Any) -> Tuple[Any, int, Dict]:
  """Returns (state, step, train_rows) from the latest checkpoint, or (state, 0, {})."""
  step = manager.latest_step()
  if step is None:
    return state, 0, {}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), train_rows=ocp.args.JsonRestore()))
  return restored.state, step, restored.train_rows or {}


def save(manager: ocp.CheckpointManager, step: int, state: Any, train_rows: Dict) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             train_rows=ocp.args.JsonSave(train_rows)),
               force=True)
