"""The command line and run bookkeeping every ablation experiment shares.

    python -m experiments.<name> --workdir=DIR [--mode=smoke|quick|full] [--config.key=value]

Each experiment module gives `get_config(mode)` (its grids plus a `train`
config for vgg_jax) and `analyze(exp)` (plots, tables, report). Training
goes through the sweep engine, one phase per sweep, into DIR/runs/<phase>/;
a rerun skips every run that already finished there, so an interrupted
experiment continues and a finished one only rewrites its report. The
phases' rows (of the runs this setup lists) are merged into DIR/results.csv
with a `phase` column.

DIR/experiment.json records the setup (mode, dataset, every config value):
a rerun with another setup is refused in one line, so a report never mixes
runs of two setups. On a cluster, `--sweep_shard=i/n` splits every phase's
runs over n processes sharing DIR; a phase that needs the one before waits
for all of its runs (saying which shard it waits for), and shard 0 writes
the report once every run is in.
"""

import json
import logging
import os
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional

from absl import flags
import ml_collections
from ml_collections import config_flags

from vgg_jax import cli, errors
from vgg_jax import preemption
from vgg_jax import report
from vgg_jax.errors import UserError

logger = logging.getLogger("experiments")

MODES = ("smoke", "quick", "full")
FLAGS = flags.FLAGS


def define_flags(get_config: Callable[[str], ml_collections.ConfigDict]) -> None:
  flags.DEFINE_string("workdir", None, "Directory for runs, results.csv, plots and report.md.")
  flags.DEFINE_enum("mode", "quick", MODES, "smoke: seconds (tests); quick: about 10 "
                    "minutes on 2 CPU cores; full: GPU/TPU sized.")
  # The dict shown here is the quick mode's; --config.key=value overrides apply to
  # whichever mode runs.
  config_flags.DEFINE_config_dict("config", get_config("quick"),
                                  "Experiment settings; override with --config.key=value.")
  flags.DEFINE_string("dataset", None, "dataset.name for every training config of the "
                      "experiment: a built-in name, or your own loader as module:function "
                      "or path/to/file.py:function (see vgg_jax/data/user.py).")
  cli.define_cluster_flags()
  flags.mark_flags_as_required(["workdir"])


EXPERIMENT_FILE = "experiment.json"
WAIT_POLL_S = 2.0  # How often a shard waiting for the others looks at the runs.
WAIT_LOG_S = 60.0  # How often it says so.


class ShardFinished(Exception):
  """A shard other than 0 trained its runs; shard 0 writes the report."""


def _set(config: ml_collections.ConfigDict, path: str, value) -> None:
  parts = path.split(".")
  for part in parts[:-1]:
    config = config[part]
  config[parts[-1]] = value


def config_for_mode(get_config, mode: str) -> ml_collections.ConfigDict:
  """get_config(mode) with the command line's --config.* overrides applied."""
  config = get_config(mode)
  for path, value in config_flags.get_override_values(FLAGS["config"]).items():
    _set(config, path, value)
  if FLAGS.dataset:
    for train in train_configs(config):
      train.dataset.name = FLAGS.dataset
  return config


def train_configs(config: ml_collections.ConfigDict) -> List[ml_collections.ConfigDict]:
  """The vgg_jax training configs inside an experiment's config."""
  return [v for v in config.values() if _is_train_config(v)]


def _is_train_config(value) -> bool:
  return isinstance(value, ml_collections.ConfigDict) and "optimizer" in value and (
      "dataset" in value)


