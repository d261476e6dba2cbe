"""Running a sweep's planned runs: groups of K value-only variants, each
trained by the engine as one program, writing into the runs' directories.

Each run's rows, status and TensorBoard events go to its own directory
(sweep_record.py), and the merged status.json and results.csv are refreshed
from them. A group's checkpoints (the stacked state, every member's pending
rows, which members diverged, the train time so far) live in
workdir/checkpoints/<group tag>, the tag a hash of its runs' ids, so a
killed sweep resumes mid-group and writes the rows an uninterrupted one
writes. With K=1 the group is a single run's program, not vmapped.
"""

import contextlib
import datetime
import functools
import hashlib
import logging
import math
import statistics
import time
from typing import Dict, List, Optional

import jax
import jax.numpy as jnp

from vgg_jax import metrics, preemption
from vgg_jax.errors import UserError
from vgg_jax.training import engine, program as program_lib, sweep_record
from vgg_jax.training import workdir as workdir_lib
from vgg_jax.training.rows import MemberRows, TrainRows, params_fingerprint

logger = logging.getLogger(__name__)


def group_tag(run_ids) -> str:
  """A group's checkpoint name: a hash of its runs' ids (in its member order)."""
  return "group-" + hashlib.sha256(",".join(run_ids).encode()).hexdigest()[:12]


def _final(status: Optional[Dict], total_steps: int) -> bool:
  """Whether a run needs no more training at this length: done (or frozen
  diverged) through total_steps, or a one-model run that diverged (ended)."""
  if not status or status.get("status") not in sweep_record.FINISHED:
    return False
  return status.get("step", 0) >= total_steps or bool(status.get("ended"))


def plan_parts(planned, statuses: Dict[str, Optional[Dict]], total_steps: int, k: int,
               workdir: str) -> List[List]:
  """This group's programs still to train, each a list of runs (sorted by id).

  Runs that trained together before and are not all finished resume together
  (their checkpoint holds their stacked state); runs never trained, and runs
  whose old group is not all here any more, start from step 0, k at a time.
  Finished runs are skipped. A run trained further than this config's length
  is refused: a shorter sweep cannot be made of it.
  """
  for p in planned:
    s = statuses[p.run_id]
    if s and s.get("status") == "done" and s.get("step", 0) > total_steps:
      raise UserError(f"{workdir}: run {p.name} trained {s['step']} steps, more than the "
                      f"{total_steps} this config asks for; use its num_epochs or "
                      "num_train_steps, or a new --workdir")
  by_tag, fresh = {}, []
  for p in planned:
    tag = (statuses[p.run_id] or {}).get("group")
    (by_tag.setdefault(tag, []) if tag else fresh).append(p)
  parts = []
  for tag, members in by_tag.items():
    members = sorted(members, key=lambda p: p.run_id)
    if all(_final(statuses[p.run_id], total_steps) for p in members):
      continue
    if group_tag([p.run_id for p in members]) == tag:
      parts.append(members)
    else:  # Its group's other runs are not in this list or shard.
      fresh += [p for p in members if not _final(statuses[p.run_id], total_steps)]
  fresh = sorted(fresh, key=lambda p: p.run_id)
  parts += [fresh[i:i + k] for i in range(0, len(fresh), k)]
  order = {p.run_id: i for i, p in enumerate(planned)}
  return sorted(parts, key=lambda part: min(order[p.run_id] for p in part))


class SweepProgress:
  """One line per eval: group g of G, runs done, best and median validation
  accuracy (and which run holds the best), diverged runs, steps/s, ETA."""

  def __init__(self, num_runs: int, finished: Dict[str, Dict]):
    self.num_runs = num_runs
    self.finished = dict(finished)  # run name -> {"accuracy", "split", "status"}
    self.latest: Dict[str, Dict] = {}
    self.parts: List[int] = []  # Steps per program still to train, in order.
    self.part = 0

  def add_part(self, steps: int) -> None:
    self.parts.append(steps)

  def record(self, name: str, accuracy: float, split: str, status: str) -> None:
    self.latest[name] = {"accuracy": accuracy, "split": split, "status": status}
    if status in sweep_record.FINISHED:
      self.finished[name] = self.latest[name]

  def line(self, step: int, total: int, rate: float) -> str:
    runs = {**self.latest, **self.finished}
    scored = {n: r["accuracy"] for n, r in runs.items()
              if r["status"] != "diverged" and math.isfinite(r["accuracy"])}
    split = next((r["split"] for r in runs.values()), "validation")
    text = (f"sweep group {self.part}/{len(self.parts)} step {step}/{total} | runs "
            f"{len(self.finished)}/{self.num_runs} done")
    if scored:
      best = max(scored, key=scored.get)
      text += (f" | {split} acc best {scored[best]:.4f} ({best}) median "
               f"{statistics.median(scored.values()):.4f}")
    diverged = sum(r["status"] == "diverged" for r in runs.values())
    text += f" | {diverged} diverged"
    if math.isfinite(rate) and rate > 0:
      left = (total - step) + sum(self.parts[self.part:])
      text += f" | {rate:.1f} steps/s | ETA {datetime.timedelta(seconds=round(left / rate))}"
    return text


