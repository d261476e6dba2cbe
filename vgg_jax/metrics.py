"""Metric outputs of a run: metrics.jsonl, TensorBoard events, progress lines.

Only process 0 writes files. TensorBoard events are written with
tensorboard's own RecordWriter and Event protos into a plain file, so a run
that reads no TFDS data never imports TensorFlow (clu's writer imported it:
3 s and about 300 MB a process).
On resume, rows that an interrupted process wrote after its last checkpoint
are dropped, so metrics.jsonl never holds a step twice.
"""

import datetime
import json
import logging
import math
import os
import shutil
import socket
import time
from typing import List, Mapping, Optional, Tuple

import jax

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
STATUSES = ("running", "done", "diverged", "preempted")


def write_status(workdir: str, status: str, **fields) -> None:
  """workdir/status.json: running, done, diverged or preempted, with the step and details.

  Written atomically by process 0. A run killed mid-way stays "running": the
  file says how far it had started from, and a rerun resumes it.
  """
  assert status in STATUSES, status
  if jax.process_index() != 0:
    return
  write_json(os.path.join(workdir, STATUS_FILE), {
      "status": status, **fields,
      "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})


def write_json(path: str, record, **dump_options) -> None:
  """Writes JSON atomically (temp file, then rename): a reader or a kill never
  leaves half a file."""
  write_text(path, json.dumps(record, **{"indent": 1, **dump_options}) + "\n")


def write_text(path: str, text: str, only_if_changed: bool = False) -> bool:
  """Writes `text` atomically through a temp file of this process's own (two
  processes writing one file never share a temp). only_if_changed: leaves a
  file that already holds `text` untouched. Returns whether it wrote."""
  if only_if_changed and os.path.exists(path):
    with open(path, encoding="utf-8", newline="") as f:
      if f.read() == text:
        return False
  tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8", newline="") as f:
      f.write(text)
    os.replace(tmp, path)
  except OSError:  # A full disk, say: the old file stays, and no half-written temp.
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return True


def _parse_rows(path: str) -> Tuple[List[Tuple[dict, str]], List[Tuple[int, str]]]:
  """(rows with their lines, damaged lines as (line number, why)) of a jsonl file.

  A row is a JSON object with an integer "step" and a string "split". Anything
  else (a line cut off by a kill, `null`, binary junk from a crash or an
  editor) is damaged.
  """
  rows, damaged = [], []
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      try:
        row = json.loads(raw.decode("utf-8"))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        damaged.append((number, type(e).__name__))
        continue
      if (not isinstance(row, dict) or not isinstance(row.get("step"), int)
          or not isinstance(row.get("split"), str)):
        damaged.append((number, f"not a metrics row: {raw.strip()[:40].decode('utf-8', 'replace')!r}"))
        continue
      text = raw.decode("utf-8")
      rows.append((row, text if text.endswith("\n") else text + "\n"))
  return rows, damaged


def _truncate_jsonl(path: str, keep_through_step: int) -> None:
  """Atomically rewrites `path` keeping only rows with step <= keep_through_step.

  Damaged lines are dropped. Only the last line cut off by a kill is dropped
  quietly; for anything else the original file is kept beside it
  (<name>.damaged-<time>) and one warning says so.
  """
  if not os.path.exists(path):
    return
  rows, damaged = _parse_rows(path)
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  # A kill mid-write leaves one last line without its newline.
  cut_off_tail = len(damaged) == 1 and damaged[0][0] == len(lines) and lines[-1].strip()
  if damaged and not cut_off_tail:
    kept = f"{path}.damaged-{int(time.time())}"
    shutil.copyfile(path, kept)
    number, why = damaged[0]
    logger.warning("%s: dropped %d damaged line(s) (line %d: %s); the original is kept as %s",
                   path, len(damaged), number, why, kept)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(line for row, line in rows if row["step"] <= keep_through_step)
  os.replace(tmp, path)


class EventFile:
  """One TensorBoard event file of scalars.

  tensorboard's EventFileWriter opens files through tf.io.gfile (importing
  TensorFlow wherever it is installed) and tensorboardX imports PyTorch
  wherever that is, so this is the record format under both, written with
  tensorboard's RecordWriter. A write error (a full disk) is raised here, in
  the training thread, not lost in a writer thread.
  """

  def __init__(self, logdir: str):
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    self._session_log, self._start = event_pb2.SessionLog, event_pb2.SessionLog.START
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self._file = open(os.path.join(logdir, name), "ab")  # pylint: disable=consider-using-with
    self._records = RecordWriter(self._file)
    self._write(self._event(file_version="brain.Event:2"))

  def _write(self, event) -> None:
    event.wall_time = time.time()
    self._records.write(event.SerializeToString())

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=value)
                                   for tag, value in values.items()])
    self._write(self._event(step=step, summary=summary))

  def restart(self, step: int) -> None:
    """Marks a resume at `step`: TensorBoard drops this run's points from
    earlier files past it (a killed run logged them before its checkpoint)."""
    if step > 0:
      self._write(self._event(step=step, session_log=self._session_log(status=self._start)))

  def hparams(self, values: Mapping[str, object], trial_id: str = "") -> None:
    """HParams plugin data: TensorBoard's HParams tab lists the run with these
    values, next to the last value of each of its scalars."""
    from tensorboard.plugins.hparams import summary_v2  # pylint: disable=g-import-not-at-top
    clean = {k: (v if isinstance(v, (bool, int, float, str)) else json.dumps(v))
             for k, v in values.items() if v is not None}
    self._write(self._event(summary=summary_v2.hparams_pb(clean, trial_id=trial_id or None)))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class MetricsWriter:
  """Writes rows to metrics.jsonl and scalars to TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, resume_step: int, tensorboard: bool = True,
               hparams: Optional[Mapping[str, object]] = None):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if self.enabled:
      _truncate_jsonl(self.path, resume_step)
      if tensorboard:
        self._tb = EventFile(os.path.join(workdir, "tensorboard"))
        self._tb.restart(resume_step)
        if hparams:
          self._tb.hparams(hparams)

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    # Strict JSON has no NaN: an unknown value (e.g. no rate yet) is null.
    row = {"step": int(step), "split": split,
           **{k: (v if math.isfinite(v) else None) for k, v in values.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      self._tb.scalars(int(step), {f"{split}/{k}": v for k, v in values.items()})

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def read_metrics(workdir: str, split: Optional[str] = None) -> list:
  """Reads metrics.jsonl back as a list of dicts, optionally for one split."""
  rows, _ = _parse_rows(os.path.join(workdir, METRICS_FILE))  # Damaged lines are skipped.
  return [r for r, _ in rows if split is None or r["split"] == split]


class Progress:
  """Training-step throughput and ETA that leave out compile and eval time.

  Call ``mark(step)`` whenever the clock should restart (after the first,
  compiling step and after each eval); ``rate(step)`` is steps per second of
  pure training since the last mark.
  """

  def __init__(self, total_steps: int, train_seconds: float = 0.0):
    """train_seconds: timed training before this process (a resumed run's)."""
    self.total_steps = total_steps
    self._mark_time: Optional[float] = None
    self._mark_step = 0
    self._timed_steps = 0
    self._timed_seconds = 0.0
    self._earlier_seconds = train_seconds

  @property
  def train_seconds(self) -> float:
    """Training time so far (compile, eval and checkpoints left out), up to the last rate()."""
    return self._earlier_seconds + self._timed_seconds

  def mark(self, step: int) -> None:
    self._mark_time, self._mark_step = time.perf_counter(), step

  def rate(self, step: int) -> float:
    """Steps/s since the last mark; accumulates toward the ETA's average."""
    if self._mark_time is None or step <= self._mark_step:
      return math.nan
    seconds = time.perf_counter() - self._mark_time
    self._timed_steps += step - self._mark_step
    self._timed_seconds += seconds
    return (step - self._mark_step) / max(seconds, 1e-9)

  def average_rate(self) -> float:
    """Steps/s over all timed training so far (NaN before any)."""
    return self._timed_steps / self._timed_seconds if self._timed_seconds > 0 else math.nan

  def line(self, step: int, metrics: Mapping[str, float]) -> str:
    pct = 100.0 * step / self.total_steps
    text = f"step {step}/{self.total_steps} ({pct:3.0f}%)"
    text += " | " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    if self._timed_seconds > 0:
      avg = self._timed_steps / self._timed_seconds
      eta = datetime.timedelta(seconds=round((self.total_steps - step) / avg))
      text += f" | {avg:.1f} steps/s | ETA {eta}"
    return text
