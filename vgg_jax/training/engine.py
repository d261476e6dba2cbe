"""The one training engine: K members (a single run is K=1) through one loop.

    train_members(config, dataset, members, outputs)

builds the program (program.py), restores the newest checkpoint, picks the
driver (drivers.py), and runs the loop, which owns the schedule of log rows,
evals and checkpoints, the divergence check and the status. What is written
where is the `outputs` object's business: a single run's metrics.jsonl,
TensorBoard and status.json (run.py), or a sweep group's results.csv rows
(sweep_group.py). Both get checkpoints, exact resume, pretrained weights,
freezing and cached features from here.
"""

import dataclasses
import logging
from typing import Any, Callable, Dict, List, Optional, Protocol

import jax
import ml_collections
import numpy as np

from vgg_jax import checkpoint, config_validation, data, faults, optim, parallel, preemption
from vgg_jax.data import pipeline
from vgg_jax.errors import ConfigError
from vgg_jax.training import drivers, program as program_lib, steps, summary

logger = logging.getLogger(__name__)

EVAL_SPLITS = ("train_eval", "validation", "test")


@dataclasses.dataclass
class Member:
  """One run of a group: its config (the group's plus its injected values);
  in a sweep, its id, overrides, directory name, shard and HParams."""
  config: ml_collections.ConfigDict
  run_id: Optional[str] = None
  overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
  name: str = ""
  shard: str = "0/1"
  hparams: Dict[str, Any] = dataclasses.field(default_factory=dict)


def crossed(every: int, before: int, after: int) -> bool:
  """Whether a multiple of `every` lies in (before, after]."""
  return after // every > before // every


class Outputs(Protocol):
  """Where the loop's results go: a single run's files (run.RunOutputs) or a
  sweep group's (sweep_group.GroupOutputs). The loop calls, in order:
  start, restore; then per chunk train_rows, eval_rows per split and
  evaluated, as they fall due; at the end close and results (or diverged,
  preempted)."""

  workdir: str
  # True: a diverged member keeps its last finite state and its siblings
  # train on (a vmapped group). False: a non-finite step ends the run.
  freezes: bool
  # faults.py's kill points this object hosts: {point: method name}.
  fault_points: Dict[str, str]

  def start(self, setup: "Setup") -> None: ...
  def restore(self, start_step: int, snapshot: Optional[Dict], schedule, state):
    """-> (MemberRows, metrics.Progress) resumed from the checkpoint's snapshot."""
  def snapshot(self, rows, progress) -> Dict: ...
  def train_rows(self, j: int, logged, train_rate: float) -> None: ...
  def eval_rows(self, step: int, split: str, means, lr) -> None: ...
  def evaluated(self, step: int, state, rows, done: bool) -> None: ...
  def diverged(self, j: int, divergence, state) -> None: ...
  def preempted(self, step: int) -> None: ...
  def close(self) -> None: ...
  def results(self, state, step: int, results): ...


@dataclasses.dataclass
class Setup:
  """What a group trains with, before any state exists."""
  config: ml_collections.ConfigDict
  program: program_lib.Program
  dataset: Any  # data.Dataset, or a streaming source.
  schedule: drivers.Schedule
  num_devices: int
  use_pmap: bool
  streaming: bool


def set_up(config, dataset, members: List[Member], workdir: str,
           log_at_evals: bool = False) -> Setup:
  """Resolves what the data decides (full batch, steps), validates it, builds
  the program, and caches base features where asked. log_at_evals: train rows
  average the steps since the previous eval (a sweep's results.csv), instead
  of every log_every_steps."""
  num_devices = parallel.resolve_num_devices(config.num_devices)
  config = program_lib.resolve_batch_size(config, dataset.num_train, num_devices)
  total_steps = program_lib.total_train_steps(config, dataset.num_train)
  config_validation.validate_derived(config, dataset.num_train, total_steps,
                                     dataset.info.num_classes, num_devices)
  streaming = not isinstance(dataset, data.Dataset)
  use_pmap = config.parallelism == "pmap" and num_devices > 1
  if streaming and config.eval_train_examples:
    raise ConfigError("eval_train_examples", config.eval_train_examples,
                      "0 with the streaming pipeline (train_eval needs the in-memory one)")
  if len(members) > 1 and (streaming or use_pmap):
    raise ConfigError("dataset.pipeline" if streaming else "parallelism",
                      config.dataset.pipeline if streaming else config.parallelism,
                      "memory and jit for a sweep group of several models (they share the "
                      "device-resident data in one program)")
  program = program_lib.build(config, dataset.info, total_steps, pmap=use_pmap,
                              augment=not streaming)
  dataset = program.features_dataset(dataset, workdir, [m.config.seed for m in members])
  spe = dataset.num_train // config.batch_size
  eval_every = spe if config.eval_every_steps == -1 else config.eval_every_steps
  schedule = drivers.Schedule(total_steps, spe,
                              eval_every if log_at_evals else config.log_every_steps, eval_every,
                              config.checkpoint_every_steps)
  return Setup(config, program, dataset, schedule, num_devices, use_pmap, streaming)


