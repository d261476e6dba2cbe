"""The ablation experiments in smoke mode: every file, the right structure,
reruns, overrides, and your own dataset.

These check what each command writes, not the science: the numbers of a
smoke run (digits, a few steps) mean nothing. The readings (the statistics a
report's verdict comes from) are tested in tests/unit/test_experiment_readings.py.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, built_once, read_csv, run_experiment, subprocess_env

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


def test_a_lost_run_is_retrained_alone(learning_rate_smoke, tmp_path):
  """A run whose directory is gone (lost mid-experiment) is retrained alone,
  by its config; the others are kept."""
  tmp_path = tmp_path / "exp"
  shutil.copytree(learning_rate_smoke[0], tmp_path)
  phase = tmp_path / "runs" / "sgd"
  rows = read_csv(phase / "results.csv")
  lost = sorted(os.listdir(phase / "runs"))[1]
  shutil.rmtree(phase / "runs" / lost)
  again = run_experiment("learning_rate", tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "1 runs trained this time" in again.stdout
  def by_key(rows):
    return {(r["run_id"], r["step"], r["split"]): float(r["loss"]) for r in rows}

  old, new = by_key(rows), by_key(read_csv(phase / "results.csv"))
  assert old.keys() == new.keys()
  for key, loss in old.items():  # The lost run retrained alone (K=1), not vmapped with K=3.
    assert new[key] == pytest.approx(loss, rel=1e-4, nan_ok=True), key


def test_a_rerun_with_another_setup_is_refused_and_reports_nothing(learning_rate_smoke,
                                                                   tmp_path):
  tmp_path = tmp_path / "exp"
  shutil.copytree(learning_rate_smoke[0], tmp_path)
  before = {f: (tmp_path / f).read_bytes() for f in ("report.md", "results.csv")}
  for args, named in ((["--dataset=synthetic"], "dataset: '' there, 'synthetic' here"),
                      (["--config.seeds=(0,1)"], "config.seeds")):
    again = run_experiment("learning_rate", tmp_path, *args)
    assert again.returncode == 2, again.stderr[-3000:]
    [line] = [l for l in again.stderr.splitlines() if "holds this experiment" in l]
    assert named in line and "use a new --workdir" in line
    assert "Traceback" not in again.stderr
  assert {f: (tmp_path / f).read_bytes() for f in before} == before


def test_shards_of_an_experiment_wait_for_each_other_and_shard_0_reports(learning_rate_smoke,
                                                                         tmp_path):
  """Shard 1 of 2 starts alone: it trains its run, then waits for shard 0's
  (saying so); shard 0 trains the other two and writes the report, whose
  table equals the unsharded one's."""
  common = [sys.executable, "-m", "experiments.learning_rate", "--mode=smoke",
            f"--workdir={tmp_path / 'exp'}"]
  env = subprocess_env(VGG_JAX_KILL_AT="")
  one = subprocess.Popen(common + ["--sweep_shard=1/2"], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  waited = ""
  for line in one.stderr:  # Shard 1's own run first, then the wait.
    waited += line
    if "waits for shard" in line:
      break
  assert "phase sgd waits for shard 0/2: 2 run(s) not finished" in waited, waited
  zero = subprocess.run(common + ["--sweep_shard=0/2"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  out, err = one.communicate(timeout=300)
  assert zero.returncode == 0 and one.returncode == 0, (zero.stderr[-3000:], err[-3000:])
  assert "shard 0 writes the report" in out and "2 runs trained this time" in zero.stdout
  assert "## Reading" in (tmp_path / "exp" / "report.md").read_text()

  def table(path):
    cells = re.findall(r"-?\d+\.\d+|\bnan\b|\w+", path.read_text())
    return [float(c) if re.match(r"-?\d+\.\d+|nan", c) else c for c in cells]

  sharded, whole = table(tmp_path / "exp" / "summary.md"), table(learning_rate_smoke[0] /
                                                                 "summary.md")
  assert len(sharded) == len(whole)
  for a, b in zip(sharded, whole):
    assert a == pytest.approx(b, rel=1e-3, abs=1e-3, nan_ok=True) if isinstance(b, float) else (
        a == b)


def test_a_config_override_reaches_the_experiment(tmp_path):
  result = run_experiment("learning_rate", tmp_path, "--config.learning_rates=(0.1,)",
                          "--config.train.num_epochs=1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "1 runs trained this time" in result.stdout


def test_a_grid_where_every_run_diverges_still_reports(tmp_path):
  """The experiment's own phenomenon at its extreme: every rate diverges."""
  result = run_experiment("learning_rate", tmp_path, "--config.learning_rates=(1e5, 1e6)")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  report = (tmp_path / "report.md").read_text()
  assert "Every learning rate diverged" in report
  assert (tmp_path / "final_loss_vs_lr.png").read_bytes()[:4] == b"\x89PNG"


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