class Experiment:
  """One experiment's workdir: its phases' sweeps and the merged results."""

  def __init__(self, name: str, workdir: str, mode: str, config: ml_collections.ConfigDict,
               shard: str = "0/1"):
    self.name, self.workdir, self.mode, self.config = name, workdir, mode, config
    self.shard = shard
    self.phases: List[str] = []
    self.run_ids: Dict[str, set] = {}
    self.trained_runs = 0

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def check_setup(self, dataset: Optional[str]) -> None:
    """Refuses (one line) a workdir holding this experiment run with another
    setup, then records this one."""
    from vgg_jax import metrics  # pylint: disable=g-import-not-at-top
    from vgg_jax.training import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    setup = {"experiment": self.name, "mode": self.mode, "dataset": dataset or "",
             "config": json.loads(self.config.to_json_best_effort())}
    path = self.path(EXPERIMENT_FILE)
    if os.path.exists(path):
      try:
        with open(path) as f:
          old = workdir_lib.flatten(json.load(f))
      except (OSError, ValueError):
        raise UserError(f"{path} is unreadable; use a new --workdir") from None
      differ = workdir_lib.differences(old, workdir_lib.flatten(setup), shown=3)
      if differ:
        raise UserError(f"{self.workdir} holds this experiment run with another setup "
                        f"({differ}); use a new --workdir, or the old settings to continue it")
    if not self.workdir:
      raise UserError("--workdir is empty; give the directory to write the experiment into")
    os.makedirs(self.workdir, exist_ok=True)
    metrics.write_text(path, json.dumps(setup, indent=1, sort_keys=True) + "\n",
                       only_if_changed=True)

  def sweep(self, phase: str, train_config: ml_collections.ConfigDict, runs: List[Dict],
            probe=None) -> List[report.Row]:
    """Trains this shard's runs not finished yet in runs/<phase>, waits for
    the other shards' runs, and returns the phase's rows (its listed runs')."""
    from vgg_jax import sweep  # pylint: disable=g-import-not-at-top
    config = ml_collections.ConfigDict(train_config.to_dict())
    config.sweep = sweep.to_config(runs)
    phase_dir = self.path("runs", phase)
    self.trained_runs += len(sweep.run_sweep(config, phase_dir, self.shard, probe=probe))
    self.run_ids[phase] = {p.run_id for p in sweep.plan(config, phase_dir)}
    if self.shard != "0/1":
      self._wait_for_shards(phase, config, phase_dir)
    self.phases.append(phase)
    return self.rows(phase)

  def _wait_for_shards(self, phase: str, config, phase_dir: str) -> None:
    """Waits until every run of the phase has finished, whichever shard trains it."""
    from vgg_jax import sweep  # pylint: disable=g-import-not-at-top
    last_log = 0.0
    with preemption.guard() as signalled:
      while True:
        status = sweep.status(phase_dir, config, sweep.parse_shard(self.shard)[1])
        waiting = [r for i, r in status["runs"].items() if i in self.run_ids[phase]
                   and r["status"] not in ("done", "diverged")]
        if not waiting:
          return
        if signalled.requested:
          raise preemption.Preempted(None, phase_dir, signalled.signal_name)
        if time.time() - last_log >= WAIT_LOG_S:
          shards = sorted({r.get("shard", "?") for r in waiting})
          logger.info("%s: phase %s waits for shard %s: %d run(s) not finished (%s%s)",
                      self.name, phase, ", ".join(shards), len(waiting), waiting[0]["name"],
                      ", ..." if len(waiting) > 1 else "")
          last_log = time.time()
        time.sleep(WAIT_POLL_S)

  def rows(self, phase: str, file: str = "results.csv") -> List[report.Row]:
    ids = self.run_ids.get(phase)
    return [r for r in report.read_rows(self.path("runs", phase, file))
            if ids is None or r["run_id"] in ids]

  def write_results(self) -> List[report.Row]:
    """DIR/results.csv: every phase's rows, a `phase` column first. The
    analysis starts here: a shard other than 0 stops (shard 0 reports)."""
    if self.shard.split("/")[0] != "0":
      raise ShardFinished()
    os.makedirs(self.workdir, exist_ok=True)
    rows, fields = [], ["phase", "run_id"]
    for phase in self.phases:
      phase_rows = self.rows(phase)
      for r in phase_rows:
        rows.append({"phase": phase, **r})
        fields += [k for k in r if k not in fields]
    report.write_rows(self.path("results.csv"), rows, fields)
    return rows

  def wall_seconds(self) -> float:
    """Each phase's longest program, summed over phases (a run's rows count
    from its program's start): a lower bound on the training wall time."""
    total = 0.0
    for phase in self.phases:
      times = [r["wall_seconds"] for r in self.rows(phase) if r.get("wall_seconds") != ""]
      total += max(times, default=0.0)
    return total

  def finish_report(self, rep: report.Report, reading: str) -> None:
    """The report's tail: the reading computed from the runs, then DIR/report.md."""
    rep.heading("Reading")
    rep.text(reading)
    rep.write(self.path("report.md"))

  def what_was_run(self, rep: report.Report, dataset_note: str) -> None:
    """The report's provenance section: command, config, versions, hardware, time."""
    rep.heading("What was run")
    dataset = f" --dataset={FLAGS.dataset}" if FLAGS.is_parsed() and FLAGS.dataset else ""
    rep.text(f"`python -m experiments.{self.name} --workdir=... --mode={self.mode}{dataset}` "
             f"({dataset_note}). The longest sweep program ran "
             f"{self.wall_seconds():.0f} s (wall time recorded in the runs, "
             f"{len(self.phases)} sweep phase(s)). "
             "Hyperparameters are chosen on the validation split carved from train; "
             "test numbers are only reported.")
    env = report.environment()
    rep.table(["", ""], [[k, v] for k, v in env.items()])
    rep.text("<details><summary>Experiment config</summary>\n\n```json\n"
             + json.dumps(self.config.to_dict(), indent=1, sort_keys=True, default=str)
             + "\n```\n</details>")


