"""A sweep group: K value-only variants trained by the engine as one program.

The group's outputs are tidy rows in results.csv (one per run per eval) and
the sweep's status.json; its checkpoints (the stacked state, every member's
pending rows, which members diverged, the train time so far) live in
workdir/checkpoints/<group tag>, so a killed sweep resumes mid-group and
writes the rows an uninterrupted one writes. With K=1 the group is a single
run's program, not vmapped.
"""

import csv
import functools
import hashlib
import json
import logging
import math
import os
import time
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp

from vgg_jax import faults, metrics
from vgg_jax.training import engine, program as program_lib
from vgg_jax.training.rows import MemberRows, TrainRows, params_fingerprint

logger = logging.getLogger(__name__)


class ResultsWriter:
  """results.csv: one tidy row per run per eval (process 0 writes).

  Splits: "train" averages the training minibatches since the previous eval
  (dropout and augmentation on); "train_eval" (with config.eval_train_examples),
  "validation" and "test" are evaluations. train_seconds counts the group's
  training time only (no compile, no eval): with K models vmapped together it
  is their shared time. A group that resumes from a checkpoint first drops its
  runs' rows past the checkpoint (restart), so no step is written twice.
  """

  FIELDS = ("step", "epoch", "split", "loss", "accuracy", "status", "train_seconds",
            "wall_seconds")
  PROBE_FIELDS = ("step", "name", "value")

  def __init__(self, path: str, keys: List[str], fields: Sequence[str] = FIELDS):
    self.path, self.keys, self.fields = path, keys, tuple(fields)
    self.enabled = jax.process_index() == 0

  def _read(self) -> List[Dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path, newline="") as f:
      rows = list(csv.DictReader(f))
    # A row cut off by a kill mid-write has empty trailing fields.
    return [r for r in rows if r.get(self.fields[-1]) not in (None, "")]

  def finished_runs(self) -> Dict[int, str]:
    """Run id -> its final status, for runs that finished (done or diverged)."""
    return {int(r["run_id"]): r["status"] for r in self._read()
            if r.get("status") in ("done", "diverged")}

  def restart(self, run_ids, through_step: int) -> None:
    """Drops the rows of `run_ids` after through_step (all of them for 0)."""
    if not self.enabled:
      return
    run_ids = {str(i) for i in run_ids}
    kept = [r for r in self._read()
            if r["run_id"] not in run_ids or int(r["step"]) <= through_step]
    tmp = self.path + ".tmp"
    with open(tmp, "w", newline="") as f:
      out = csv.writer(f)
      out.writerow(["run_id", *self.keys, *self.fields])
      for r in kept:
        out.writerow([r["run_id"], *[r.get(k, "") for k in self.keys],
                      *[r.get(k, "") for k in self.fields]])
    os.replace(tmp, self.path)

  def write_many(self, rows) -> None:
    if not self.enabled:
      return
    with open(self.path, "a", newline="") as f:
      out = csv.writer(f)
      for run_id, overrides, row in rows:
        out.writerow([run_id, *[overrides.get(k, "") for k in self.keys],
                      *[row[k] for k in self.fields]])


class SweepStatus:
  """The sweep's status.json: running or done, and each run's status and step."""

  def __init__(self, workdir: str, run_ids, finished: Dict[int, str]):
    self.workdir = workdir
    self.runs = {str(i): {"status": finished.get(i, "pending")} for i in run_ids}

  def update(self, run_id: int, status: str, step: int) -> None:
    self.runs[str(run_id)] = {"status": status, "step": step}
    self.write()

  def write(self) -> None:
    statuses = {r["status"] for r in self.runs.values()}
    overall = ("preempted" if "preempted" in statuses else
               "running" if statuses & {"pending", "running"} else "done")
    metrics.write_status(self.workdir, overall, runs=self.runs)


def group_tag(members: List[engine.Member]) -> str:
  """The group's checkpoint name: its first run and a hash of its runs' configs."""
  configs = json.dumps([[m.run_id, m.config.to_dict()] for m in members], sort_keys=True,
                       default=str)
  return f"group-{members[0].run_id}-{hashlib.sha256(configs.encode()).hexdigest()[:10]}"