class GroupOutputs:
  """What a sweep group writes: each run's rows, status, TensorBoard events and
  probes in its directory, then the merged view."""

  PROBE_EXAMPLES = 512
  MERGE_EVERY_S = 2.0  # The merged view is refreshed at most this often mid-group.

  def __init__(self, workdir: str, members: List[engine.Member], planned, sweep_start: float,
               progress: SweepProgress, probe=None):
    self.workdir, self.members, self.planned = workdir, members, planned
    self.records = [sweep_record.RunRecord(workdir, m.name, m.run_id) for m in members]
    self.sweep_start, self.sweep_progress, self.probe = sweep_start, progress, probe
    self.tag = group_tag([m.run_id for m in members])
    self.freezes = len(members) > 1  # vmapped: a diverged member keeps its last finite state.
    self.fault_points = {"sweep_eval": "evaluated"}  # faults.py: after an eval's rows.
    self.pending_train, self.pending_eval, self.last = {}, {}, {}
    self.status: Dict[str, Dict] = {}
    self._unwritten = set()  # Members whose status changed since it was last written.
    self.lr = None
    self.wall_offset = 0.0
    self._merged_at = 0.0

  def start(self, setup: engine.Setup) -> None:
    self.setup = setup
    if self.probe is not None:
      x, y = setup.dataset.splits["train"]
      n = min(self.PROBE_EXAMPLES, len(y))
      images = setup.program.eval_preprocess(jnp.asarray(x[:n]))
      vmapped = jax.jit(jax.vmap(functools.partial(self.probe, head=setup.program.head),
                                 in_axes=(0, None, None)))
      self._probe = lambda states: jax.device_get(vmapped(states, images, jnp.asarray(y[:n])))

  def _wall(self) -> float:
    return time.time() - self.sweep_start + self.wall_offset

  def _set_status(self, j: int, status: str, step: int, write: bool = True, **extra) -> None:
    m = self.members[j]
    self.status[m.run_id] = {"status": status, "step": step, "group": self.tag,
                             "total_steps": self.setup.schedule.total_steps,
                             "shard": m.shard, **extra}
    if write:
      self.records[j].write_status(**self.status[m.run_id])
    else:
      self._unwritten.add(j)

  def merge(self, force: bool = True) -> None:
    """Writes the runs' statuses held back, then the merged view (mid-group,
    at most every MERGE_EVERY_S: a running run's step may lag that much)."""
    if force or time.time() - self._merged_at >= self.MERGE_EVERY_S:
      for j in sorted(self._unwritten):
        self.records[j].write_status(**self.status[self.members[j].run_id])
      self._unwritten.clear()
      sweep_record.write_merged(self.workdir, self.planned)
      self._merged_at = time.time()

  def restore(self, start_step: int, snapshot: Dict, schedule, state):
    for record in self.records:
      record.restart(start_step)
    snaps = snapshot.get("members") or [{}] * len(self.members)
    rows = MemberRows([TrainRows(start_step - len(s.get("steps", [])), s) for s in snaps])
    for member_rows, diverged in zip(rows.members, snapshot.get("diverged", [None] * len(snaps))):
      if diverged is not None:
        member_rows.divergence = (diverged[0], diverged[1], None)
    self.wall_offset = snapshot.get("wall_seconds", 0.0) - (time.time() - self.sweep_start)
    self.progress = metrics.Progress(schedule.total_steps, snapshot.get("train_seconds", 0.0))
    for j, (m, record) in enumerate(zip(self.members, self.records)):
      diverged = rows.members[j].divergence is not None
      self._set_status(j, "diverged" if diverged else "running", start_step)
      events = record.events()
      if events is not None:
        events.restart(start_step)
        events.hparams({**m.hparams, "run_id": m.run_id}, trial_id=m.name)
    self.merge()
    logger.info("sweep group %d/%d: %d run(s) (%s), %d steps each%s",
                self.sweep_progress.part, len(self.sweep_progress.parts), len(self.members),
                ", ".join(m.name for m in self.members[:4])
                + (", ..." if len(self.members) > 4 else ""),
                schedule.total_steps, f", resumed at step {start_step}" if start_step else "")
    if start_step == 0:
      self._write_probes(state, 0)
    return rows, self.progress

  def snapshot(self, rows: MemberRows, progress) -> Dict:
    return {"members": rows.snapshots(),
            "diverged": [None if r.divergence is None else list(r.divergence[:2])
                         for r in rows.members],
            "train_seconds": progress.train_seconds, "wall_seconds": self._wall()}

  def train_rows(self, j: int, logged, train_rate: float) -> None:
    if logged:
      self.pending_train[j] = logged[-1]

  def eval_rows(self, step: int, split: str, means, lr) -> None:
    self.pending_eval[split] = means
    self.lr = lr

  def _row(self, step: int, split: str, means: Dict, j: int, status: str) -> Dict:
    spe = self.setup.schedule.steps_per_epoch
    # The optimizer's float32 value, written as its shortest decimal (0.003).
    lr = math.nan if self.lr is None else float(str(self.lr[j if len(self.lr) > 1 else 0]))
    return {"step": step, "epoch": round(step / spe, 4), "split": split,
            "loss": float(means["loss"]), "accuracy": float(means["accuracy"]),
            "learning_rate": lr, "grad_norm": float(means.get("grad_norm", math.nan)),
            "status": status, "train_seconds": round(self.progress.train_seconds, 4),
            "wall_seconds": round(self._wall(), 3)}

  def _write_rows(self, j: int, rows: List[Dict], status: str) -> None:
    m, record = self.members[j], self.records[j]
    for row in rows:
      self.last.setdefault(m.run_id, {})[row["split"]] = row
    record.append([{k: ("" if isinstance(v, float) and math.isnan(v) and k == "grad_norm"
                        else v) for k, v in row.items()} for row in rows])
    events = record.events()
    if events is not None:
      for row in rows:
        values = {f"{row['split']}/{k}": row[k] for k in ("loss", "accuracy")}
        if row["split"] == "train":
          values.update({"train/learning_rate": row["learning_rate"],
                         "train/grad_norm": row["grad_norm"]})
        events.scalars(row["step"], {k: v for k, v in values.items() if math.isfinite(v)})
      events.flush()
    split = next((s for s in ("validation", "test", "train")
                  if s in self.last[m.run_id]), None)
    if split is not None:
      self.sweep_progress.record(m.name, self.last[m.run_id][split]["accuracy"], split, status)

  def evaluated(self, step: int, state, rows: MemberRows, done: bool) -> None:
    self._write_probes(state, step)  # Before "done" lands.
    for j, _ in enumerate(self.members):
      status = "diverged" if rows.members[j].divergence is not None else (
          "done" if done else "running")
      member_rows = []
      if j in self.pending_train:
        member_rows.append(self._row(step, "train", self.pending_train[j][1], j, "running"))
      for split, means in self.pending_eval.items():
        member_rows.append(self._row(step, split, {k: v[j] for k, v in means.items()}, j,
                                     "running"))
      member_rows[-1]["status"] = status
      self._write_rows(j, member_rows, status)
      if not done:
        self._set_status(j, status, step, write=False)
    self.pending_train, self.pending_eval = {}, {}
    if not done:
      self.merge(force=False)
    logger.info("%s", self.sweep_progress.line(step, self.setup.schedule.total_steps,
                                               self.progress.average_rate()))

  def diverged(self, j: int, divergence, state) -> None:
    """A model that cannot be frozen (K=1) diverged: its last row says so."""
    out = []
    if j in self.pending_train:
      out.append(self._row(self.pending_train[j][0], "train", self.pending_train[j][1], j,
                           "running"))
    out.append(self._row(divergence[0], "train", {"loss": divergence[1], "accuracy": math.nan},
                         j, "diverged"))
    self._write_rows(j, out, "diverged")
    self._set_status(j, "diverged", divergence[0], ended=True)
    self.merge()
    logger.info("sweep run %s diverged at step %d", self.members[j].name, divergence[0])

  def _write_probes(self, state, step: int) -> None:
    if self.probe is None:
      return
    if len(self.members) == 1:
      state = jax.tree.map(lambda x: jnp.asarray(x)[None], state)
    values = self._probe(state)
    for j, record in enumerate(self.records):
      record.append([{"step": step, "name": name, "value": float(v[j])}
                     for name, v in sorted(values.items())], sweep_record.PROBES_FILE)

  def preempted(self, step: int) -> None:
    for j, m in enumerate(self.members):
      if self.status.get(m.run_id, {}).get("status") != "diverged":
        self._set_status(j, "preempted", step)
    self.merge()

  def close(self) -> None:
    for record in self.records:
      record.close()

  def results(self, state, step: int, results) -> List[Dict]:
    """One dict per member; each run's status gets its params fingerprint."""
    out = []
    for j, m in enumerate(self.members):
      params = state.params if len(self.members) == 1 else jax.tree.map(lambda x: x[j],
                                                                          state.params)
      last = self.last.get(m.run_id, {})
      statuses = [row["status"] for row in last.values() if row["status"] != "running"]
      current = self.status.get(m.run_id, {}).get("status", "running")
      if statuses:
        status = statuses[-1]
      else:  # Resumed at its end (killed after its last checkpoint): no rows this time.
        status = "diverged" if current == "diverged" else (
            "done" if step == self.setup.schedule.total_steps else current)
      if status != "diverged" or not self.status.get(m.run_id, {}).get("ended"):
        self._set_status(j, status, step, params_sha256=params_fingerprint(params))
      final = {f"{s}_{k}": row[k] for s, row in last.items() if s != "train"
               for k in ("loss", "accuracy")}
      out.append({"run_id": m.run_id, "name": m.name, **m.overrides, **final, "status": status})
    self.merge()
    return out


