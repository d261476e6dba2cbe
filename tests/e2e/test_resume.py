"""Resume: a run or a sweep stopped anywhere, or whose files were damaged,
ends with exactly the numbers of an uninterrupted one.

Stops come from VGG_JAX_KILL_AT (vgg_jax/faults.py): a signal at a named point
of the training loop (mid-step, mid-eval, mid-checkpoint while orbax writes in
the background, after a sweep's eval), so each test knows where it landed.
SIGKILL leaves no chance to clean up; SIGTERM and SIGINT are a scheduler's
preemption: a checkpoint at the step it stopped at, exit 75.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import (DEFAULT, DEFAULT_LONGER, MEMORY_ARGS, REPO, built_once,
                      in_a_mount_namespace, messages, rows, run_cli, status,
                      subprocess_env, sweep_rows, write_sweep_config)
from vgg_jax import preemption
from vgg_jax.errors import UserError


def stop(args, workdir, point, sig):
  """Runs `args` until `point`, where it gets SIG<sig>; checks how it stopped."""
  stopped = run_cli(args, workdir, kill_at=point, signal=sig, timeout=300)
  if sig == "KILL":
    assert stopped.returncode == -signal.SIGKILL, (point, stopped.returncode,
                                                   stopped.stderr[-2000:])
    if os.path.exists(os.path.join(workdir, "status.json")):
      assert status(workdir)["status"] == "running"
  else:
    assert stopped.returncode == preemption.EXIT_CODE, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    assert status(workdir)["status"] == "preempted"
  return stopped


def rerun(args, workdir):
  proc = run_cli(args, workdir, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


# ---------------------------------------------------------- single runs


# SIGKILL points drawn once from a fixed seed: every kind of point, spread
# over the 192 steps; SIGTERM at one point of each kind, and SIGINT (the same
# handler, preemption.guard) at one.
_rng = random.Random(8)
STOPS = ([("KILL", f"step:{_rng.randrange(1, 192)}") for _ in range(3)]
         + [("KILL", f"eval:{_rng.choice([64, 128])}")]
         + [("KILL", f"checkpoint:{_rng.choice([32, 64, 96, 128, 160])}") for _ in range(2)]
         + [("TERM", point) for point in ("step:40", "eval:64", "checkpoint:96")]
         + [("INT", "eval:64")])


@pytest.mark.parametrize("sig,point", STOPS, ids=[f"{s}-{p}" for s, p in STOPS])
def test_a_run_stopped_anywhere_resumes_bit_for_bit(sig, point, memory_reference, tmp_path):
  expected_rows, expected_status = memory_reference
  stopped = stop(MEMORY_ARGS, tmp_path, point, sig)
  if sig != "KILL":  # One line saying where it stopped; the checkpoint is at that step.
    last = stopped.stderr.strip().splitlines()[-1]
    at = status(tmp_path)
    assert last.startswith(f"vgg_jax: stopped by SIG{sig} at step {at['step']};"), last
    assert str(at["step"]) in os.listdir(tmp_path / "checkpoints")
  resumed = rerun(MEMORY_ARGS, tmp_path)
  if sig != "KILL":
    assert f"resumed from checkpoint at step {at['step']}" in resumed.stderr
  got = rows(tmp_path)
  # No step missing or repeated; every metric and the final params identical.
  assert [(r["step"], r["split"]) for r in got] == [
      (r["step"], r["split"]) for r in expected_rows]
  assert got == expected_rows
  final = status(tmp_path)
  assert final["status"] == "done" and final["params_sha256"] == expected_status["params_sha256"]


def test_kill_with_scanned_epochs_resumes_bit_for_bit(tmp_path):
  args = [a for a in MEMORY_ARGS if "scan_epoch" not in a]  # Epoch-long scans.
  rerun(args, tmp_path / "ref")
  stop(args, tmp_path / "killed", "step:100", "KILL")
  rerun(args, tmp_path / "killed")
  assert rows(tmp_path / "killed") == rows(tmp_path / "ref")
  assert status(tmp_path / "killed")["params_sha256"] == status(tmp_path / "ref")["params_sha256"]


def _streaming_args(data_dir):
  return [DEFAULT, "--config.dataset.name=fashion_mnist", f"--config.dataset.data_dir={data_dir}",
          "--config.dataset.download=False", "--config.dataset.pipeline=streaming",
          "--config.dataset.shuffle_buffer=64", "--config.dataset.num_train_examples=256",
          "--config.model.hidden_sizes=(32,)", "--config.batch_size=16",
          "--config.num_train_steps=48", "--config.log_every_steps=8",
          "--config.checkpoint_every_steps=16", "--config.eval_every_steps=24",
          "--config.eval_batch_size=2500"]


@pytest.fixture(scope="module")
def streaming_reference(prepared_fashion, tmp_path_factory):
  workdir = built_once(tmp_path_factory, "streaming_reference",
                       lambda w: rerun(_streaming_args(prepared_fashion), w))
  return rows(workdir), status(workdir)


@pytest.mark.parametrize("point", ["step:21"])  # Kills at checkpoints: the memory runs above.
def test_streaming_kill_resumes_bit_for_bit(point, prepared_fashion, streaming_reference,
                                            tmp_path):
  args = _streaming_args(prepared_fashion)
  stop(args, tmp_path, point, "KILL")
  rerun(args, tmp_path)
  assert rows(tmp_path) == streaming_reference[0]
  assert status(tmp_path)["params_sha256"] == streaming_reference[1]["params_sha256"]


# ---------------------------------------------------------------- sweeps


@pytest.fixture(scope="module")
def sweep_reference(tmp_path_factory):
  """Two groups (the hidden size changes the program) of two vmapped rates,
  one of which diverges at once and is frozen, with dropout; a checkpoint
  past each 50 steps (at epoch ends: 57, 114).
  (the command line, the uninterrupted results)"""
  def build(root):
    write_sweep_config(
        root / "sweep_config.py", "c.model.dropout_rate = 0.2", "c.optimizer.name = 'momentum'",
        "c.batch_size = 32", "c.num_epochs = 4", "c.eval_every_steps = 40",
        "c.checkpoint_every_steps = 50", "c.sweep = sweep.to_config(sweep.product(",
        "    sweep.axis('model.hidden_sizes', [[16], [32]]),",
        "    sweep.axis('optimizer.learning_rate', [0.1, 1e4])))")
    rerun([f"--config={root / 'sweep_config.py'}"], root / "run")

  root = built_once(tmp_path_factory, "sweep_reference", build)
  return [f"--config={root / 'sweep_config.py'}"], sweep_rows(root / "run"), run_statuses(
      root / "run")


def run_statuses(workdir):
  """{run_id: (status, step, params_sha256)} of a sweep's merged status.json."""
  return {i: (r["status"], r.get("step"), r.get("params_sha256"))
          for i, r in status(workdir)["runs"].items()}


