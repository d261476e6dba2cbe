"""The command line as a user runs it: overrides reach the run, progress shows,
and a run on embedded data does without TensorFlow.

Bad input on the command line: test_bad_input.py. Resume: test_resume.py.
"""

import json
import subprocess
import sys

from conftest import DEFAULT, REPO, run_cli, subprocess_env
from vgg_jax import metrics


def test_overrides_reach_the_run(tmp_path):
  proc = run_cli([DEFAULT, "--config.optimizer.name=nadam", "--config.model.hidden_sizes=(32,)",
                  "--config.num_train_steps=30", "--config.log_every_steps=10"], tmp_path)
  assert proc.returncode == 0, proc.stderr
  with open(tmp_path / "config.json") as f:
    config = json.load(f)
  assert config["optimizer"]["name"] == "nadam" and config["model"]["hidden_sizes"] == [32]
  assert "test_accuracy=" in proc.stdout
  assert "step 10/30" in proc.stderr  # The progress line.
  assert [r["step"] for r in metrics.read_metrics(str(tmp_path), "train")] == [10, 20, 30]


def test_a_digits_run_never_imports_tensorflow(tmp_path):
  """TensorFlow serves TFDS data only: a run on embedded data, TensorBoard
  events included, does without it (3 s and about 300 MB a process)."""
  code = ("import sys\nfrom vgg_jax import config_lib, training\n"
          "config = config_lib.base_config()\nconfig.num_train_steps = 5\n"
          "training.train_and_evaluate(config, sys.argv[1])\n"
          "print(sorted(m for m in ('tensorflow', 'torch') if m in sys.modules))\n")
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == "[]"
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