def run_planned(workdir: str, planned, mine, shard: str, probe, load_once, begin) -> List[Dict]:
  """Trains the runs of `mine` (this shard's) not finished in workdir, group
  by group; `planned` is the whole list (for the merged view). begin() makes
  the sweep's first writes, once the data are loaded and the plan holds."""
  everything = [p.as_dict() for p in planned]
  swept_keys = list(dict.fromkeys(k for p in planned for k in p.overrides))
  programs, finished = _programs(workdir, mine, load_once)
  logger.info("sweep: %d runs, %d in shard %s, %d already finished, %d to train in %d "
              "program(s)", len(planned), len(mine), shard, len(finished),
              sum(len(p[2]) for p in programs), len(programs))
  begin()
  progress = SweepProgress(len(mine), finished)
  for _, _, _, total in programs:
    progress.add_part(total)
  results, start = [], time.time()
  with preemption.guard() as signalled:
    for config, dataset, part, total in programs:
      if preemption.agreed(signalled.requested):
        raise preemption.Preempted(None, workdir, signalled.signal_name or "a peer's signal")
      progress.part += 1
      with contextlib.ExitStack() as stack:
        if not _lock_runs(stack, workdir, part):
          continue
        members = [engine.Member(p.config, run_id=p.run_id, overrides=p.overrides,
                                 name=p.name, shard=p.shard,
                                 hparams=_hparams(p, swept_keys)) for p in part]
        outputs = GroupOutputs(workdir, members, everything, start, progress, probe)
        setup = engine.set_up(config, dataset, members, workdir, log_at_evals=True)
        results += engine.train_members(setup, members, outputs, outputs.tag)
  sweep_record.write_merged(workdir, everything)
  order = {p.run_id: i for i, p in enumerate(planned)}
  return sorted(results, key=lambda r: order[r["run_id"]])