@pytest.mark.parametrize("sig,point", [("KILL", "step:130"), ("TERM", "sweep_eval:100")])
def test_a_stopped_sweep_resumes_its_group_to_the_uninterrupted_results(sig, point,
                                                                        sweep_reference,
                                                                        tmp_path):
  """With diverged members: they are not finished until their group is, so the
  group resumes whole, and every row and status entry (step, params_sha256)
  equals the uninterrupted sweep's."""
  args, expected, expected_status = sweep_reference
  assert sorted(s for s, _, _ in expected_status.values()) == ["diverged"] * 2 + ["done"] * 2
  stop(args, tmp_path, point, sig)
  if sig == "KILL":  # Rows past the last checkpoint (114) are redone, not kept twice.
    from vgg_jax import sweep  # pylint: disable=g-import-not-at-top
    assert max(r["step"] for r in sweep.results(str(tmp_path))) >= 120
  else:
    assert "preempted" in {r["status"] for r in status(tmp_path)["runs"].values()}
  resumed = rerun(args, tmp_path)
  # Mid-group from its checkpoint, not from scratch.
  assert ("resumed at step 114" if sig == "KILL" else "resumed at step 120") in resumed.stderr
  assert sweep_rows(tmp_path) == expected
  final = status(tmp_path)
  assert final["status"] == "done" and run_statuses(tmp_path) == expected_status


# ------------------------------------------- damaged files a rerun repairs


def _insert_line(path, line):
  lines = path.read_bytes().splitlines(keepends=True)
  path.write_bytes(b"".join(lines[:2] + [line] + lines[2:]))


def _append(path, data):
  with open(path, "ab") as f:
    f.write(data)


REPAIRED_FAULTS = {
    # name: (damage(workdir), whether a warning names the damage)
    "metrics_null_line": (lambda w: _insert_line(w / "metrics.jsonl", b"null\n"), True),
    "metrics_binary_junk": (lambda w: _insert_line(w / "metrics.jsonl", b"\x00\xff\xfe junk\n"),
                            True),
    "metrics_cut_off_last_line": (lambda w: _append(w / "metrics.jsonl", b'{"step": 4'), False),
    "status_json_is_junk": (lambda w: (w / "status.json").write_text("{bad"), False),
    "model_info_is_junk": (lambda w: (w / "model_info.json").write_text("{bad"), False),
}




