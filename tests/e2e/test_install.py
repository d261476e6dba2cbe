"""A fresh virtualenv installs vgg_jax from the repo (the package index for
its dependencies, nothing else), and a user outside the repo runs it.

Slow (a few minutes: it installs TensorFlow, JAX and the rest), so it runs
only with --slow; .ci/run runs it after the suite:
    python -m pytest --slow -m slow
"""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

SOURCES = ("pyproject.toml", "README.md", "vgg_jax", "experiments", "configs")


def run(cmd, cwd, timeout=900):
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "PYTHONPATH", "VIRTUAL_ENV", "JAX_DISABLE_MOST_OPTIMIZATIONS")}
  proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
  return proc


def test_a_fresh_venv_install_trains_and_runs_an_experiment_from_outside_the_repo(tmp_path):
  source = tmp_path / "source"  # A copy: the build writes nothing into the checkout.
  source.mkdir()
  for name in SOURCES:
    src = os.path.join(REPO, name)
    if os.path.isdir(src):
      shutil.copytree(src, source / name, ignore=shutil.ignore_patterns(
          "__pycache__", "results", "*.egg-info"))
    else:
      shutil.copy(src, source / name)
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
  bin_dir = venv / "bin"
  run([bin_dir / "pip", "install", "-q", str(source)], cwd=tmp_path)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()

  # The default config, by name, through the console script.
  proc = run([bin_dir / "vgg-jax", "train", "--config=default", "--workdir=default"],
             cwd=elsewhere)
  accuracy = float(proc.stdout.split("test_accuracy=")[1].split()[0])
  assert accuracy > 0.9, proc.stdout
  assert "compiled the train program" in proc.stderr

  # An experiment, in smoke mode, from the installed package.
  proc = run([bin_dir / "vgg-jax", "dropout", "--mode=smoke", "--workdir=dropout"],
             cwd=elsewhere)
  assert (elsewhere / "dropout" / "report.md").exists(), proc.stdout

  # The digits path never imports TensorFlow (nor torch).
  code = ("import atexit, sys\n"
          "atexit.register(lambda: print('imported:', sorted(m for m in ('tensorflow', "
          "'torch', 'tensorflow_datasets') if m in sys.modules)))\n"
          "from vgg_jax import commands\n"
          "commands.main(['vgg-jax', 'train', '--config=default', "
          "'--config.num_train_steps=20', '--workdir=short'])\n")
  proc = run([bin_dir / "python", "-c", code], cwd=elsewhere)
  assert proc.stdout.strip().splitlines()[-1] == "imported: []", proc.stdout
  # Nothing came from the checkout.
  proc = run([bin_dir / "python", "-c", "import vgg_jax, vgg_jax.experiments.dropout as d; "
              "print(vgg_jax.__file__, d.__file__)"], cwd=elsewhere)
  assert REPO not in proc.stdout and str(venv) in proc.stdout
