"""The notebook API: what the command line does, as calls that return data.

    import vgg_jax
    config = vgg_jax.load_config("default")          # or "fashion_mnist:vgg_bn", a path
    config.optimizer.name = "nadam"
    result = vgg_jax.train(config, "/tmp/vgg_jax/nb")  # progress lines as it trains
    vgg_jax.results("/tmp/vgg_jax/nb")                 # the rows, as a DataFrame

`vgg_jax.sweep(config, workdir)` runs a config with a sweep list the same
way. Each call validates the config first and raises vgg_jax.errors.UserError
(one readable line) for bad input, as the command line prints it.
"""

import logging
import os
from typing import Dict, List, Union

import ml_collections

from vgg_jax import config_lib

ConfigLike = Union[str, ml_collections.ConfigDict]


def load_config(spec: str) -> ml_collections.ConfigDict:
  """A built-in config by name ("default", "fashion_mnist:vgg_bn") or a config
  file's path[:variant], as --config reads it. Keys can be changed; a key the
  schema lacks is an error, as with --config.KEY overrides."""
  return config_lib.load_config(spec)


def _config(config: ConfigLike) -> ml_collections.ConfigDict:
  from vgg_jax import config_validation  # pylint: disable=g-import-not-at-top
  config = load_config(config) if isinstance(config, str) else config
  config_validation.validate(config)
  return config


def show_progress() -> None:
  """vgg_jax's progress lines on stderr, unless logging is already set up for
  them (the CLIs do it; in a notebook nothing does, and Python's default
  drops INFO)."""
  logger = logging.getLogger("vgg_jax")
  if not logger.handlers and logger.getEffectiveLevel() > logging.INFO:
    from vgg_jax import cli  # pylint: disable=g-import-not-at-top
    cli.progress_to_stderr()


def train(config: ConfigLike, workdir: str) -> Dict:
  """Trains one config into workdir (resuming what is there) and returns the
  final test metrics: {"step", "accuracy", "loss", "wall_seconds", ...}."""
  config = _config(config)
  if config.sweep:
    raise ValueError("this config has a sweep list: run it with vgg_jax.sweep(config, workdir)")
  show_progress()
  from vgg_jax import compile_cache, training  # pylint: disable=g-import-not-at-top
  compile_cache.enable()
  return training.train_and_evaluate(config, workdir)


def sweep(config: ConfigLike, workdir: str, shard: str = "0/1") -> List[Dict]:
  """Trains every run of config.sweep into workdir (skipping finished ones)
  and returns each run's final metrics, with its swept values."""
  config = _config(config)
  show_progress()
  from vgg_jax import compile_cache, sweep as sweep_lib  # pylint: disable=g-import-not-at-top
  compile_cache.enable()
  return sweep_lib.run_sweep(config, workdir, shard)


def results(workdir: str, as_frame: bool = True):
  """A run's or a sweep's rows: one per eval or log point (split train,
  validation or test), as a pandas DataFrame when pandas is installed and
  as_frame, else a list of dicts."""
  rows = _rows(workdir)
  if not as_frame:
    return rows
  try:
    import pandas  # pylint: disable=g-import-not-at-top
  except ImportError:
    return rows
  return pandas.DataFrame(rows)


def _rows(workdir: str) -> List[Dict]:
  from vgg_jax import errors, metrics  # pylint: disable=g-import-not-at-top
  from vgg_jax.training import sweep_record  # pylint: disable=g-import-not-at-top
  if os.path.isdir(os.path.join(workdir, sweep_record.RUNS_DIR)):
    from vgg_jax import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
    return sweep_lib.results(workdir)
  if not os.path.exists(os.path.join(workdir, metrics.METRICS_FILE)):
    raise errors.UserError(f"{workdir} holds no run: no {metrics.METRICS_FILE}, and no "
                           f"sweep's {sweep_record.RUNS_DIR}/")
  return metrics.read_metrics(workdir)  # Skips a line a training run is writing.
