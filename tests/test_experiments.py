"""The ablation experiments in smoke mode: every file, the right structure.

These check what each command writes, not the science: the numbers of a
smoke run (digits, a few steps) mean nothing.
"""

import csv
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

EXPERIMENTS = {
    "learning_rate": ["loss_curves.png", "final_loss_vs_lr.png"],
    "dropout": ["train_vs_test.png"],
    "batch_size": ["loss_curves.png", "steps_to_target.png"],
    "optimizers": ["learning_curves.png", "surfaces.png", "surfaces.gif"],
    "vanishing_gradient": ["grad_norms_init.png", "grad_norms_trained.png",
                           "accuracy_vs_depth.png"],
}


def run_experiment(name, workdir, *args):
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", f"experiments.{name}", f"--workdir={workdir}",
                         "--mode=smoke", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_smoke_writes_every_file(name, tmp_path):
  result = run_experiment(name, tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = read_csv(tmp_path / "results.csv")
  assert rows and {"phase", "run_id", "step", "split", "loss", "accuracy", "status",
                   "train_seconds"} <= set(rows[0])
  assert {"train", "validation", "test"} <= {r["split"] for r in rows}
  # Every run ended: its last test row says done or diverged.
  last = {}
  for r in rows:
    if r["split"] == "test":
      last[(r["phase"], r["run_id"])] = r["status"]
  assert last and set(last.values()) <= {"done", "diverged"}

  report = (tmp_path / "report.md").read_text()
  for heading in ("## What was run", "## Reading"):
    assert heading in report
  for figure in EXPERIMENTS[name]:
    data = (tmp_path / figure).read_bytes()
    assert data[:4] in (b"\x89PNG", b"GIF8"), figure
    assert f"]({figure})" in report, f"{figure} not shown in report.md"
  summary = (tmp_path / "summary.md").read_text()
  assert re.search(r"^\|.*\|$", summary, re.M), "summary.md has no table"
  assert "jax" in report and "cpu cores" in report  # Versions and hardware.


def test_rerun_trains_nothing_and_rewrites_the_same_report(tmp_path):
  first = run_experiment("learning_rate", tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "3 runs trained this time" in first.stdout
  before = {f: (tmp_path / f).read_bytes() for f in
            ("report.md", "summary.md", "results.csv", "loss_curves.png")}
  os.remove(tmp_path / "report.md")
  again = run_experiment("learning_rate", tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "0 runs trained this time" in again.stdout
  for f, data in before.items():
    assert (tmp_path / f).read_bytes() == data, f


def test_interrupted_experiment_trains_only_the_missing_runs(tmp_path):
  """A run lost mid-experiment (its rows dropped as unfinished) is retrained alone."""
  assert run_experiment("learning_rate", tmp_path).returncode == 0
  phase_csv = tmp_path / "runs" / "sgd" / "results.csv"
  rows = read_csv(phase_csv)
  kept = [r for r in rows if r["run_id"] != "1" or r["step"] != rows[-1]["step"]]
  with open(phase_csv, "w", newline="") as f:  # Run 1 never reached its last eval.
    out = csv.DictWriter(f, fieldnames=list(rows[0]))
    out.writeheader()
    out.writerows(kept)
  again = run_experiment("learning_rate", tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "1 runs trained this time" in again.stdout
  def by_key(rows):
    return {(r["run_id"], r["step"], r["split"]): float(r["loss"]) for r in rows}

  old, new = by_key(rows), by_key(read_csv(phase_csv))
  assert old.keys() == new.keys()
  for key, loss in old.items():  # Run 1 retrained alone (K=1), not vmapped with K=3.
    assert new[key] == pytest.approx(loss, rel=1e-4, nan_ok=True), key


def test_config_override_and_bad_override(tmp_path):
  result = run_experiment("learning_rate", tmp_path / "ok",
                          "--config.learning_rates=(0.1,)", "--config.train.num_epochs=1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "1 runs trained this time" in result.stdout
  bad = run_experiment("learning_rate", tmp_path / "bad", "--config.train.batch_size=0")
  assert bad.returncode == 2
  assert len(bad.stderr.strip().splitlines()) == 1
  assert "batch_size" in bad.stderr
  assert not (tmp_path / "bad").exists()
  missing = run_experiment("learning_rate", tmp_path / "nodata", "--config.train.dataset.name=mnist",
                           f"--config.train.dataset.idx_dir={tmp_path / 'none'}",
                           f"--config.train.dataset.data_dir={tmp_path / 'none'}",
                           "--config.train.dataset.download=False")
  assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
  assert "dataset mnist not found" in missing.stderr
  assert not (tmp_path / "nodata").exists()