def _programs(workdir: str, mine, load_once):
  """([(config, dataset, runs, total steps) per program still to train],
  {name: last score} of the runs already finished), group by group."""
  from vgg_jax import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
  groups: Dict[str, List] = {}
  for p in mine:
    groups.setdefault(p.group_key, []).append(p)
  datasets, programs, finished = {}, [], {}
  for members in groups.values():
    config = members[0].config
    dataset = load_once(datasets, config)
    resolved = program_lib.resolve_batch_size(config, dataset.num_train, _num_devices(config))
    total = program_lib.total_train_steps(resolved, dataset.num_train)
    records = {p.run_id: sweep_record.RunRecord(workdir, p.name, p.run_id) for p in members}
    statuses = {i: r.status() for i, r in records.items()}
    for p in members:
      if _final(statuses[p.run_id], total):
        finished[p.name] = _last_score(records[p.run_id], statuses[p.run_id]["status"])
    k = sweep_lib.vmap_size(config, dataset.info, len(members), dataset.num_train)
    for part in plan_parts(members, statuses, total, k, workdir):
      programs.append((config, dataset, part, total))
  return programs, finished


def _lock_runs(stack: contextlib.ExitStack, workdir: str, part) -> bool:
  """Takes the locks of a program's runs; False (with a warning) where
  another process is training one of them."""
  try:
    for p in part:
      stack.enter_context(workdir_lib.locked(sweep_record.RunRecord(workdir, p.name, p.run_id).dir,
                                             primary=jax.process_index() == 0))
  except workdir_lib.WorkdirBusyError as e:
    logger.warning("sweep: skipped %d run(s) that another process is training: %s", len(part), e)
    return False
  return True


def _num_devices(config) -> int:
  from vgg_jax import parallel  # pylint: disable=g-import-not-at-top
  return parallel.resolve_num_devices(config.num_devices)


def _hparams(p, keys) -> Dict:
  """A run's HParams: its values of every key the sweep varies."""
  return {k: p.flat.get(k, p.overrides.get(k)) for k in keys}


def _last_score(record, status: str) -> Dict:
  rows = record.rows()
  for split in ("validation", "test", "train"):
    mine = [r for r in rows if r["split"] == split]
    if mine:
      return {"accuracy": float(mine[-1]["accuracy"] or "nan"), "split": split,
              "status": status}
  return {"accuracy": math.nan, "split": "validation", "status": status}