def _initial_state(setup: Setup, members: List[Member]):
  states = [setup.program.create_state(m.config) for m in members]
  return states[0] if len(states) == 1 else drivers.stack(states)


@dataclasses.dataclass
class _Loop:
  """What the loop works with besides the state and the step."""
  setup: Setup
  rows: Any  # rows.MemberRows
  outputs: Outputs
  progress: Any  # metrics.Progress
  manager: Any  # orbax CheckpointManager
  eval_fn: Callable
  eval_source: Any
  splits: List[str]
  results: Dict[str, Dict[str, np.ndarray]]
  save: Callable  # checkpoint.save, or faults.py's wrapper of it.


def train_members(setup: Setup, members: List[Member], outputs: Outputs,
                  checkpoint_name: str = ""):
  """Trains the members together; returns outputs.results(...) at the end."""
  config, program, schedule = setup.config, setup.program, setup.schedule
  state = _initial_state(setup, members)
  num_params = sum(x.size for x in jax.tree.leaves(state.params)) // len(members)
  logger.info("%s on %s (%s): %s params, %d train examples, %d steps (%d per epoch)%s",
              config.model.name, setup.dataset.info.name, setup.dataset.info.source,
              f"{num_params:,}", setup.dataset.num_train, schedule.total_steps,
              schedule.steps_per_epoch,
              f", {len(members)} models in one vmapped program" if len(members) > 1 else "")
  summary.log_model_table(state.params, len(members))
  outputs.start(setup)
  manager = checkpoint.create_manager(outputs.workdir, config.keep_checkpoints, checkpoint_name)
  state, start_step, snapshot = checkpoint.restore_latest(manager, state)
  rows, progress = outputs.restore(start_step, snapshot, schedule, state)
  if start_step:
    logger.info("resumed from checkpoint at step %d", start_step)
  if setup.num_devices > 1:
    logger.info("%s data parallel over %d devices (%d per process)", config.parallelism,
                setup.num_devices, jax.local_device_count())
  state, chunks, eval_source = _driver(setup, members, state, rows, start_step, progress)
  splits = [s for s in EVAL_SPLITS if s in (eval_source.num_examples if setup.streaming
                                             else eval_source.arrays)]
  chunks, save = faults.install(outputs, chunks, checkpoint.save)  # Only where asked for.
  loop = _Loop(setup, rows, outputs, progress, manager, drivers.eval_fn(program, len(members)),
               eval_source, splits, {}, save)
  step = start_step
  profiler = summary.Profiler(config, outputs.workdir)
  try:
    with preemption.guard() as signalled:
      profiler.at(step)
      for state, new_step, pieces in chunks:
        rows.add(step + 1, pieces)
        if _after_chunk(loop, state, step, new_step):
          break
        step = new_step
        if step < schedule.total_steps and preemption.agreed(signalled.requested):
          _stop_preempted(loop, state, step, signalled)
        profiler.at(step)
    manager.wait_until_finished()
  finally:
    profiler.stop(step)
    manager.close()
    outputs.close()
  if "test" not in loop.results and step == schedule.total_steps:  # Resumed a finished run.
    loop.results["test"] = _eval(loop.eval_fn, state, eval_source, "test",
                                 config.eval_batch_size)
  return outputs.results(state, step, loop.results)


def _stop_preempted(loop: _Loop, state, step: int, signalled):
  """A signal arrived: the chunk and what was due after it are done; save
  (unless this step was just saved), mark the run preempted, and stop."""
  manager, outputs = loop.manager, loop.outputs
  manager.wait_until_finished()
  if step not in manager.all_steps():
    checkpoint.save(manager, step, state, outputs.snapshot(loop.rows, loop.progress))
    manager.wait_until_finished()
  outputs.preempted(step)
  raise preemption.Preempted(step, outputs.workdir, signalled.signal_name or "a peer's signal")


