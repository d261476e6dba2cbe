"""A sweep's workdir as a research record: one directory per run, and a
merged view of all of them.

    WORKDIR/
      config.json          the base config, with the latest sweep list
      status.json          merged: every run of every shard, its status, step, params_sha256
      results.csv          merged: every row of every run, swept values as columns
      probes.csv           merged probes (sweeps run with a probe)
      runs/<name>/         one run, written only by the process that trains it:
        run.json           its identity: run_id, its overrides, its resolved config
        status.json        pending/running/preempted/done/diverged, step, params_sha256
        results.csv        its rows, one per split per eval
        events.out.tfevents.*  TensorBoard scalars and HParams
      checkpoints/group-<hash>/  the stacked state of runs trained together

A run's name says what was swept (`learning_rate=0.03,seed=1`); its run_id
is a hash of its resolved config, so a rerun finds it whatever the list's
order. The merged files are rewritten under a short lock by whichever
process has news, from the run directories, so shards sharing a workdir
never overwrite each other's runs; a file whose content would not change is
left untouched (rerunning a finished sweep changes no byte).
"""

import csv
import io
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence

import jax

from vgg_jax import metrics
from vgg_jax.training import workdir as workdir_lib

RUNS_DIR = "runs"
RESULTS_FILE = "results.csv"
PROBES_FILE = "probes.csv"
RUN_FILE = "run.json"
FIELDS = ("step", "epoch", "split", "loss", "accuracy", "learning_rate", "grad_norm", "status",
          "train_seconds", "wall_seconds")
PROBE_FIELDS = ("step", "name", "value")
FINISHED = ("done", "diverged")


def _read_csv(path: str, last_field: str) -> List[Dict[str, str]]:
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  # A row cut off by a kill mid-write has empty trailing fields.
  return [r for r in rows if r.get(last_field) not in (None, "")]


def _read_json(path: str) -> Optional[Dict]:
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def _csv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\r\n")  # csv's default, as before.
  writer.writerow(header)
  writer.writerows(rows)
  return out.getvalue()


class RunRecord:
  """One run's directory. Only the process training the run writes it
  (process 0 of a multi-process run)."""

  def __init__(self, workdir: str, name: str, run_id: str):
    self.workdir, self.name, self.run_id = workdir, name, run_id
    self.dir = os.path.join(workdir, RUNS_DIR, name)
    self.enabled = jax.process_index() == 0
    self._events = None

  def path(self, file: str) -> str:
    return os.path.join(self.dir, file)

  def create(self, overrides: Dict, config_values: Dict) -> None:
    """Writes run.json unless the run has one (its first overrides stay)."""
    if not self.enabled or os.path.exists(self.path(RUN_FILE)):
      return
    os.makedirs(self.dir, exist_ok=True)
    metrics.write_json(self.path(RUN_FILE), {"run_id": self.run_id, "name": self.name,
                                             "overrides": overrides, "config": config_values},
                       sort_keys=True)

  def status(self) -> Optional[Dict]:
    return _read_json(self.path(metrics.STATUS_FILE))

  def write_status(self, **fields) -> None:
    if self.enabled:
      metrics.write_json(self.path(metrics.STATUS_FILE), fields, sort_keys=True)

  def rows(self, file: str = RESULTS_FILE) -> List[Dict[str, str]]:
    return _read_csv(self.path(file), (FIELDS if file == RESULTS_FILE else PROBE_FIELDS)[-1])

  def append(self, rows: Sequence[Dict], file: str = RESULTS_FILE) -> None:
    if not self.enabled or not rows:
      return
    fields = FIELDS if file == RESULTS_FILE else PROBE_FIELDS
    new = not os.path.exists(self.path(file))
    with open(self.path(file), "a", newline="") as f:
      out = csv.writer(f)
      if new:
        out.writerow(fields)
      out.writerows([r.get(k, "") for k in fields] for r in rows)

  def restart(self, through_step: int) -> None:
    """Drops the rows after through_step (all of them for 0): a resumed group
    writes them again, so no step is written twice."""
    if not self.enabled:
      return
    for file, fields in ((RESULTS_FILE, FIELDS), (PROBES_FILE, PROBE_FIELDS)):
      if os.path.exists(self.path(file)):
        kept = [r for r in self.rows(file) if int(r["step"]) <= through_step]
        metrics.write_text(self.path(file),
                           _csv_text(fields, ([r.get(k, "") for k in fields] for r in kept)))

  def events(self) -> Optional[metrics.EventFile]:
    """The run's TensorBoard event file (opened on first use)."""
    if self.enabled and self._events is None:
      self._events = metrics.EventFile(self.dir)
    return self._events

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
      self._events = None


