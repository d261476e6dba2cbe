"""Sweeps: many runs from one command, K models per compiled program.

A sweep is a list of runs; each run is a dict of config overrides. Build it
in a config file with `product` and `zip` (big_vision's get_hyper style):

    config.sweep = sweep.product(sweep.axis("optimizer.learning_rate", [1e-3, 1e-2]),
                                 sweep.axis("seed", [0, 1, 2]))

Runs that differ only in *values* (VMAPPED: seed, learning rate, momentum,
weight decay) form one group and train together: params and optimizer
states are stacked and the whole scanned epoch is jax.vmap'ed, with each
model's injected hyperparameters as arrays and its own data order. Any
other override (depth, width, batch size, optimizer name, dropout, ...)
changes the program, so those runs form separate groups, run one after
another in the same command.

Each group trains through the one engine (vgg_jax.training), so a sweep
has what a single run has: checkpoints every checkpoint_every_steps (a
killed sweep resumes mid-group), pretrained weights, frozen layers and
cached features, and a status.json (the sweep's, listing every run). A
group of one is a single run's program, not vmapped.

A model whose loss turns non-finite is frozen at its last finite state and
marked diverged; its siblings keep training untouched. `--sweep_shard=i/n`
keeps runs i, i+n, i+2n, ... so n workers cover the list exactly once.
Every eval writes one tidy row per run to results.csv; rerunning skips runs
that already finished.
"""

import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import re
import sys
import types
from typing import Dict, List, Optional, Sequence, Tuple

import ml_collections

from vgg_jax import config_validation
from vgg_jax.errors import ConfigError
from vgg_jax.training.program import INJECTED_KEYS

logger = logging.getLogger(__name__)

# Past this many FLOPs per model step, CPU runs the models one by one (vmap_size):
# 8 seeds of MLPs 784-64-64-10 (42 MFLOP), 784-128-128-10 (91), 784-192-192-10
# (145) and 784-256-256-10 (206) trained 1.52x, 1.36x, 1.08x and 1.01x faster
# vmapped (benchmarks/sweep_vmap.py's engine clock, best of 3). It was 5e7 while
# a run's checkpoint saves and epoch orders, which one-by-one runs pay per
# model, slowed the next chunk more than they do now.
CPU_VMAP_MAX_FLOPS = 1.2e8
# Values the members of one program may differ in (the rest changes the program).
VMAPPED = INJECTED_KEYS
Run = Dict[str, object]


# ------------------------------------------------------------ sweep specs


def axis(key: str, values: Sequence) -> List[Run]:
  return [{key: v} for v in values]


def product(*axes: List[Run]) -> List[Run]:
  return [dict(itertools.chain.from_iterable(d.items() for d in combo))
          for combo in itertools.product(*axes)]


def zip_(*axes: List[Run]) -> List[Run]:
  if len({len(a) for a in axes}) > 1:
    raise ValueError(f"zip needs axes of equal length, got {[len(a) for a in axes]}")
  return [dict(itertools.chain.from_iterable(d.items() for d in combo)) for combo in zip(*axes)]


def to_config(runs: List[Run]) -> str:
  """Runs as stored in config.sweep: a JSON string (ConfigDicts hold no dotted keys)."""
  return json.dumps(runs)


def runs_from_config(config: ml_collections.ConfigDict) -> List[Run]:
  if not config.sweep:
    return []
  try:
    runs = json.loads(config.sweep) if isinstance(config.sweep, str) else list(config.sweep)
  except ValueError:
    runs = None
  if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
    raise ConfigError("sweep", config.sweep, "a JSON list of {key: value} run overrides")
  return runs


def parse_shard(text: str) -> Tuple[int, int]:
  try:
    index, count = (int(x) for x in text.split("/"))
    if not 0 <= index < count:
      raise ValueError
  except ValueError:
    raise ConfigError("sweep_shard", text, "i/n with 0 <= i < n, e.g. 0/2") from None
  return index, count


def apply_overrides(config: ml_collections.ConfigDict, overrides: Run):
  config = ml_collections.ConfigDict(config.to_dict())  # A deep, unlocked copy.
  for key, value in overrides.items():
    parent = config
    parts = key.split(".")
    for part in parts[:-1]:
      if part not in parent:
        raise ConfigError(f"sweep axis {key}", value, "an existing config key")
      parent = parent[part]
    if parts[-1] not in parent:
      raise ConfigError(f"sweep axis {key}", value, "an existing config key")
    old = parent[parts[-1]]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key in VMAPPED and not number:  # Stacked per model: one number each, same shapes.
      raise ConfigError(f"sweep axis {key}", value, "one number per run (a vmapped value)")
    if isinstance(old, int) and not isinstance(old, bool) and number:
      if float(value) != int(value):
        raise ConfigError(f"sweep axis {key}", value, "an integer")
      value = int(value)
    elif isinstance(old, float) and number:
      value = float(value)
    try:
      parent[parts[-1]] = value
    except TypeError:
      raise ConfigError(f"sweep axis {key}", value,
                        f"a value of the key's type ({type(old).__name__})") from None
  config.sweep = ""
  return config


