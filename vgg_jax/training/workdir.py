"""A run's workdir bookkeeping: config.json, model_info.json, and the check
that a rerun resumes only a run of the same config."""

import json
import os

import ml_collections

from vgg_jax import metrics
from vgg_jax.errors import ConfigError, UserError

# What a rerun may change and still resume: the length (the schedule follows
# the new length), cadence, eval batching, devices, where the data lives, the
# NaN hunt. Anything else changes what the checkpoints mean, so a workdir
# written by another config refuses to resume.
RESUMABLE_CHANGES = ("num_epochs", "num_train_steps", "log_every_steps", "eval_every_steps",
                     "checkpoint_every_steps", "keep_checkpoints", "eval_batch_size",
                     "num_devices", "parallelism", "debug_nans", "dataset.data_dir",
                     "dataset.idx_dir", "dataset.download", "dataset.memory_limit_mb",
                     "sweep_vmap_size")


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses (before writing anything) to resume a workdir of a different config."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      old = _flatten(json.load(f))
  except (OSError, ValueError):
    raise ConfigError("--workdir", workdir, "a fresh directory, or one written by this "
                      f"config ({path} is unreadable)") from None
  new = _flatten(json.loads(config.to_json_best_effort()))
  differ = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
  if differ:
    shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in differ[:4])
    more = f"; and {len(differ) - 4} more" if len(differ) > 4 else ""
    raise UserError(f"{workdir} holds a run of a different config ({shown}{more}); "
                    "use a new --workdir, or the old values to resume it")


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  metrics.write_json(os.path.join(workdir, "config.json"),
                     json.loads(config.to_json_best_effort()), indent=2, sort_keys=True)


MODEL_INFO_FILE = "model_info.json"


def write_model_info(config, info, workdir: str) -> None:
  """What predict needs besides the checkpoint: classes and input preprocessing."""
  metrics.write_json(os.path.join(workdir, MODEL_INFO_FILE), {
      "class_names": list(info.class_names), "image_shape": list(info.image_shape),
      "mean": list(info.mean), "std": list(info.std), "head": config.head,
      "cache_features": bool(config.model.cache_features)})


