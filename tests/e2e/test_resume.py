"""Fault injection: kills at random points resume exactly, NaNs are contained,
bad files and foreign workdirs are refused.

Kills use VGG_JAX_KILL_AT (vgg_jax/faults.py): SIGKILL at a named point of
the training loop, so the test knows it hit a step, an eval or a checkpoint
write rather than racing a timer.
"""

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_cli, tiny_config, write_idx_dir, write_sweep_config
from vgg_jax import config_lib, data, metrics, train
from vgg_jax.errors import DataError, DivergedError

DEFAULT = "--config=configs/default.py"


def _env(**extra):
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def _killed_then_rerun(args, workdir, kill_at):
  """Runs until VGG_JAX_KILL_AT fires (SIGKILL), then reruns the same command."""
  cmd = [sys.executable, "-m", "vgg_jax.main", *args, f"--workdir={workdir}"]
  killed = subprocess.run(cmd, cwd=REPO, env=_env(VGG_JAX_KILL_AT=kill_at),
                          capture_output=True, text=True, timeout=300)
  assert killed.returncode == -signal.SIGKILL, (kill_at, killed.returncode, killed.stderr[-2000:])
  status = os.path.join(workdir, metrics.STATUS_FILE)
  if os.path.exists(status):  # Sweeps keep their state in results.csv instead.
    with open(status) as f:
      assert json.load(f)["status"] == "running"
  rerun = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  return rerun


def _rows(workdir):
  return [{k: v for k, v in r.items() if k != "steps_per_sec"}
          for r in metrics.read_metrics(str(workdir))]


def _status(workdir):
  with open(os.path.join(workdir, metrics.STATUS_FILE)) as f:
    return json.load(f)


# ------------------------------------------------- in-memory pipeline kills

MEMORY_ARGS = [DEFAULT, "--config.dataset.name=synthetic",
               "--config.dataset.synthetic.num_train=512",
               "--config.dataset.synthetic.image_shape=(8,8,1)",
               "--config.model.hidden_sizes=(64,)", "--config.model.dropout_rate=0.1",
               "--config.optimizer.schedule=cosine", "--config.batch_size=16",
               "--config.num_train_steps=192", "--config.log_every_steps=16",
               "--config.eval_every_steps=64", "--config.checkpoint_every_steps=32",
               "--config.scan_epoch=False"]
# Kill points drawn once from a fixed seed: every kind of point, spread over the run.
_rng = random.Random(8)
MEMORY_KILLS = ([f"step:{_rng.randrange(1, 192)}" for _ in range(3)]
                + [f"eval:{_rng.choice([64, 128])}" for _ in range(1)]
                + [f"checkpoint:{_rng.choice([32, 64, 96, 128, 160])}" for _ in range(2)])


@pytest.fixture(scope="module")
def memory_reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  proc = run_cli(MEMORY_ARGS, workdir=workdir)
  assert proc.returncode == 0, proc.stderr
  return _rows(workdir), _status(workdir)


@pytest.mark.parametrize("kill_at", MEMORY_KILLS)
def test_kill_anywhere_resumes_bit_for_bit(kill_at, memory_reference, tmp_path):
  rows, status = memory_reference
  _killed_then_rerun(MEMORY_ARGS, tmp_path, kill_at)
  got = _rows(tmp_path)
  # No step missing or repeated; every metric and the final params identical.
  assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in rows]
  assert got == rows
  final = _status(tmp_path)
  assert final["status"] == "done" and final["params_sha256"] == status["params_sha256"]


def test_kill_with_scanned_epochs_resumes_bit_for_bit(tmp_path):
  args = [a for a in MEMORY_ARGS if "scan_epoch" not in a]  # Epoch-long scans.
  ref = tmp_path / "ref"
  assert run_cli(args, workdir=ref).returncode == 0
  _killed_then_rerun(args, tmp_path / "killed", "step:100")
  assert _rows(tmp_path / "killed") == _rows(ref)
  assert _status(tmp_path / "killed")["params_sha256"] == _status(ref)["params_sha256"]


# ------------------------------------------------- streaming pipeline kills


@pytest.mark.parametrize("kill_at", ["step:21", "checkpoint:32"])
def test_streaming_kill_resumes_bit_for_bit(kill_at, prepared_fashion, tmp_path):
  args = [DEFAULT, "--config.dataset.name=fashion_mnist",
          f"--config.dataset.data_dir={prepared_fashion}", "--config.dataset.download=False",
          "--config.dataset.pipeline=streaming", "--config.dataset.shuffle_buffer=64",
          "--config.dataset.num_train_examples=256", "--config.model.hidden_sizes=(32,)",
          "--config.batch_size=16", "--config.num_train_steps=48",
          "--config.log_every_steps=8", "--config.checkpoint_every_steps=16",
          "--config.eval_every_steps=24", "--config.eval_batch_size=2500"]
  ref = tmp_path / "ref"
  proc = run_cli(args, workdir=ref)
  assert proc.returncode == 0, proc.stderr
  _killed_then_rerun(args, tmp_path / "killed", kill_at)
  assert _rows(tmp_path / "killed") == _rows(ref)
  assert _status(tmp_path / "killed")["params_sha256"] == _status(ref)["params_sha256"]


# ------------------------------------------------------------ sweep kills


