"""Drivers: the compiled forms of training, each yielding (state, step, metrics) chunks.

Every driver yields (state after the chunk, step reached, metrics): the
metrics of the chunk's consecutive pieces (Schedule.pieces; one piece per
chunk for streaming and pmap), each with its leading axis over members
([K, steps, ...]), so the loop reads one shape whatever ran:

- memory_chunks: the in-memory pipeline, one lax.scan per chunk (or one
  step per call without scan_epoch), jit data parallel over a mesh; K=1,
  the program is not vmapped, so a single run pays nothing for sweeps;
- members_chunks: K models vmapped into one program (a sweep group), each
  with its own data order; a diverged member is frozen, its siblings train on;
- streaming_chunks: tf.data batches, one step per call;
- pmap_chunks: the pmap form, one step per call.

In-memory chunks end at epoch ends and eval points, so evals land exactly
every eval_every steps. Each chunk length compiles once, ahead of time,
with the progress clock restarted after it, so compile time stays out of
the throughput and train_seconds.
"""

import dataclasses
import functools
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import metrics, parallel
from vgg_jax.data import pipeline
from vgg_jax.training import steps, summary
from vgg_jax.training.program import PMAP_AXIS


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When a run logs, evaluates and saves, in steps."""
  total_steps: int
  steps_per_epoch: int
  log_every: int
  eval_every: int
  checkpoint_every: int

  def chunk_length(self, step: int, scan_epoch: bool = True) -> int:
    """Steps from `step` to the next epoch end, eval point or the end."""
    if not scan_epoch:
      return 1
    epoch_end = (step // self.steps_per_epoch + 1) * self.steps_per_epoch
    next_eval = (step // self.eval_every + 1) * self.eval_every
    return min(epoch_end, next_eval, self.total_steps) - step

  def pieces(self, length: int):
    """How a chunk of `length` steps runs, as (offset, size) programs: whole
    when it has the run's usual length (an epoch, or eval_every steps), else
    in power-of-two pieces (power_of_two_pieces), so that the odd lengths
    where epochs and evals interleave share a few programs."""
    usual = min(self.steps_per_epoch, self.eval_every, self.total_steps)
    return [(0, length)] if length == usual else power_of_two_pieces(length)


def _members_axis(tree):
  return jax.tree.map(lambda x: x[None], tree)


def _metrics_as_members(fn, new_axes: int):
  """fn, whose (state, metrics) come back with `new_axes` leading axes of 1
  on the metrics (a member axis, and a steps axis for a single step), added
  inside the compiled program: eagerly they were a dispatch per metric per
  chunk (11 ms an epoch of a small MLP, on the training clock)."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    state, metrics_tree = fn(*args, **kwargs)
    return state, jax.tree.map(lambda x: x[(None,) * new_axes], metrics_tree)

  return wrapped


def ahead_of_time(jitted, *args, examples: int = 0, **static):
  """jitted compiled now (so compile time stays off the clock), as a callable
  of the non-static args, with a "compiling ..." line and one saying how long
  it took (`examples`: how many examples one step trains on, for its FLOPs
  per example: XLA's cost analysis counts a scanned loop's body once, so a
  chunk's count is one step's). Under jax_debug_nans the jitted function itself: only it checks
  its outputs and re-runs op by op to name the culprit."""
  if jax.config.jax_debug_nans:
    return functools.partial(jitted, **static)
  what = (f"the train program ({static['length']} steps"
          f"{', freezing diverged models' if static.get('freeze') else ''})"
          if "length" in static else "the train step")
  return summary.log_compile(what, lambda: jitted.lower(*args, **static), examples)


def power_of_two_pieces(length: int):
  """A chunk of `length` steps as (offset, size) pieces whose sizes are
  distinct powers of two, largest first (36 -> (0, 32), (32, 4)). A run then
  compiles one program per size, at most log2 of its longest chunk, where one
  per distinct chunk length cost a sweep group 9 compiles (epochs of 44
  steps, evals every 40: chunks of 40, 4, 36, 8, 32, 12, ...). The steps, and
  so the numbers, are the same: the resume tests already cut chunks anywhere."""
  offset, pieces = 0, []
  for bit in reversed(range(length.bit_length())):
    if length >> bit & 1:
      pieces.append((offset, 1 << bit))
      offset += 1 << bit
  return pieces