def existing_runs(workdir: str) -> Dict[str, Dict]:
  """run_id -> run.json of every run directory in the workdir."""
  root = os.path.join(workdir, RUNS_DIR)
  out = {}
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    info = _read_json(os.path.join(root, name, RUN_FILE))
    if info and isinstance(info.get("run_id"), str):
      out.setdefault(info["run_id"], {**info, "name": name})
  return out


def merged(workdir: str, planned: Sequence[Dict] = ()) -> Dict:
  """The merged view, read from the run directories: {"status", "runs", "rows",
  "probes", "keys"}. `planned` (dicts with run_id, name, overrides, shard) are
  the current list's runs, listed as pending until their directory exists;
  runs whose directories exist but are no longer listed stay in the view."""
  existing = existing_runs(workdir)
  info = {p["run_id"]: p for p in planned}
  every = {**info, **existing}
  keys = sorted({k for run in every.values() for k in run.get("overrides", {})})
  swept = {}
  for run_id, run in every.items():  # A run not started yet has no config here: "".
    values = run.get("config", {})
    swept[run_id] = {k: run.get("overrides", {}).get(k, values.get(k, "")) for k in keys}
  # Ordered by the swept values (numbers as numbers), whatever the list's order.
  order = sorted(every, key=lambda i: ([_sortable(swept[i][k]) for k in keys], every[i]["name"]))
  runs, rows, probes = {}, [], []
  for run_id in order:
    run = every[run_id]
    record = RunRecord(workdir, run["name"], run_id)
    status = record.status() or {"status": "pending"}
    entry = {"name": run["name"], **{k: status[k] for k in (
        "status", "step", "params_sha256", "shard", "group") if k in status}}
    if "shard" not in entry and run_id in info and "shard" in info[run_id]:
      entry["shard"] = info[run_id]["shard"]
    runs[run_id] = entry
    rows += [{"run_id": run_id, **swept[run_id], **r} for r in record.rows()]
    probes += [{"run_id": run_id, **swept[run_id], **r} for r in record.rows(PROBES_FILE)]
  current = [runs[p["run_id"]]["status"] for p in planned] or [r["status"] for r in runs.values()]
  overall = ("preempted" if "preempted" in current else
             "done" if all(s in FINISHED for s in current) else "running")
  return {"status": overall, "runs": runs, "rows": rows, "probes": probes, "keys": keys}


def _sortable(value):
  number = isinstance(value, (int, float)) and not isinstance(value, bool)
  return (0, float(value), "") if number else (1, 0.0, json.dumps(value))


def write_merged(workdir: str, planned: Sequence[Dict] = ()) -> Dict:
  """Rewrites the merged status.json, results.csv (and probes.csv) under the
  workdir's merge lock; files whose content is unchanged are not touched."""
  if jax.process_index() != 0:
    return {}
  with workdir_lib.merge_lock(workdir):
    view = merged(workdir, planned)
    status = {"status": view["status"], "runs": view["runs"]}
    metrics.write_text(os.path.join(workdir, metrics.STATUS_FILE),
                       json.dumps(status, indent=1) + "\n", only_if_changed=True)
    for file, fields, rows in ((RESULTS_FILE, FIELDS, view["rows"]),
                               (PROBES_FILE, PROBE_FIELDS, view["probes"])):
      if rows or os.path.exists(os.path.join(workdir, file)):
        header = ["run_id", *view["keys"], *fields]
        metrics.write_text(os.path.join(workdir, file),
                           _csv_text(header, ([r.get(k, "") for k in header] for r in rows)),
                           only_if_changed=True)
  return view
