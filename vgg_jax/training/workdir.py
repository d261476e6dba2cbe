"""A run's workdir bookkeeping: config.json, model_info.json, the check that a
rerun resumes only a run of the same config, and the lock that keeps one
process per workdir."""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Iterator, Set

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
                     "sweep_vmap_size", "profile_steps", "profile_start_step")


def flatten(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def flat_config(config: ml_collections.ConfigDict) -> dict:
  """{dotted key: value} of a config, as its config.json holds it."""
  return flatten(json.loads(config.to_json_best_effort()))


MODEL_INFO_FILE = "model_info.json"

# What a workdir holds, and whether each is a directory: a name of the wrong
# kind (a file where checkpoints/ should be, say) is refused before training.
LAYOUT = {"checkpoints": True, "corrupt_checkpoints": True, "tensorboard": True, "runs": True,
          "config.json": False, metrics.METRICS_FILE: False, metrics.STATUS_FILE: False,
          MODEL_INFO_FILE: False}


def check_layout(workdir: str) -> None:
  """One-line UserError if something in the workdir is a file where a
  directory belongs, or the other way round."""
  for name, is_dir in LAYOUT.items():
    path = os.path.join(workdir, name)
    if os.path.lexists(path) and os.path.isdir(path) != is_dir:
      kind = "a directory" if is_dir else "a file"
      raise UserError(f"{path} should be {kind}; move it away or use another --workdir")


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses (before writing anything) to resume a workdir of a different
  config, or one whose layout is broken. A sweep's workdir (config.json with a
  sweep list) compares the base config only: the list may change."""
  if os.path.isdir(workdir):
    check_layout(workdir)
  path = os.path.join(workdir, "config.json")
  is_sweep = bool(config.get("sweep"))
  if not os.path.exists(path):
    if is_sweep and os.path.exists(os.path.join(workdir, metrics.METRICS_FILE)):
      raise UserError(f"{workdir} holds a single run, not a sweep; use a new --workdir")
    if is_sweep and os.path.exists(os.path.join(workdir, "results.csv")):
      raise UserError(f"{workdir} holds a sweep written by an older vgg_jax (no config.json), "
                      "whose runs cannot be matched to this config; use a new --workdir")
    return
  try:
    with open(path) as f:
      old = json.load(f)
    if not isinstance(old, dict):
      raise ValueError("not a JSON object")
    old = flatten(old)
  except (OSError, ValueError):
    raise ConfigError("--workdir", workdir, "a fresh directory, or one written by this "
                      f"config ({path} is unreadable)") from None
  if bool(old.get("sweep")) != is_sweep:
    raise UserError(f"{workdir} holds a {'sweep' if old.get('sweep') else 'single run'}, "
                    f"and this config is a {'sweep' if is_sweep else 'single run'}; use a new "
                    "--workdir")
  ignored = RESUMABLE_CHANGES + (("sweep",) if is_sweep else ())
  differ = differences(old, flat_config(config), ignored)
  if differ:
    what = "a sweep of a different base config" if is_sweep else "a run of a different config"
    raise UserError(f"{workdir} holds {what} ({differ}); use a new --workdir, or the old "
                    "values to resume it")


def differences(old: dict, new: dict, ignored=(), shown: int = 4) -> str:
  """The keys whose values differ between two flat configs, as
  "key: old there, new here; ..." (the first `shown`), or "" if none do."""
  differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in ignored)
  text = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in differ[:shown])
  return text + (f"; and {len(differ) - shown} more" if len(differ) > shown else "")


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """workdir/config.json (left untouched when it already says the same)."""
  text = json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True) + "\n"
  metrics.write_text(os.path.join(workdir, "config.json"), text, only_if_changed=True)



def write_model_info(config, info, workdir: str) -> None:
  """What predict needs besides the checkpoint: classes and input preprocessing."""
  metrics.write_json(os.path.join(workdir, MODEL_INFO_FILE), {
      "class_names": list(info.class_names), "image_shape": list(info.image_shape),
      "mean": list(info.mean), "std": list(info.std), "head": config.head,
      "cache_features": bool(config.model.cache_features)})


LOCK_FILE = ".lock"
# Set to 1 on a filesystem without file locks (NFS without a lock daemon):
# runs then take no lock, and nothing stops two processes sharing a workdir.
NO_LOCK_ENV = "VGG_JAX_NO_LOCK"
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN)
_held: Set[str] = set()  # Realpaths of the locks this process holds: nested calls reuse them.


class WorkdirBusyError(UserError):
  """Another live process holds the workdir's lock."""