def _driver(setup: Setup, members, state, rows, start_step, progress):
  """(state placed for the driver, chunk iterator, eval source)."""
  config, schedule = setup.config, setup.schedule
  # The data order is the member's own: `config` is its group's, whose seed is
  # the first run of the group (a group trained one model at a time is several
  # single-member programs).
  seed = members[0].config.seed
  dp = parallel.DataParallel.create(1 if setup.use_pmap else setup.num_devices)
  if not setup.use_pmap:
    state = dp.replicate(state)
  if setup.streaming:
    batches = setup.dataset.train_batches(config.batch_size // jax.process_count(), seed,
                                          start_step)
    return state, drivers.streaming_chunks(batches, dp, state, setup.program.train_step,
                                           schedule, start_step, progress), setup.dataset
  # Under pmap the data stays uncommitted on one device; pmap splits each batch.
  pipe = pipeline.InMemoryPipeline(setup.dataset, config.batch_size, seed,
                                   place=jax.device_put if setup.use_pmap else dp.replicate,
                                   eval_train_examples=config.eval_train_examples)
  if setup.use_pmap:
    chunks = drivers.pmap_chunks(drivers.memory_batches(pipe, start_step), state,
                                 setup.program.train_step, setup.num_devices, schedule,
                                 start_step, progress)
  elif len(members) > 1:
    alive = [r.divergence is None for r in rows.members]
    chunks = drivers.members_chunks(pipe, dp, state, alive, [m.config.seed for m in members],
                                    setup.program.train_step, schedule, start_step, progress)
  else:
    chunks = drivers.memory_chunks(pipe, dp, state, setup.program.train_step, schedule,
                                   start_step, config.scan_epoch, progress)
  return state, chunks, pipe


def _eval(eval_fn, state, source, split: str, batch_size: int) -> Dict[str, np.ndarray]:
  """Mean loss and accuracy on a split, one value per member ([K])."""
  means = steps.eval_means(eval_fn, state, source.eval_batches(split, batch_size))
  return {k: np.atleast_1d(v) for k, v in means.items()}


def _after_chunk(loop: _Loop, state, step: int, new_step: int) -> bool:
  """Log rows, divergence, evals and checkpoints due after a chunk; True to stop."""
  setup, rows, outputs, progress = loop.setup, loop.rows, loop.outputs, loop.progress
  config, schedule = setup.config, setup.schedule
  done = new_step == schedule.total_steps
  boundaries = list(range((step // schedule.log_every + 1) * schedule.log_every, new_step + 1,
                          schedule.log_every))
  if done and (not boundaries or boundaries[-1] != new_step):
    boundaries.append(new_step)
  evaluate_now = done or crossed(schedule.eval_every, step, new_step)
  save_now = done or crossed(schedule.checkpoint_every, step, new_step)
  if not (boundaries or evaluate_now or save_now):
    return False
  rows.fetch()  # Waits for the device.
  # A model that cannot be frozen (K=1) logs, evaluates and saves nothing past
  # a non-finite step: its rows end before it, and the outputs decide the rest.
  stopped = [j for j, r in enumerate(rows.members) if r.divergence is not None
             and not outputs.freezes]
  if stopped:
    bad_step = rows.members[stopped[0]].divergence[0]
    boundaries = [b for b in boundaries if b < bad_step]
  if boundaries:
    train_rate = progress.rate(new_step)
    progress.mark(new_step)
    for j, member_rows in enumerate(rows.members):
      outputs.train_rows(j, list(member_rows.rows_through(boundaries)), train_rate)
  if stopped:
    loop.manager.wait_until_finished()
    outputs.diverged(stopped[0], rows.members[stopped[0]].divergence, state)
    return True
  if evaluate_now:
    lr = np.atleast_1d(jax.device_get(optim.learning_rate(
        state.opt_state, setup.program.lr_multiplier, state.step - 1)))
    for split in loop.splits:
      if split == "test" and not (config.test_every_eval or done):
        continue
      loop.results[split] = _eval(loop.eval_fn, state, loop.eval_source, split,
                                  config.eval_batch_size)
      outputs.eval_rows(new_step, split, loop.results[split], lr)
    outputs.evaluated(new_step, state, rows, done)
  if save_now:
    loop.save(loop.manager, new_step, state, outputs.snapshot(rows, progress))
    if jax.default_backend() == "cpu":
      # The save's threads (about 40 ms of CPU whatever the model's size)
      # would share the cores with the next chunk and slow it down; on an
      # accelerator they overlap training for free.
      loop.manager.wait_until_finished()
  if evaluate_now or save_now:
    progress.mark(new_step)  # Eval and checkpoint time are not training time.
  return False