def _remove_if_unused(workdir: str) -> None:
  """Removes a workdir this command created if it holds nothing but the
  setup record and empty directories (a run refused before training)."""
  for root, dirs, files in os.walk(workdir):
    if [f for f in files if not (root == workdir and f == EXPERIMENT_FILE)]:
      return
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(workdir, ignore_errors=True)


def dataset_note(train_config: ml_collections.ConfigDict) -> str:
  ds = train_config.dataset
  subset = (f", {ds.num_train_examples} training examples" if ds.num_train_examples > 0
            else ", all training examples")
  return (f"dataset {ds.name}{subset}, {ds.validation_fraction:.0%} of train held out as "
          "validation")


def run(name: str, get_config, train_and_analyze: Callable[[Experiment], Optional[str]],
        prepare: Optional[Callable[[ml_collections.ConfigDict], None]] = None):
  """The absl entry point of experiment `name`, with its flags
  (define_flags); prepare(config) may adapt the config to the data (it runs
  after the overrides, before validation)."""
  define_flags(get_config)

  def main(argv):
    cli.exit_on_ctrl_c(name)
    if len(argv) > 1:
      cli.fail(f"unexpected arguments: {' '.join(argv[1:])}", prog=name)
    cli.setup_logging("vgg_jax", "experiments")
    config = config_for_mode(get_config, FLAGS.mode)
    exp = Experiment(name, FLAGS.workdir, FLAGS.mode, config, FLAGS.sweep_shard)
    start = time.time()
    created = bool(FLAGS.workdir) and not os.path.exists(FLAGS.workdir)
    try:
      from vgg_jax import compile_cache, config_validation, sweep  # pylint: disable=g-import-not-at-top
      sweep.parse_shard(FLAGS.sweep_shard)
      compile_cache.enable()  # The experiment's runs share their programs' compiles.
      cli.initialize_cluster()
      if prepare is not None:
        prepare(config)
      validate_settings(config)
      for value in train_configs(config):  # Before anything runs.
        config_validation.validate(value)
      fit_subsets_to_data(name, config)
      exp.check_setup(FLAGS.dataset)
      train_and_analyze(exp)
    except ShardFinished:
      print(f"{name}: shard {FLAGS.sweep_shard}: {exp.trained_runs} runs trained this time, "
            f"{time.time() - start:.0f} s; every run is in, and shard 0 writes the report "
            f"({exp.path('report.md')})")
      return
    except preemption.Preempted as e:  # Rerunning resumes from the checkpoints.
      cli.fail(str(e), code=preemption.EXIT_CODE, prog=name)
    except UserError as e:
      if created:
        _remove_if_unused(FLAGS.workdir)
      cli.fail(str(e), code=cli.exit_code(e), prog=name)
    except Exception as e:  # pylint: disable=broad-except
      if errors.is_disk_full(e):
        cli.fail(errors.disk_full_message(FLAGS.workdir), prog=name)
      raise
    print(f"{name}: {exp.trained_runs} runs trained this time, {time.time() - start:.0f} s; "
          f"report: {exp.path('report.md')}")

  module = sys.modules[train_and_analyze.__module__]
  cli.run_app(main, module.__doc__ or "", config_doc=(
      f"Experiment settings: --config.KEY=VALUE overrides a key of get_config() in "
      f"{module.__file__} (--mode picks smoke, quick or full values first); the training "
      f"configs it builds use the keys of vgg_jax/config_lib.py."))



def validate_settings(config: ml_collections.ConfigDict) -> None:
  """The experiment's own settings, before anything trains: every grid (a
  list or tuple) non-empty, seeds integers, evals per run at least 1."""
  from vgg_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  for key, value in config.items():
    if isinstance(value, (list, tuple)) and not value:
      raise ConfigError(key, value, "a non-empty list (an experiment compares at least one "
                        "setting)")
    if key.endswith("seeds") and not all(isinstance(s, int) and not isinstance(s, bool)
                                         for s in value):
      raise ConfigError(key, value, "a list of integer seeds, e.g. (0, 1, 2)")
    if key.endswith("evals_per_run") and not (isinstance(value, int) and value >= 1):
      raise ConfigError(key, value, "an integer >= 1 (evaluations over each run)")