class GroupOutputs:
  """What a sweep group writes: results.csv rows, probes.csv, status.json."""

  PROBE_EXAMPLES = 512

  def __init__(self, workdir: str, members: List[engine.Member], writer: ResultsWriter,
               status: SweepStatus, sweep_start: float, probe=None,
               probe_writer: Optional[ResultsWriter] = None):
    self.workdir, self.members, self.writer, self.status = workdir, members, writer, status
    self.sweep_start, self.probe, self.probe_writer = sweep_start, probe, probe_writer
    self.freezes = len(members) > 1  # vmapped: a diverged member keeps its last finite state.
    self.pending_train, self.pending_eval, self.last = {}, {}, {}
    self.wall_offset = 0.0

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

  def restore(self, start_step: int, snapshot: Dict, schedule, state):
    run_ids = [m.run_id for m in self.members]
    self.writer.restart(run_ids, start_step)
    if self.probe_writer is not None:
      self.probe_writer.restart(run_ids, start_step)
    snaps = snapshot.get("members") or [{}] * len(self.members)
    rows = MemberRows([TrainRows(start_step - len(s.get("steps", [])), s) for s in snaps])
    for member_rows, diverged in zip(rows.members, snapshot.get("diverged", [None] * len(snaps))):
      if diverged is not None:
        member_rows.divergence = (diverged[0], diverged[1], None)
    self.wall_offset = snapshot.get("wall_seconds", 0.0) - (time.time() - self.sweep_start)
    self.progress = metrics.Progress(schedule.total_steps, snapshot.get("train_seconds", 0.0))
    for m in self.members:
      self.status.runs[str(m.run_id)] = {"status": "running", "step": start_step}
    self.status.write()
    logger.info("sweep group of %d (%s): %d steps each%s", len(self.members),
                ", ".join(f"{k}={v}" for k, v in self.members[0].overrides.items()
                          if k not in program_lib.INJECTED_KEYS) or "values only",
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

  def _row(self, step: int, split: str, loss, accuracy, status: str) -> Dict:
    spe = self.setup.schedule.steps_per_epoch
    return {"step": step, "epoch": round(step / spe, 4), "split": split, "loss": float(loss),
            "accuracy": float(accuracy), "status": status,
            "train_seconds": round(self.progress.train_seconds, 4),
            "wall_seconds": round(self._wall(), 3)}

  def evaluated(self, step: int, state, rows: MemberRows, done: bool) -> None:
    out = []
    for j, m in enumerate(self.members):
      status = "diverged" if rows.members[j].divergence is not None else (
          "done" if done else "running")
      member_rows = []
      if j in self.pending_train:
        means = self.pending_train[j][1]
        member_rows.append(self._row(step, "train", means["loss"], means["accuracy"],
                                     "running"))
      for split, means in self.pending_eval.items():
        member_rows.append(self._row(step, split, means["loss"][j], means["accuracy"][j],
                                     "running"))
      member_rows[-1]["status"] = status
      for row in member_rows:
        self.last.setdefault(m.run_id, {})[row["split"]] = row
        out.append((m.run_id, m.overrides, row))
      self.status.runs[str(m.run_id)] = {"status": status, "step": step}
    self._write_probes(state, step)  # Before "done" lands.
    self.writer.write_many(out)
    self.status.write()
    self.pending_train, self.pending_eval = {}, {}
    faults.maybe_kill("sweep_eval", step)
    split = next((s for s in ("validation", "test", "train") if s in self.last[
        self.members[0].run_id]), None)
    if split is not None:
      logger.info("sweep step %d/%d: %s accuracy %s", step, self.setup.schedule.total_steps,
                  split, " ".join(f"{self.last[m.run_id][split]['accuracy']:.3f}"
                                  for m in self.members))

  def diverged(self, j: int, divergence, state) -> None:
    """A model that cannot be frozen (K=1) diverged: its last row says so."""
    m = self.members[j]
    out = []
    if j in self.pending_train:
      means = self.pending_train[j][1]
      out.append(self._row(self.pending_train[j][0], "train", means["loss"], means["accuracy"],
                           "running"))
    out.append(self._row(divergence[0], "train", divergence[1], math.nan, "diverged"))
    for row in out:
      self.last.setdefault(m.run_id, {})[row["split"]] = row
    self.writer.write_many([(m.run_id, m.overrides, row) for row in out])
    self.status.update(m.run_id, "diverged", divergence[0])
    logger.info("sweep run %s diverged at step %d", m.run_id, divergence[0])

  def _write_probes(self, state, step: int) -> None:
    if self.probe is None or self.probe_writer is None:
      return
    if len(self.members) == 1:
      state = jax.tree.map(lambda x: jnp.asarray(x)[None], state)
    values = self._probe(state)
    self.probe_writer.write_many([
        (m.run_id, m.overrides, {"step": step, "name": name, "value": float(v[j])})
        for j, m in enumerate(self.members) for name, v in sorted(values.items())])

  def preempted(self, step: int) -> None:
    for m in self.members:
      self.status.runs[str(m.run_id)] = {"status": "preempted", "step": step}
    self.status.write()

  def close(self) -> None:
    pass

  def results(self, state, step: int, results) -> List[Dict]:
    """One dict per member; status.json gets each member's params fingerprint."""
    out = []
    for j, m in enumerate(self.members):
      params = state.params if len(self.members) == 1 else jax.tree.map(lambda x: x[j],
                                                                          state.params)
      self.status.runs[str(m.run_id)]["params_sha256"] = params_fingerprint(params)
      last = self.last.get(m.run_id, {})
      final = {f"{s}_{k}": row[k] for s, row in last.items() if s != "train"
               for k in ("loss", "accuracy")}
      status = [row["status"] for row in last.values() if row["status"] != "running"]
      out.append({"run_id": m.run_id, **m.overrides, **final,
                  "status": status[-1] if status else "running"})
    self.status.write()
    return out


def train_group(config, dataset, members: List[engine.Member], outputs: GroupOutputs) -> List[Dict]:
  """Trains one group (the runs share `config`'s program) into outputs.workdir."""
  setup = engine.set_up(config, dataset, members, outputs.workdir, log_at_evals=True)
  return engine.train_members(setup, members, outputs, group_tag(members))