@contextlib.contextmanager
def locked(workdir: str, primary: bool = True, name: str = LOCK_FILE) -> Iterator[None]:
  """Holds workdir/<name> (an OS lock: fcntl.flock) while the body runs.

  The kernel drops the lock when its holder exits, however it dies, so a
  lock left by a killed run never blocks the rerun. A second process gets
  WorkdirBusyError naming the holder. Only the primary process (process 0
  of a multi-process run) locks: its peers share the workdir with it.
  Nested calls on the same workdir (a sweep's groups) reuse the lock. A
  workdir this call created is removed again if the body fails before
  anything but the lock was written in it.
  """
  if not primary or _locks_off():
    yield
    return
  if not workdir:
    raise UserError("--workdir is empty; give the directory to write the run into")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} is a file, not a directory")
  created = not os.path.exists(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    key = os.path.realpath(os.path.join(workdir, name))
  except (OSError, ValueError) as e:
    raise UserError(f"cannot create --workdir={workdir}: {getattr(e, 'strerror', None) or e}") from None
  if key in _held:
    yield
    return
  path = os.path.join(workdir, name)
  f = _take(workdir, path)
  _held.add(key)
  try:
    yield
  except BaseException:
    # A run that failed before writing anything (a config error found once
    # the data is loaded, say) leaves no workdir behind if it made it.
    if created and os.listdir(workdir) == [name]:
      os.remove(path)
      os.rmdir(workdir)
    raise
  finally:
    _held.discard(key)
    f.close()  # Releases the lock.


def _take(workdir: str, path: str):
  """Opens the lock file, takes its lock (or raises WorkdirBusyError naming
  the holder) and writes this process's line into it; returns the open file."""
  try:
    f = open(path, "a+")  # pylint: disable=consider-using-with
  except OSError as e:
    raise UserError(f"cannot write in --workdir={workdir}: {path}: {e.strerror}") from None
  try:
    flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except WorkdirBusyError:
    f.seek(0)
    holder = f.readline().strip() or "another process"
    f.close()
    raise WorkdirBusyError(f"{workdir} is in use by {holder}; wait for it to finish, or use "
                           "another --workdir") from None
  except BaseException:
    f.close()
    raise
  f.seek(0)
  f.truncate()
  started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  f.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
  f.flush()
  return f


def _locks_off() -> bool:
  return os.environ.get(NO_LOCK_ENV, "") not in ("", "0")


def flock(f, operation: int) -> None:
  """fcntl.flock, where only EWOULDBLOCK/EAGAIN mean "another process holds
  it" (WorkdirBusyError); any other error (ENOLCK on NFS without a lock daemon,
  say) is one line saying the filesystem takes no locks, and what to do."""
  try:
    fcntl.flock(f, operation)
  except OSError as e:
    if e.errno in _BUSY:
      raise WorkdirBusyError("busy") from None
    raise UserError(
        f"cannot lock {f.name}: {e.strerror or e} (errno {e.errno}); this filesystem does not "
        f"support file locks. Use a workdir on a local or lock-capable filesystem, or set "
        f"{NO_LOCK_ENV}=1 to run without locks (then make sure that no two processes use "
        "one workdir, or one sweep shard, at the same time)") from None


@contextlib.contextmanager
def merge_lock(workdir: str) -> Iterator[None]:
  """A short blocking lock around writes of a file several processes share
  (a sweep's merged status.json and results.csv): one writer at a time, so
  the last write holds everything the others wrote."""
  if _locks_off():
    yield
    return
  with open(os.path.join(workdir, ".merge.lock"), "a+") as f:
    flock(f, fcntl.LOCK_EX)
    yield