def _in_pieces(compiled: dict, chunk, carry: tuple, data: tuple, step: int, first: int,
               length: int, schedule: Schedule, progress: metrics.Progress, num_devices: int,
               examples: int, **static):
  """Runs `length` steps from batch `first` of the epoch as schedule.pieces,
  compiling each piece size once (compiled: {(size, *static values): program}).
  chunk(*carry, *data, first, length=, **static) -> (*carry, metrics).
  Returns (carry, [each piece's metrics])."""
  pieces = []
  for offset, size in schedule.pieces(length):
    key = (size, *static.values())
    if key not in compiled:
      compiled[key] = ahead_of_time(chunk, *carry, *data, first + offset, length=size,
                                    examples=examples, **static)
      progress.mark(step + offset)
    *carry, stacked = parallel.bounded_dispatch(compiled[key](*carry, *data, first + offset),
                                                num_devices)
    pieces.append(stacked)
  return tuple(carry), pieces


class _Orders:
  """The epoch permutation(s) on the device, computed once per epoch."""

  def __init__(self, make):
    self._make, self._epoch, self._order = make, None, None

  def __call__(self, epoch: int):
    if epoch != self._epoch:
      self._epoch, self._order = epoch, self._make(epoch)
    return self._order


def memory_chunks(pipe: pipeline.InMemoryPipeline, dp: parallel.DataParallel, state,
                  step_fn: Callable, schedule: Schedule, start_step: int, scan_epoch: bool,
                  progress: metrics.Progress) -> Iterator:
  """One model on the in-memory pipeline (see the module docstring)."""
  images, labels = pipe.arrays["train"]
  sharding = dp.batch_sharding if dp.num_devices > 1 else None
  chunk = jax.jit(_metrics_as_members(functools.partial(
      steps.train_chunk, batch_size=pipe.batch_size, step_fn=step_fn, batch_sharding=sharding), 1),
                  static_argnames="length", donate_argnums=0)
  orders, compiled = _Orders(pipe.order), {}
  step, spe = start_step, pipe.steps_per_epoch
  while step < schedule.total_steps:
    epoch, first = divmod(step, spe)
    length = schedule.chunk_length(step, scan_epoch)
    (state,), pieces = _in_pieces(compiled, chunk, (state,), (images, labels, orders(epoch)),
                                  step, first, length, schedule, progress, dp.num_devices,
                                  examples=pipe.batch_size)
    step += length
    yield state, step, pieces


def members_chunks(pipe: pipeline.InMemoryPipeline, dp: parallel.DataParallel, states, alive,
                   seeds, step_fn: Callable, schedule: Schedule, start_step: int,
                   progress: metrics.Progress) -> Iterator:
  """K stacked models in one vmapped program; `alive` (bool [K]) marks the
  members still training (False: frozen at their last finite state).

  While every member is alive, chunks run without the per-step freeze; a
  chunk in which one diverges is rerun from a copy of its start with the
  freeze (steps.members_chunk), so the result is what freezing every step
  gives, and so is every later chunk.
  """
  images, labels = pipe.arrays["train"]
  sharding = dp.batch_sharding if dp.num_devices > 1 else None
  chunk = jax.jit(functools.partial(steps.members_chunk, batch_size=pipe.batch_size,
                                    step_fn=step_fn, batch_sharding=sharding),
                  static_argnames=("length", "freeze"), donate_argnums=(0, 1))
  n = pipe.num_examples["train"]
  shared = len(set(seeds)) == 1  # One seed, one order, one batch (see members_chunk).

  def make_orders(epoch):
    perms = [np.asarray(pipeline.epoch_permutation(s, epoch, n))
             for s in (seeds[:1] if shared else seeds)]
    return dp.replicate(perms[0] if shared else np.stack(perms))

  orders, compiled = _Orders(make_orders), {}

  def run(states, alive, epoch, first, length, freeze):
    (states, alive), pieces = _in_pieces(
        compiled, chunk, (states, alive), (images, labels, orders(epoch)), step, first, length,
        schedule, progress, dp.num_devices, examples=pipe.batch_size * len(seeds),
        freeze=freeze)
    return states, alive, pieces

  freeze = not all(alive)
  alive = dp.replicate(np.asarray(alive, bool))
  step, spe = start_step, pipe.steps_per_epoch
  while step < schedule.total_steps:
    epoch, first = divmod(step, spe)
    length = schedule.chunk_length(step)
    start = None if freeze else jax.tree.map(jnp.copy, (states, alive))
    new_states, new_alive, pieces = run(states, alive, epoch, first, length, freeze)
    if not freeze and not np.all(jax.device_get(new_alive)):
      freeze = True  # A member diverged in this chunk: redo it, freezing that member.
      new_states, new_alive, pieces = run(*start, epoch, first, length, freeze)
    states, alive = new_states, new_alive
    step += length
    yield states, step, pieces


