"""vgg_jax as an installed command and a library: the vgg-jax console script
from outside the repo, configs by name, each command's --help, the example
notebook, and the profiler trace.

A fresh virtualenv's install of the package: test_install.py (slow).
"""

import os
import subprocess
import sys

import pytest

from conftest import subprocess_env, tiny_config
from vgg_jax import commands

SCRIPT = os.path.join(os.path.dirname(sys.executable), "vgg-jax")


def vgg_jax_command(*args, cwd, timeout=300):
  return subprocess.run([SCRIPT, *map(str, args)], cwd=cwd, env=subprocess_env(),
                        capture_output=True, text=True, timeout=timeout)


def test_the_console_script_trains_a_config_by_name_from_anywhere(tmp_path):
  proc = vgg_jax_command("train", "--config=default", "--config.num_train_steps=20",
                         "--config.log_every_steps=10", "--workdir=run", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "test_accuracy=" in proc.stdout and (tmp_path / "run" / "metrics.jsonl").exists()
  # It says what it is doing: the layers, then the compile and how long it took.
  assert "layers (parameters per model):" in proc.stderr
  for layer in ("hidden_0  64x256 + 256", "output    256x10 + 10", "total"):
    assert layer in proc.stderr
  assert "compiling the train program" in proc.stderr
  assert "compiled the train program" in proc.stderr and "FLOP per example" in proc.stderr
  # A bad name is one line (a repo path outside the repo: tests/unit/test_api.py).
  bad = vgg_jax_command("train", "--config=defualt", "--workdir=bad", cwd=tmp_path)
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
  assert "no built-in config of that name (built-in: cats_vs_dogs, default" in bad.stderr
  assert not (tmp_path / "bad").exists()


def test_vgg_jax_lists_its_commands_and_refuses_an_unknown_one(tmp_path):
  proc = vgg_jax_command("--help", cwd=tmp_path)
  assert proc.returncode == 0
  for name in commands.COMMANDS:
    assert f"\n  {name} " in proc.stdout
  unknown = vgg_jax_command("trian", cwd=tmp_path)
  assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr


@pytest.mark.parametrize("name,own_flags,config_doc", [
    ("train", ["--workdir", "--config", "--sweep_shard"], "config_lib.py"),
    ("dropout", ["--workdir", "--mode", "--dataset", "--sweep_shard"], "dropout.py"),
    ("vanishing-gradient", ["--workdir", "--mode"], "vanishing_gradient.py"),
    ("predict", ["--workdir", "--weights", "--top_k"], "config_lib.py"),
    ("visualize", ["--image", "--out", "--channels"], "config_lib.py"),
    ("to-folder", ["--out", "--classes"], "config_lib.py"),
])
def test_each_command_help_lists_its_own_flags_an_example_and_the_config_keys(
    name, own_flags, config_doc, tmp_path):
  proc = vgg_jax_command(name, "--help", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  for flag in own_flags:
    assert f"\n  {flag}: " in proc.stdout, (flag, proc.stdout)
  assert f"vgg-jax {name} " in proc.stdout  # The example.
  assert config_doc in proc.stdout


def test_profile_steps_writes_a_trace_tensorboard_opens(tmp_path):
  from vgg_jax import training  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.profile_steps, config.profile_start_step = 4, 4
  training.train_and_evaluate(config, str(tmp_path))
  traces = list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  # benchmarks/profile_ops.py reads the ops back: the MLP's matmuls are there.
  from benchmarks import profile_ops  # pylint: disable=g-import-not-at-top
  total, count = profile_ops.op_times(str(traces[0]))
  assert any(profile_ops.is_matmul(name) for name in total) and max(count.values()) >= 4


def test_the_example_notebook_runs(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  for key, value in subprocess_env(VGG_JAX_NOTEBOOK_EPOCHS=2,
                                   VGG_JAX_NOTEBOOK_WORKDIR=tmp_path).items():
    monkeypatch.setenv(key, value)
  notebook = nbformat.read(os.path.join(REPO, "docs", "notebook.ipynb"), as_version=4)
  nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  logged = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "compiled the train program" in logged  # train() shows its progress.
  table = outputs[-1]["data"]["text/plain"]  # The sweep's last test rows, one per rate.
  assert all(rate in table for rate in ("0.0001", "0.001", "0.01"))
  assert (tmp_path / "sweep" / "results.csv").exists()


def test_the_accelerator_benchmark_runs_on_cpu():
  """benchmarks/accelerator.py's smoke run: every form prints a row with its
  FLOPs and MFU (on 2 fake CPU devices, so the data-parallel forms run)."""
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  proc = subprocess.run([sys.executable, "-m", "benchmarks.accelerator", "--smoke",
                         "--dtypes=float32"], cwd=REPO, capture_output=True, text=True,
                        env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {line[:30].strip(): line[30:].split() for line in proc.stdout.splitlines()
          if line.startswith(("jit", "pmap", "vmap"))}
  assert sorted(rows) == ["jit, 1 device", "jit, 2 devices", "pmap, 2 devices",
                          "vmap sweep, 8 MLPs, 1 device"]
  for dtype, images, gflop, _, _, mfu in rows.values():
    assert dtype == "float32" and float(images) > 0 and float(gflop) > 0 and mfu.endswith("%")
  # Two devices run twice the examples of one, so twice the FLOPs per step.
  assert float(rows["jit, 2 devices"][2]) == pytest.approx(2 * float(rows["jit, 1 device"][2]),
                                                          rel=0.05)