# ------------------------------------------------------------ run identity


def run_identity(config: ml_collections.ConfigDict, swept: Sequence[str] = ()) -> str:
  """A run's id: a hash of its resolved config, leaving out what a rerun may
  change and still resume (length, cadence, devices, where the data lives),
  unless the sweep varies it (`swept`: a sweep over num_epochs has one run
  per length)."""
  from vgg_jax.training import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  return _identity(workdir_lib.flat_config(config), swept)


def _identity(flat: Dict, swept: Sequence[str]) -> str:
  from vgg_jax.training import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  kept = {k: v for k, v in flat.items()
          if (k not in workdir_lib.RESUMABLE_CHANGES or k in swept) and k != "sweep"}
  return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def run_name(overrides: Run, keys: Sequence[str]) -> str:
  """What was swept, as a directory name: `learning_rate=0.03,seed=1` (a key's
  last part, unless two swept keys share it)."""
  last = [k.rsplit(".", 1)[-1] for k in keys]
  short = {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}
  parts = []
  for k, v in overrides.items():
    text = repr(v) if isinstance(v, float) else json.dumps(v, separators=(",", ":"))
    parts.append(f"{short.get(k, k)}={text.strip(chr(34))}")
  name = re.sub(r"[^\w.,=+\-\[\]:]", "_", ",".join(parts)) or "base"
  return name if len(name) <= 120 else name[:100] + "~" + hashlib.sha256(
      name.encode()).hexdigest()[:8]


@dataclasses.dataclass
class PlannedRun:
  """One run of the list: its identity, directory name, shard, and its
  resolved config (also flat: {dotted key: value}, as config.json holds it)."""
  run_id: str
  name: str
  overrides: Run
  config: ml_collections.ConfigDict
  flat: Dict
  shard: str

  @property
  def group_key(self) -> str:
    """Runs whose configs differ only in VMAPPED values share one program."""
    return json.dumps({k: v for k, v in self.flat.items() if k not in VMAPPED and k != "sweep"},
                      sort_keys=True)

  def as_dict(self) -> Dict:
    return {"run_id": self.run_id, "name": self.name, "overrides": self.overrides,
            "shard": self.shard}


def plan(config: ml_collections.ConfigDict, workdir: str, count: int = 1) -> List[PlannedRun]:
  """config.sweep's runs, one per distinct config (a point listed twice is
  one run), each with its shard (position i in the list: shard i % count)."""
  from vgg_jax.training import sweep_record, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  runs = runs_from_config(config)
  if not runs:
    raise ConfigError("sweep", config.sweep, "a non-empty list of runs")
  keys = list(dict.fromkeys(k for r in runs for k in r))
  existing = sweep_record.existing_runs(workdir)
  taken = {info["name"]: run_id for run_id, info in existing.items()}
  planned, seen = [], set()
  for overrides in runs:
    run_config = apply_overrides(config, overrides)
    flat = workdir_lib.flat_config(run_config)
    run_id = _identity(flat, list(overrides))
    if run_id in seen:
      continue
    seen.add(run_id)
    name = existing.get(run_id, {}).get("name") or run_name(overrides, keys)
    if taken.get(name, run_id) != run_id:  # Another config holds the name.
      name = f"{name}-{run_id[:6]}"
    taken[name] = run_id
    index = len(planned)
    planned.append(PlannedRun(run_id, name, overrides, run_config, flat,
                              f"{index % count}/{count}"))
  return planned


# ---------------------------------------------------------------- running