def test_sweep_kill_resumes_bit_for_bit(tmp_path):
  """Killed mid-sweep: finished runs are kept, unfinished ones retrain from
  scratch as the same vmap groups, so every final number is identical."""
  config = write_sweep_config(
      tmp_path / "sweep_config.py", "c.optimizer.name = 'sgd'", "c.batch_size = 32",
      "c.num_epochs = 6",
      "c.sweep = sweep.to_config(sweep.product(",
      "    sweep.axis('model.hidden_sizes', [[16], [32]]),",
      "    sweep.axis('optimizer.learning_rate', [0.1, 0.3])))")
  args = [f"--config={config}"]
  ref = tmp_path / "ref"
  assert run_cli(args, workdir=ref).returncode == 0
  # The first group's evals at epochs 1..5 are not final: the kill lands mid-group.
  _killed_then_rerun(args, tmp_path / "killed", "sweep_eval:150")

  assert sweep_results(tmp_path / "killed") == sweep_results(ref)


def sweep_results(workdir):
  """Every results.csv row of a sweep, in a canonical order, without timings."""
  with open(workdir / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  return sorted((r["run_id"], r["step"], r["split"], r["loss"], r["accuracy"], r["status"])
                for r in rows)


# --------------------------------------------------------------- NaN runs


def _nan_config():
  """SGD whose rate jumps by 1e30 halfway: finite first, then non-finite."""
  config = tiny_config()
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.schedule = "step"
  config.optimizer.step_boundaries = (0.5,)
  config.optimizer.step_factor = 1e30
  config.num_epochs = 5  # 40 steps; the jump at step 20.
  config.scan_epoch = False
  return config


def test_divergence_stops_names_step_and_layer_and_keeps_earlier_checkpoints(tmp_path):
  with pytest.raises(DivergedError, match=r"diverged at step 2\d.*layer (hidden_0|output)"):
    train.train_and_evaluate(_nan_config(), str(tmp_path))
  status = _status(tmp_path)
  assert status["status"] == "diverged" and 20 < status["step"] <= 40
  assert status["layer"] in ("hidden_0", "output")
  kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert kept and max(kept) < status["step"]  # Nothing saved from a non-finite state.
  assert all(np.isfinite(r["loss"]) for r in metrics.read_metrics(str(tmp_path)))


def test_divergence_inside_a_scanned_epoch_is_caught_at_its_end(tmp_path):
  config = _nan_config()
  config.scan_epoch = True
  with pytest.raises(DivergedError, match="diverged at step 2"):
    train.train_and_evaluate(config, str(tmp_path))
  assert _status(tmp_path)["status"] == "diverged"


NAN_ARGS = [DEFAULT, "--config.optimizer.name=sgd", "--config.optimizer.learning_rate=0.1",
            "--config.optimizer.schedule=step", "--config.optimizer.step_boundaries=(0.5,)",
            "--config.optimizer.step_factor=1e30", "--config.num_train_steps=40",
            "--config.model.hidden_sizes=(32,)"]


def test_diverged_cli_run_exits_1_with_one_line(tmp_path):
  proc = run_cli(NAN_ARGS, workdir=tmp_path)
  assert proc.returncode == 1
  assert len(proc.stderr.strip().splitlines()[-1:]) == 1
  assert "diverged at step" in proc.stderr.strip().splitlines()[-1]
  assert _status(tmp_path)["status"] == "diverged"


def test_debug_nans_names_the_primitive(tmp_path):
  """In its own process: in one that already ran a diverging config, JAX's
  cached primitives skipped the check (seen with jax 0.10.2)."""
  proc = run_cli(NAN_ARGS + ["--config.debug_nans=True"], workdir=tmp_path)
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert re.search(r"jax_debug_nans: invalid value \(nan\) encountered in \w+", last), last
  assert _status(tmp_path)["status"] == "diverged"


def test_status_done_carries_the_params_fingerprint(tmp_path):
  result = train.train_and_evaluate(tiny_config(), str(tmp_path))
  status = _status(tmp_path)
  assert status["status"] == "done" and status["step"] == result["step"]
  assert len(status["params_sha256"]) == 64


# -------------------------------------------------------------- bad files


def test_workdir_of_another_config_is_refused_with_the_differences(tmp_path):
  base = [DEFAULT, "--config.num_train_steps=10"]
  assert run_cli(base, workdir=tmp_path).returncode == 0
  before = (tmp_path / "config.json").read_text()
  proc = run_cli(base + ["--config.model.hidden_sizes=(32,)", "--config.seed=3"],
                 workdir=tmp_path)
  assert proc.returncode == 2
  line = proc.stderr.strip()
  assert len(line.splitlines()) == 1
  assert "model.hidden_sizes" in line and "seed: 0 there, 3 here" in line
  assert (tmp_path / "config.json").read_text() == before
  # Cadence may change: this resumes (and finds the run finished).
  assert run_cli(base + ["--config.log_every_steps=5"], workdir=tmp_path).returncode == 0


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_idx_file_names_the_file(damage, tmp_path):
  directory = write_idx_dir(str(tmp_path / "idx"), 50, 20)
  path = os.path.join(directory, "train-images-idx3-ubyte.gz")
  raw = open(path, "rb").read()
  if damage == "truncate":
    raw = raw[:len(raw) // 2]
  else:
    raw = raw[:40] + bytes(b ^ 0xFF for b in raw[40:80]) + raw[80:]
  with open(path, "wb") as f:
    f.write(raw)
  cfg = config_lib.base_config().dataset
  cfg.name, cfg.idx_dir, cfg.data_dir, cfg.download = "fashion_mnist", directory, str(tmp_path), False
  with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
    data.load(cfg)
