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


def test_batch_size_regimes_follow_the_scaling_efficiency():
  """Shallue et al.'s three regimes, read off steps to target per batch size."""
  from experiments import batch_size
  steps = {16: 1600, 32: 800, 64: 560, 128: 500, 256: 490}  # 1.0, 0.51, 0.16, 0.03.
  stats = [{"bs": bs, "reached": True, "steps": (s, 0.0)} for bs, s in steps.items()]
  stats.append({"bs": 512, "reached": False, "steps": (float("nan"),) * 2})
  found = batch_size.regimes(stats)
  assert [(g["from"], g["to"]) for g in found] == [(16, 32), (32, 64), (64, 128), (128, 256)]
  assert [g["regime"] for g in found] == ["perfect scaling", "diminishing returns",
                                          "maximal data parallelism", "maximal data parallelism"]
  assert found[0]["efficiency"] == pytest.approx(1.0)
  text = batch_size._regime_text(found, num_train=10_000)
  assert "perfect scaling from batch 16 to 32" in text
  assert "maximal data parallelism from batch 64 to 256" in text
  assert "Shallue et al.'s order" in text and "not Shallue" not in text
  assert "No step up scaled perfectly" not in text
  text = batch_size._regime_text(found[1:], num_train=10_000)
  assert "No step up scaled perfectly" in text and "batch 32 to 64, got 0.51" in text
  # Batches over half a small dataset are left out; full batch stays.
  sizes = (16, 1024, 4096, batch_size.FULL)
  assert batch_size._sizes_for(sizes, 1294) == [16, batch_size.FULL]
  assert batch_size._sizes_for(sizes, 2048) == [16, 1024, batch_size.FULL]


def test_welch_t_weighs_a_difference_against_seed_spread():
  from vgg_jax import report
  assert report.welch_t([1, 2, 3], [4, 5, 6]) == pytest.approx(3 / (2 / 3) ** 0.5)
  assert report.welch_t([4, 5, 6], [1, 2, 3]) == pytest.approx(-3 / (2 / 3) ** 0.5)
  assert report.welch_t([0.5, 0.5], [0.5, 0.5]) == 0.0
  assert report.welch_t([0.5, 0.5], [0.6, 0.6]) == float("inf")
  assert report.welch_t([0.5], [0.6, 0.7]) != report.welch_t([0.5], [0.6, 0.7])  # NaN.


def test_dropout_reading_picks_on_validation_and_weighs_seed_noise():
  from experiments import dropout

  def stats(label, val, tests, loss_gap):
    mean = sum(tests) / len(tests)
    return {"label": label, "val_acc": (val, 0.0), "test_acc": (mean, 0.001),
            "test_accs": tests, "train_acc": (1.0, 0.0), "gap": (1.0 - mean, 0.0),
            "loss_gap": (loss_gap, 0.0), "test_loss": (loss_gap, 0.0),
            "best_test_loss": (0.5, 0.0)}

  base = stats("dropout 0", 0.83, [0.830, 0.832, 0.831], 1.3)
  # Best on test but not on validation: must not be the one compared.
  lucky = stats("dropout 0.2", 0.80, [0.860, 0.861, 0.862], 1.2)
  real = stats("dropout 0.5", 0.84, [0.838, 0.839, 0.840], 0.7)
  for s in (base, lucky, real):
    s["t"] = dropout.report.welch_t(base["test_accs"], s["test_accs"])
  text = dropout._reading([base, lucky, real])
  assert "best on validation, dropout 0.5," in text
  assert "beyond seed noise (2 or more)" in text and "agrees on both counts" in text
  noisy = stats("dropout 0.5", 0.84, [0.825, 0.845, 0.834], 0.7)
  noisy["t"] = dropout.report.welch_t(base["test_accs"], noisy["test_accs"])
  text = dropout._reading([base, noisy])
  assert "not beyond seed noise" in text and "agrees on both counts" not in text