def run_sweep(config: ml_collections.ConfigDict, workdir: str, shard: str = "0/1",
              probe=None) -> List[Dict]:
  """Trains this shard's runs of config.sweep that are not finished in
  workdir; returns one result dict per run trained.

  Runs are matched to the workdir by their config (run_identity), never by
  their position: finished runs are skipped, partial ones resume from their
  group's checkpoint, new ones train. A workdir of another base config is
  refused before anything is written.

  `probe(state, images, labels, head) -> {name: scalar}`, if given, is
  measured per model on a fixed batch of training examples at step 0 and at
  every eval, into probes.csv (e.g. per-layer gradient norms).
  """
  from vgg_jax.training import sweep_record, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  index, count = parse_shard(shard)
  planned = plan(config, workdir, count)
  for p in planned:  # Every run's config is checked before anything runs.
    config_validation.validate(p.config)
  workdir_lib.check_workdir_config(config, workdir)
  import jax  # pylint: disable=g-import-not-at-top
  tag = "" if count == 1 else f"-shard{index}of{count}"
  # Shards of one sweep share the workdir; each shard has its own lock, and
  # each group locks its runs' directories while it trains them.
  with workdir_lib.locked(workdir, primary=jax.process_index() == 0,
                          name=workdir_lib.LOCK_FILE + tag):
    mine = [p for p in planned if p.shard == f"{index}/{count}"]

    def begin():
      """The sweep's first writes, once its data loaded and its plan holds."""
      if jax.process_index() == 0:
        workdir_lib.write_config(config, workdir)
      for p in mine:
        sweep_record.RunRecord(workdir, p.name, p.run_id).create(
            p.overrides, p.flat)
      sweep_record.write_merged(workdir, [p.as_dict() for p in planned])

    from vgg_jax.training import sweep_group  # pylint: disable=g-import-not-at-top
    return sweep_group.run_planned(workdir, planned, mine, shard, probe, _load_once, begin)


def results(workdir: str) -> List[Dict]:
  """Every row of every run in a sweep's workdir (all shards, finished or
  not), numbers parsed, swept values as columns: the merged results.csv,
  read fresh from the runs' own files."""
  from vgg_jax import report  # pylint: disable=g-import-not-at-top
  from vgg_jax.training import sweep_record  # pylint: disable=g-import-not-at-top
  return [{k: (report.parse_value(v) if isinstance(v, str) and k != "run_id" else v)
           for k, v in r.items()}
          for r in sweep_record.merged(workdir)["rows"]]


def status(workdir: str, config: Optional[ml_collections.ConfigDict] = None,
           shards: int = 1) -> Dict:
  """The merged status: {"status": ..., "runs": {run_id: {name, status, step,
  params_sha256, shard, group}}}; with `config`, its list's runs not yet
  started are listed as pending (with their shard of `shards`) and decide
  the overall status."""
  from vgg_jax.training import sweep_record  # pylint: disable=g-import-not-at-top
  planned = [p.as_dict() for p in plan(config, workdir, shards)] if config is not None else []
  view = sweep_record.merged(workdir, planned)
  return {"status": view["status"], "runs": view["runs"]}


def _load_once(datasets: Dict, config):
  """Groups usually share their data: each dataset config is loaded once."""
  from vgg_jax import data  # pylint: disable=g-import-not-at-top
  key = json.dumps(config.dataset.to_dict(), sort_keys=True, default=str)
  if key not in datasets:
    datasets[key] = data.load(config.dataset)
  return datasets[key]


def vmap_size(config, info, num_members: int, num_train: int = 0) -> int:
  """How many models share one program.

  On accelerators vmap always pays. On CPU, benchmarks/sweep_vmap.py (K=8,
  batch 128, by the engine's train clock) found vmap 1.36x-1.8x faster than
  one model at a time for MLPs up to 784-128-128-10 and 0.9x-1.08x from
  784-192-192-10 up to 784-1024-1024-10: once a program of one is the plain
  (unvmapped) single-run program, XLA:CPU's batched matmuls only pay for
  small models.
  So CPU vmaps models up to CPU_VMAP_MAX_FLOPS per step and runs bigger ones
  one by one (which also keeps K stacked copies of a big model out of memory).
  The pmap form and the streaming pipeline train one model per program.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if config.sweep_vmap_size != -1:
    return config.sweep_vmap_size
  if config.parallelism == "pmap" or config.dataset.pipeline == "streaming":
    return 1
  if jax.default_backend() != "cpu":
    return num_members
  batch = config.batch_size if config.batch_size > 0 else num_train  # -1: full batch.
  flops = 6 * batch * _num_params(config, info)
  return num_members if flops <= CPU_VMAP_MAX_FLOPS else 1


def _num_params(config, info) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vgg_jax import models  # pylint: disable=g-import-not-at-top
  head = models.get_head(config.head)
  model = models.create_model(config.model, head.num_outputs(info.num_classes), config.dtype)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1,) + tuple(info.image_shape), jnp.float32))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


class _CallableModule(types.ModuleType):
  """`vgg_jax.sweep(config, workdir)` runs a sweep (vgg_jax.api.sweep); the
  module's functions (results, status, plan, ...) stay as they are."""

  def __call__(self, config, workdir: str, shard: str = "0/1"):
    from vgg_jax import api  # pylint: disable=g-import-not-at-top
    return api.sweep(config, workdir, shard)


sys.modules[__name__].__class__ = _CallableModule