def memory_batches(pipe: pipeline.InMemoryPipeline, start_step: int) -> Iterator[dict]:
  """Global batches gathered on the default device, one per step (for pmap)."""
  images, labels = pipe.arrays["train"]
  gather = jax.jit(pipeline.gather_batch, static_argnames="batch_size")
  step = start_step
  while True:
    epoch, index = divmod(step, pipe.steps_per_epoch)
    order = pipe.order(epoch)
    for i in range(index, pipe.steps_per_epoch):
      yield gather(images, labels, order, i, batch_size=pipe.batch_size)
    step = (epoch + 1) * pipe.steps_per_epoch


def streaming_chunks(batches, dp: parallel.DataParallel, state, step_fn: Callable,
                     schedule: Schedule, start_step: int, progress: metrics.Progress):
  """One model on tf.data batches, one step per call."""
  from vgg_jax.data import streaming  # pylint: disable=g-import-not-at-top
  batches = streaming.prefetch_to_device(batches, place=dp.shard_batch)
  compiled = None
  for step in range(start_step + 1, schedule.total_steps + 1):
    batch = next(batches)
    if compiled is None:
      compiled = ahead_of_time(jax.jit(_metrics_as_members(step_fn, 2), donate_argnums=0),
                               state, batch, examples=len(jax.tree.leaves(batch)[0]))
      progress.mark(step - 1)
    state, step_metrics = parallel.bounded_dispatch(compiled(state, batch), dp.num_devices)
    yield state, step, [step_metrics]


def pmap_chunks(batches, state, step_fn: Callable, num_devices: int, schedule: Schedule,
                start_step: int, progress: metrics.Progress):
  """The pmap form: state with a leading device axis, batches split per device.

  Yields one copy of the state (eval and checkpoints use it); the metrics
  are pmean'ed already.
  """
  p_step = jax.pmap(functools.partial(step_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS,
                    devices=jax.local_devices()[:num_devices], donate_argnums=0)
  state = parallel.replicate_for_pmap(state, num_devices)
  summary.logger.info("compiling the pmap train step ...")
  started = time.perf_counter()
  for step in range(start_step + 1, schedule.total_steps + 1):
    batch = parallel.split_for_pmap(next(batches), num_devices)
    state, step_metrics = parallel.bounded_dispatch(p_step(state, batch), num_devices)
    if step == start_step + 1:
      jax.block_until_ready(step_metrics)  # Leave the compile out of steps/s.
      summary.logger.info("compiled and ran the first pmap step in %.1f s",
                          time.perf_counter() - started)
      progress.mark(step)
    yield (parallel.unreplicate(state), step,
           [_members_axis(jax.tree.map(lambda x: x[0, None], step_metrics))])


def eval_fn(program, num_members: int = 1) -> Callable:
  """The compiled eval step: one model, or K stacked ones (vmapped)."""
  if num_members == 1:
    return jax.jit(program.eval_step)
  return jax.jit(jax.vmap(program.eval_step, in_axes=(0, None, None)))


def stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