def train_config(mode: str) -> ml_collections.ConfigDict:
  """The experiments' starting vgg_jax config: Fashion-MNIST (digits in smoke
  mode, which needs nothing installed), 10% of train as validation."""
  from vgg_jax.config_lib import base_config  # pylint: disable=g-import-not-at-top
  config = base_config()
  config.dataset.name = "digits" if mode == "smoke" else "fashion_mnist"
  config.dataset.validation_fraction = 0.1
  config.optimizer.name = "sgd"
  config.batch_size = 128 if mode != "smoke" else 64
  config.eval_batch_size = 2000
  return config


_NUM_TRAIN: Dict[str, int] = {}  # Dataset config (JSON) -> training examples: load once.


def num_train(train_config: ml_collections.ConfigDict) -> int:
  """Training examples after the validation carve and any subset."""
  key = json.dumps(train_config.dataset.to_dict(), sort_keys=True, default=str)
  if key not in _NUM_TRAIN:
    from vgg_jax import data  # pylint: disable=g-import-not-at-top
    _NUM_TRAIN[key] = data.load(train_config.dataset).num_train
  return _NUM_TRAIN[key]


def fit_subsets_to_data(name: str, config: ml_collections.ConfigDict) -> None:
  """A mode's training subset larger than the data (a small dataset of your
  own, or digits in quick mode) becomes all of it, with a warning; a size set
  on the command line is left alone (and is a one-line error if too large)."""
  explicit = set(config_flags.get_override_values(FLAGS["config"])) if FLAGS.is_parsed() else set()
  for key, train in config.items():
    if not _is_train_config(train) or train.dataset.num_train_examples <= 0:
      continue
    if f"{key}.dataset.num_train_examples" in explicit:
      continue
    whole = train.copy_and_resolve_references()
    whole.dataset.num_train_examples = -1
    available = num_train(whole)
    if train.dataset.num_train_examples > available:
      logging.getLogger("experiments").warning(
          "%s: %s has %d training examples, fewer than the %d this mode asks for "
          "(%s.dataset.num_train_examples): using all of them", name, train.dataset.name,
          available, train.dataset.num_train_examples, key)
      train.dataset.num_train_examples = -1


def eval_every(train_config: ml_collections.ConfigDict, evals: int) -> int:
  """An eval interval giving about `evals` evals over the run."""
  steps = train_config.num_epochs * (num_train(train_config) // train_config.batch_size)
  if train_config.num_train_steps > 0:
    steps = train_config.num_train_steps
  return max(1, steps // evals)


def seeds(mode: str) -> tuple:
  return {"smoke": (0,), "quick": (0, 1, 2), "full": (0, 1, 2, 3, 4)}[mode]


def learning_rate_candidates(rows: List[report.Row],
                             extra: Optional[Callable[[Dict], Dict]] = None) -> Iterator[Dict]:
  """One dict per learning rate in `rows`: lr, ids (its seeds' runs), rows,
  edge (the grid's smallest or largest), val_acc and test_acc (mean, std of
  the final evals), plus whatever extra(candidate) adds."""
  lrs = sorted({r["optimizer.learning_rate"] for r in rows})
  for lr in lrs:
    lr_rows = report.where(rows, **{"optimizer.learning_rate": lr})
    ids = sorted({r["run_id"] for r in lr_rows})
    val, test = report.final_rows(lr_rows, "validation"), report.final_rows(lr_rows, "test")
    cand = {"lr": lr, "ids": ids, "rows": lr_rows, "edge": lr in (lrs[0], lrs[-1]),
            # A run that diverged before its first eval has no row: NaN.
            "val_acc": report.mean_std(val[i]["accuracy"] for i in ids if i in val),
            "test_acc": report.mean_std(test[i]["accuracy"] for i in ids if i in test)}
    if extra is not None:
      cand.update(extra(cand))
    yield cand


def validation_accuracy(cand: Dict) -> float:
  """The default choice: mean final validation accuracy (NaN ranks last)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  return float(np.nan_to_num(cand["val_acc"][0], nan=-1.0))


def best_on_validation(rows: List[report.Row], score: Callable[[Dict], object] = validation_accuracy,
                       extra: Optional[Callable[[Dict], Dict]] = None) -> Dict:
  """The learning rate whose runs score highest on validation (the first on
  ties), as its learning_rate_candidates dict. Test numbers are only carried."""
  best = None
  for cand in learning_rate_candidates(rows, extra):
    if best is None or score(cand) > score(best):
      best = cand
  return best