@pytest.mark.parametrize("fault", sorted(REPAIRED_FAULTS))
def test_damaged_run_files_are_repaired_by_the_rerun(fault, trained_copy, trained):
  damage, warns = REPAIRED_FAULTS[fault]
  damage(trained_copy)
  proc = rerun(DEFAULT_LONGER, trained_copy)
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  warnings = [l for l in messages(proc.stderr) if "damaged line" in l]
  assert len(warnings) == (1 if warns else 0), proc.stderr
  assert len(messages(proc.stderr)) <= 2, proc.stderr
  kept = [p for p in trained_copy.iterdir() if ".damaged-" in p.name]
  assert len(kept) == (1 if warns else 0)  # The original is kept aside.
  ref = trained / "run60"
  assert status(trained_copy)["params_sha256"] == status(ref)["params_sha256"]
  assert rows(trained_copy) == rows(ref)


def test_a_truncated_checkpoint_falls_back_quietly(trained_copy, trained):
  data = [os.path.join(root, f) for root, _, files in os.walk(trained_copy / "checkpoints" / "40")
          for f in files if os.sep + "d" + os.sep in os.path.join(root, f)]
  assert data
  for path in data:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  proc = rerun(DEFAULT_LONGER, trained_copy)
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = messages(proc.stderr)
  assert len(lines) <= 3 and "checkpoint at step 40 is unreadable" in lines[0], proc.stderr
  assert status(trained_copy)["params_sha256"] == status(trained / "run60")["params_sha256"]


# ---------------------------------------------------------- a full disk


@pytest.mark.parametrize("size,kept", [
    ("1600k", "the newest complete checkpoint, step 22"),  # The second checkpoint fails.
    ("8k", "no checkpoint had been completed"),  # model_info.json fails.
])
def test_a_full_disk_is_one_line_keeps_the_checkpoint_and_the_rerun_resumes(
    size, kept, trained, tmp_path):
  main = f'"$PY" -m vgg_jax.main {" ".join(DEFAULT_LONGER)} --workdir="$FULL/run"'
  script = "\n".join([
      f'mount -t tmpfs -o size={size} tmpfs "$FULL" || exit 99',
      f'{main} 2> "$OUT/first.err"; echo $? > "$OUT/first.rc"',
      'mount -o remount,size=16m "$FULL"',  # Space freed.
      f'{main} 2> "$OUT/second.err"; echo $? > "$OUT/second.rc"',
      'cp "$FULL/run/status.json" "$FULL/run/metrics.jsonl" "$OUT/"'])
  proc = in_a_mount_namespace(script, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  first = (tmp_path / "first.err").read_text()
  assert (tmp_path / "first.rc").read_text().strip() == "2", first[-3000:]
  assert "Traceback" not in first
  lines = messages(first)
  assert len(lines) <= 2 and "no space left on the device of --workdir=" in lines[-1], first
  assert kept in first and "rerun the same command to resume" in first
  second = (tmp_path / "second.err").read_text()
  assert (tmp_path / "second.rc").read_text().strip() == "0", second[-3000:]
  assert "Traceback" not in second
  ref = trained / "straight60"
  assert status(tmp_path)["params_sha256"] == status(ref)["params_sha256"]
  assert rows(tmp_path) == rows(ref)


# ------------------------------------------------- reading a training run


def test_reading_a_run_while_it_trains_never_harms_it(tmp_path):
  """predict and visualize (restore_for_inference) in a loop against a run
  that checkpoints every 5 steps (keeping 6): they read it, and the run ends with the
  parameters of an undisturbed run (a reader once removed the trainer's
  in-flight orbax temp directory and killed the save)."""
  from vgg_jax import inference  # pylint: disable=g-import-not-at-top
  args = [DEFAULT, "--config.num_train_steps=500", "--config.checkpoint_every_steps=5",
          "--config.log_every_steps=40", "--config.keep_checkpoints=6"]
  env = subprocess_env()
  command = lambda w: [sys.executable, "-m", "vgg_jax.main", *args, f"--workdir={w}"]
  training = subprocess.Popen(command(tmp_path / "read"), cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = str(tmp_path / "digit.png")
  Image.new("L", (8, 8), 128).save(image)
  reads, predicted = 0, None
  while training.poll() is None:
    if not (tmp_path / "read" / "checkpoints").is_dir():
      time.sleep(0.05)
      continue
    try:
      inference.restore_for_inference(str(tmp_path / "read"))
      reads += 1
    except UserError:  # "no checkpoint yet": the first one is still being written.
      pass
    if predicted is None:
      predicted = subprocess.Popen(
          [sys.executable, "-m", "vgg_jax.predict", f"--workdir={tmp_path / 'read'}", image],
          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  out, err = training.communicate()
  assert training.returncode == 0, err[-3000:]
  assert reads >= 2, reads
  undisturbed = subprocess.run(command(tmp_path / "alone"), cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=300)
  assert undisturbed.returncode == 0, undisturbed.stderr[-3000:]
  p_out, p_err = predicted.communicate(timeout=120)
  assert predicted.returncode == 0 and "Traceback" not in p_err, p_err[-3000:]
  assert status(tmp_path / "read")["params_sha256"] == status(tmp_path / "alone")[
      "params_sha256"]
