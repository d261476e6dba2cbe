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

A model whose loss turns non-finite is frozen at its last finite state and
marked diverged; its siblings keep training untouched. `--sweep_shard=i/n`
keeps runs i, i+n, i+2n, ... so n workers cover the list exactly once.
Every eval writes one tidy row per run to results.csv; rerunning skips runs
that already finished.
"""

import csv
import functools
import itertools
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vgg_jax import config_validation, data, faults, models, optim, parallel, train
from vgg_jax.data import pipeline
from vgg_jax.errors import ConfigError

logger = logging.getLogger(__name__)

# Past this many FLOPs per model step, CPU runs the models one by one (vmap_size):
# just above the largest model benchmarks/sweep_vmap.py measured.
CPU_VMAP_MAX_FLOPS = 2e9
VMAPPED = ("seed", "optimizer.learning_rate", "optimizer.momentum", "optimizer.weight_decay")
RESULTS_FILE = "results.csv"
PROBES_FILE = "probes.csv"
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


# ---------------------------------------------------------------- running


def _group_key(overrides: Run) -> Tuple:
  return tuple(sorted((k, json.dumps(v)) for k, v in overrides.items() if k not in VMAPPED))


def run_sweep(config: ml_collections.ConfigDict, workdir: str, shard: str = "0/1",
              probe=None) -> List[Dict]:
  """Runs this shard's part of config.sweep; returns one result dict per run.

  `probe(state, images, labels, head) -> {name: scalar}`, if given, is
  measured per model on a fixed batch of training examples at step 0 and at
  every eval, into probes.csv (e.g. per-layer gradient norms).
  """
  runs = runs_from_config(config)
  index, count = parse_shard(shard)
  mine = [(i, r) for i, r in enumerate(runs) if i % count == index]
  configs = {i: apply_overrides(config, r) for i, r in mine}
  for i, c in configs.items():  # Every run's config is checked before anything runs.
    config_validation.validate(c)
  keys = sorted({k for r in runs for k in r})
  os.makedirs(workdir, exist_ok=True)
  suffix = ".csv" if count == 1 else f"-shard{index}of{count}.csv"
  writer = ResultsWriter(os.path.join(workdir, RESULTS_FILE.replace(".csv", suffix)), keys)
  finished = writer.finished_runs()
  probe_writer = None if probe is None else ResultsWriter(
      os.path.join(workdir, PROBES_FILE.replace(".csv", suffix)), keys,
      fields=ResultsWriter.PROBE_FIELDS, finished=finished)
  todo = [(i, r) for i, r in mine if i not in finished]
  logger.info("sweep: %d runs, %d in shard %s, %d already finished", len(runs), len(mine),
              shard, len(mine) - len(todo))
  groups: Dict[Tuple, List] = {}
  for i, r in todo:
    groups.setdefault(_group_key(r), []).append((i, r))
  results = []
  start = time.time()
  datasets = {}  # Groups usually share their data: load it once.
  for members in groups.values():
    results += train_group(configs[members[0][0]], members, writer, start, probe, probe_writer,
                           datasets)
  return results


class ResultsWriter:
  """results.csv: one tidy row per run per eval (process 0 writes).

  Splits: "train" averages the training minibatches since the previous eval
  (dropout and augmentation on); "train_eval" (with config.eval_train_examples),
  "validation" and "test" are evaluations. train_seconds counts the group's
  training time only (no compile, no eval): with K models vmapped together it
  is their shared time. On reopening, rows of unfinished runs are dropped:
  those runs start over.
  """

  FIELDS = ("step", "epoch", "split", "loss", "accuracy", "status", "train_seconds",
            "wall_seconds")
  PROBE_FIELDS = ("step", "name", "value")

  def __init__(self, path: str, keys: List[str], fields: Sequence[str] = FIELDS,
               finished=None):
    self.path, self.keys, self.fields = path, keys, tuple(fields)
    self.enabled = jax.process_index() == 0
    rows = self._read()
    if finished is None:
      finished = {int(r["run_id"]) for r in rows if r.get("status") in ("done", "diverged")}
    self._finished = set(finished)
    if self.enabled:
      tmp = path + ".tmp"
      with open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["run_id", *keys, *self.fields])
        for r in rows:
          if int(r["run_id"]) in self._finished:
            out.writerow([r["run_id"], *[r.get(k, "") for k in keys],
                          *[r.get(k, "") for k in self.fields]])
      os.replace(tmp, path)

  def _read(self) -> List[Dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path, newline="") as f:
      return list(csv.DictReader(f))

  def finished_runs(self) -> set:
    return set(self._finished)

  def write_many(self, rows) -> None:
    if not self.enabled:
      return
    with open(self.path, "a", newline="") as f:
      out = csv.writer(f)
      for run_id, overrides, row in rows:
        out.writerow([run_id, *[overrides.get(k, "") for k in self.keys],
                      *[row[k] for k in self.fields]])


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _member_state(config, model, tx, image_shape):
  state = train.create_train_state(jax.random.PRNGKey(config.seed), model, tx, image_shape)
  for name in ("learning_rate", "momentum", "weight_decay"):
    state.opt_state.hyperparams[name] = jnp.asarray(config.optimizer[name], jnp.float32)
  return state


def sweep_chunk(states, alive, images, labels, orders, first, *, length: int, batch_size: int,
                step_fn, batch_sharding=None):
  """train_chunk for K stacked models; a member whose loss turns non-finite
  keeps its last finite state from then on (alive -> False)."""

  def one(state, alive, order):
    def body(carry, i):
      state, alive = carry
      batch = pipeline.gather_batch(images, labels, order, first + i, batch_size,
                                    batch_sharding)
      new_state, m = step_fn(state, batch)
      ok = alive & jnp.isfinite(m["loss"]) & jnp.isfinite(m["grad_norm"])
      state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, state)
      return (state, ok), m

    (state, alive), m = jax.lax.scan(body, (state, alive), jnp.arange(length))
    return state, alive, m

  return jax.vmap(one, in_axes=(0, 0, 0))(states, alive, orders)


def _chunk_with_sums(*args, **kwargs):
  """sweep_chunk, returning per-model sums of the step metrics instead of
  every step's: inside the compiled program, so no host-side op compiles
  per chunk length on the train_seconds clock."""
  states, alive, m = sweep_chunk(*args, **kwargs)
  return states, alive, {k: jnp.sum(m[k], axis=1) for k in ("loss", "accuracy")}


def train_group(config, members: List[Tuple[int, Run]], writer: ResultsWriter,
                sweep_start: float, probe=None, probe_writer=None,
                datasets: Optional[Dict] = None) -> List[Dict]:
  """Trains one group of value-only variants, vmap_size models per program.

  `datasets` caches loaded datasets by their config across groups.
  """
  datasets = {} if datasets is None else datasets
  key = json.dumps(config.dataset.to_dict(), sort_keys=True, default=str)
  if key not in datasets:
    datasets[key] = data.load(config.dataset)
  dataset = datasets[key]
  if not isinstance(dataset, data.Dataset):
    raise ConfigError("dataset.pipeline", config.dataset.pipeline,
                      "memory for sweeps (models share the device-resident data)")
  info = dataset.info
  total_steps = train.total_train_steps(config, dataset.num_train)
  num_devices = parallel.resolve_num_devices(config.num_devices)
  config_validation.validate_derived(config, dataset.num_train, total_steps, info.num_classes,
                                     num_devices)
  k = vmap_size(config, info, len(members))
  program = GroupProgram(config, dataset, total_steps, num_devices, probe)
  results = []
  for start in range(0, len(members), k):
    results += program.train(members[start:start + k], writer, sweep_start, probe_writer)
  return results


def vmap_size(config, info, num_members: int) -> int:
  """How many models share one program.

  On accelerators vmap always pays. On CPU, benchmarks/sweep_vmap.py found
  vmap faster at every size it measured (1.15x to 1.9x, MLPs up to
  784-1024-1024-10, 1.4 GFLOP per model step, K=8): XLA's batched matmul
  is at least as efficient as K plain ones there. Beyond the measured range
  (CPU_VMAP_MAX_FLOPS) nothing backs that up, and K stacked copies of a big
  model cost K times the memory, so the models then run one after another.
  """
  if config.sweep_vmap_size != -1:
    return config.sweep_vmap_size
  if jax.default_backend() != "cpu":
    return num_members
  flops = 6 * config.batch_size * _num_params(config, info)
  return num_members if flops <= CPU_VMAP_MAX_FLOPS else 1


def _num_params(config, info) -> int:
  head = models.get_head(config.head)
  model = models.create_model(config.model, head.num_outputs(info.num_classes), config.dtype)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1,) + tuple(info.image_shape), jnp.float32))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


class GroupProgram:
  """The compiled pieces of one group, shared by its chunks of K models."""

  PROBE_EXAMPLES = 512

  def __init__(self, config, dataset, total_steps, num_devices, probe=None):
    self.config, self.dataset, self.total_steps = config, dataset, total_steps
    info = dataset.info
    head = models.get_head(config.head)
    self.model = models.create_model(config.model, head.num_outputs(info.num_classes),
                                     config.dtype)
    self.tx, lr_shape = optim.create_optimizer(config.optimizer, total_steps)
    self.dp = parallel.DataParallel.create(num_devices)
    preprocess = train.make_preprocess(info.mean, info.std, models.common.DTYPES[config.dtype],
                                       config.dataset.crop_padding, config.dataset.flip)
    eval_preprocess = train.make_preprocess(info.mean, info.std,
                                            models.common.DTYPES[config.dtype])
    step_fn = functools.partial(train.train_step, head=head, preprocess=preprocess,
                                lr_shape=lr_shape)
    self.chunk = jax.jit(functools.partial(
        _chunk_with_sums, batch_size=config.batch_size, step_fn=step_fn,
        batch_sharding=self.dp.batch_sharding if num_devices > 1 else None),
                         static_argnames="length", donate_argnums=(0, 1))
    self._compiled = {}
    self.eval_fn = jax.jit(jax.vmap(functools.partial(train.eval_step, head=head,
                                                      preprocess=eval_preprocess),
                                    in_axes=(0, None, None)))
    self.pipe = pipeline.InMemoryPipeline(dataset, config.batch_size, config.seed,
                                          place=self.dp.replicate,
                                          eval_train_examples=config.eval_train_examples)
    self.probe = None
    if probe is not None:
      x, y = dataset.splits["train"]
      n = min(self.PROBE_EXAMPLES, len(y))
      images = eval_preprocess(jnp.asarray(x[:n]))
      probe_one = functools.partial(probe, head=head)
      vmapped = jax.jit(jax.vmap(probe_one, in_axes=(0, None, None)))
      self.probe = lambda states: jax.device_get(vmapped(states, images, jnp.asarray(y[:n])))

  def _compiled_chunk(self, states, alive, orders, first, length):
    """The chunk program for this length and member count, compiled once."""
    key = (length, alive.shape[0])
    if key not in self._compiled:
      images, labels = self.pipe.arrays["train"]
      self._compiled[key] = self.chunk.lower(states, alive, images, labels, orders, first,
                                             length=length).compile()
    return self._compiled[key]

  def train(self, members, writer, sweep_start, probe_writer=None):
    """Trains `members` as one vmapped program; returns one result dict each.

    Chunks are scans that end at epoch ends and at eval points, so evals land
    exactly every eval_every_steps.
    """
    config, dataset, total_steps, dp = self.config, self.dataset, self.total_steps, self.dp
    member_configs = [apply_overrides(config, r) for _, r in members]
    states = dp.replicate(_stack([_member_state(c, self.model, self.tx,
                                                dataset.info.image_shape)
                                  for c in member_configs]))
    alive = dp.replicate(np.ones(len(members), bool))
    pipe = self.pipe
    images, labels = pipe.arrays["train"]
    spe = pipe.steps_per_epoch
    eval_every = spe if config.eval_every_steps == -1 else config.eval_every_steps
    eval_splits = [s for s in ("train_eval",) + train.EVAL_SPLITS if s in pipe.arrays]
    logger.info("sweep group of %d (%s): %d steps each", len(members),
                ", ".join(f"{k}={v}" for k, v in members[0][1].items() if k not in VMAPPED)
                or "values only", total_steps)
    self._write_probes(states, 0, members, probe_writer)

    step, last, train_seconds = 0, {}, 0.0
    orders_epoch, orders, sums, count = None, None, None, 0
    while step < total_steps:
      epoch, first = divmod(step, spe)
      if epoch != orders_epoch:
        orders_epoch = epoch
        orders = dp.replicate(np.stack([np.asarray(pipeline.epoch_permutation(
            c.seed, epoch, pipe.num_examples["train"])) for c in member_configs]))
      next_eval = (step // eval_every + 1) * eval_every
      length = min(spe - first, next_eval - step, total_steps - step)
      run_chunk = self._compiled_chunk(states, alive, orders, first, length)
      tick = time.perf_counter()  # Compile is off the clock; the chunk is on it.
      states, alive, chunk_sums = parallel.bounded_dispatch(
          run_chunk(states, alive, images, labels, orders, first), dp.num_devices)
      chunk_sums = jax.device_get(chunk_sums)  # Waits for the chunk.
      train_seconds += time.perf_counter() - tick
      sums = chunk_sums if sums is None else {k: sums[k] + v for k, v in chunk_sums.items()}
      count += length
      prev, step = step, step + length
      if step != total_steps and not train.crossed(eval_every, prev, step):
        continue
      alive_host = np.asarray(jax.device_get(alive))
      means = {"train": {k: np.asarray(v) / count for k, v in sums.items()}}
      sums, count = None, 0
      splits = [s for s in eval_splits
                if s != "test" or config.test_every_eval or step == total_steps]
      for split in splits:
        means[split] = train.eval_means(self.eval_fn, states,
                                        pipe.eval_batches(split, config.eval_batch_size))
      rows = []
      for j, (run_id, overrides) in enumerate(members):
        status = "done" if step == total_steps else "running"
        if not alive_host[j]:
          status = "diverged"
        for split in ("train", *splits):
          row = {"step": step, "epoch": round(step / spe, 4), "split": split,
                 "loss": float(means[split]["loss"][j]),
                 "accuracy": float(means[split]["accuracy"][j]),
                 "status": status if split == eval_splits[-1] else "running",
                 "train_seconds": round(train_seconds, 4),
                 "wall_seconds": round(time.time() - sweep_start, 3)}
          rows.append((run_id, overrides, row))
          last.setdefault(run_id, {})[split] = row
      self._write_probes(states, step, members, probe_writer)  # Before "done" lands.
      writer.write_many(rows)
      faults.maybe_kill("sweep_eval", step)
      logger.info("sweep step %d/%d: %s accuracy %s", step, total_steps, splits[-1],
                  " ".join(f"{last[r][splits[-1]]['accuracy']:.3f}" for r, _ in members))
    return [{"run_id": run_id, **overrides, **{f"{s}_{k}": last[run_id][s][k]
                                               for s in eval_splits for k in ("loss", "accuracy")},
             "status": last[run_id][eval_splits[-1]]["status"]} for run_id, overrides in members]

  def _write_probes(self, states, step, members, probe_writer):
    if self.probe is None or probe_writer is None:
      return
    values = self.probe(states)
    probe_writer.write_many([
        (run_id, overrides, {"step": step, "name": name, "value": float(v[j])})
        for j, (run_id, overrides) in enumerate(members) for name, v in sorted(values.items())])
