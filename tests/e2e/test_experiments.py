"""The ablation experiments in smoke mode: every file, the right structure,
reruns, overrides, and your own dataset.

These check what each command writes, not the science: the numbers of a
smoke run (digits, a few steps) mean nothing. The readings (the statistics a
report's verdict comes from) are tested in tests/unit/test_experiment_readings.py.
"""

import csv
import os
import re
import shutil
import subprocess

import pytest

from conftest import built_once, read_csv, run_experiment

EXPERIMENTS = {
    "learning_rate": ["loss_curves.png", "final_loss_vs_lr.png"],
    "dropout": ["train_vs_test.png"],
    "batch_size": ["loss_curves.png", "steps_to_target.png"],
    "optimizers": ["learning_curves.png", "surfaces.png", "surfaces.gif"],
    "vanishing_gradient": ["grad_norms_init.png", "grad_norms_trained.png",
                           "accuracy_vs_depth.png"],
}


@pytest.fixture(scope="module")
def learning_rate_smoke(tmp_path_factory):
  """learning_rate in smoke mode, finished: (its workdir, the process)."""
  def build(root):
    result = run_experiment("learning_rate", root / "exp")
    assert result.returncode == 0, result.stderr[-3000:]
    (root / "stdout").write_text(result.stdout)

  root = built_once(tmp_path_factory, "learning_rate_smoke", build)
  return root / "exp", subprocess.CompletedProcess([], 0, (root / "stdout").read_text(), "")


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_smoke_writes_every_file(name, tmp_path, request):
  if name == "learning_rate":  # The run the rerun tests below start from.
    tmp_path, result = request.getfixturevalue("learning_rate_smoke")
  else:
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


def test_rerun_trains_nothing_and_rewrites_the_same_report(learning_rate_smoke, tmp_path):
  finished, first = learning_rate_smoke
  assert "3 runs trained this time" in first.stdout
  tmp_path = tmp_path / "exp"
  shutil.copytree(finished, tmp_path)
  before = {f: (tmp_path / f).read_bytes() for f in
            ("report.md", "summary.md", "results.csv", "loss_curves.png")}
  os.remove(tmp_path / "report.md")
  again = run_experiment("learning_rate", tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "0 runs trained this time" in again.stdout
  for f, data in before.items():
    assert (tmp_path / f).read_bytes() == data, f


def test_interrupted_experiment_trains_only_the_missing_runs(learning_rate_smoke, tmp_path):
  """A run lost mid-experiment (its rows dropped as unfinished) is retrained alone."""
  tmp_path = tmp_path / "exp"
  shutil.copytree(learning_rate_smoke[0], tmp_path)
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


def test_a_config_override_reaches_the_experiment(tmp_path):
  result = run_experiment("learning_rate", tmp_path, "--config.learning_rates=(0.1,)",
                          "--config.train.num_epochs=1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "1 runs trained this time" in result.stdout


# ------------------------------------------------------- your own dataset


def test_experiment_on_user_images(loader_file, tmp_path):
  proc = run_experiment("dropout", tmp_path / "exp",
                        f"--config.train.dataset.name={loader_file}:images")
  assert proc.returncode == 0, proc.stderr
  # Smoke mode trains on 500 examples; this dataset has 288 after the carves.
  assert "has 288 training examples, fewer than the 500" in proc.stderr, proc.stderr
  report = (tmp_path / "exp" / "report.md").read_text()
  assert f"{loader_file}:images" in report


def test_optimizers_on_features_leaves_the_vgg_out(loader_file, tmp_path):
  proc = run_experiment("optimizers", tmp_path / "exp", f"--dataset={loader_file}:features",
                        "--config.optimizers=('sgd','adam')")
  assert proc.returncode == 0, proc.stderr
  assert "the VGG part is left out" in proc.stderr
  report = (tmp_path / "exp" / "report.md").read_text()
  assert "no VGG: the data are features" in report
  assert not (tmp_path / "exp" / "runs" / "vgg").exists()
