"""The command line as a user runs it: overrides, bad input, and resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_cli
from vgg_jax import metrics

DEFAULT = "--config=configs/default.py"

# (overrides, the key the one-line error must name)
BAD_INPUTS = [
    (["--config.optimizer.name=adamx"], "optimizer.name"),
    (["--config.model.activation=swishy"], "model.activation"),
    (["--config.model.kernel_init=zeros"], "model.kernel_init"),
    (["--config.model.name=resnet50"], "model.name"),
    (["--config.head=softmax"], "head"),
    (["--config.dataset.name=imagenet9"], "dataset.name"),
    (["--config.dtype=float16"], "dtype"),
    (["--config.optimizer.schedule=linear"], "optimizer.schedule"),
    (["--config.optimizer.learning_rate=0"], "optimizer.learning_rate"),
    (["--config.optimizer.learning_rate=-0.1"], "optimizer.learning_rate"),
    (["--config.optimizer.learning_rate=nan"], "optimizer.learning_rate"),
    (["--config.batch_size=0"], "batch_size"),
    (["--config.batch_size=-8"], "batch_size"),
    (["--config.batch_size=100000"], "batch_size"),
    (["--config.num_epochs=0"], "num_epochs"),
    (["--config.num_train_steps=-5"], "num_train_steps"),
    (["--config.model.dropout_rate=1.0"], "model.dropout_rate"),
    (["--config.model.dropout_rate=-0.1"], "model.dropout_rate"),
    (["--config.model.hidden_sizes=()"], "model.hidden_sizes"),
    (["--config.model.hidden_sizes=(64,0)"], "model.hidden_sizes"),
    (["--config.model.name=vgg16"], "dataset.image_size"),  # digits are 8x8.
    (["--config.model.name=vgg11", "--config.dataset.image_size=16"], "dataset.image_size"),
    (["--config.head=binary"], "head"),  # digits have 10 classes.
    (["--config.dataset.classes=(3,33)"], "dataset.classes"),
    (["--config.optimizer.schedule=warmup_cosine"], "optimizer.warmup_steps"),
    # A schedule longer than training.
    (["--config.optimizer.schedule=warmup_cosine", "--config.optimizer.warmup_steps=100000"],
     "optimizer.warmup_steps"),
    (["--config.num_devices=3"], "num_devices"),  # This process sees 1 device.
    (["--config.parallelism=tpu"], "parallelism"),
    (["--config.eval_train_examples=-1"], "eval_train_examples"),
    (["--config.model.input_dropout_rate=1.5"], "model.input_dropout_rate"),
    # Sweeps: a vmapped axis may not change shapes; axes keep their key's type.
    (['--config.sweep=[{"optimizer.learning_rate": [0.1, 0.2]}]'], "optimizer.learning_rate"),
    (['--config.sweep=[{"seed": 1.5}]'], "seed"),
    (['--config.sweep=[{"model.activation": 3}]'], "model.activation"),
    (['--config.sweep=[{"model.hidden_sizes": [0]}]'], "model.hidden_sizes"),
    (["--config.sweep=notjson"], "sweep"),
]


def test_batch_not_divisible_by_devices_is_refused(tmp_path):
  proc = run_cli([DEFAULT, "--config.batch_size=60", "--config.num_devices=8"],
                 workdir=tmp_path / "run",
                 env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
  assert " batch_size=60" in proc.stderr and "multiple of the 8 devices" in proc.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides,key", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(overrides, key, tmp_path):
  workdir = tmp_path / "run"
  proc = run_cli([DEFAULT] + overrides, workdir=workdir)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("vgg_jax: config error: ") and f" {key}=" in lines[0]
  assert "allowed:" in lines[0]
  assert not workdir.exists()


@pytest.mark.parametrize("args,expected", [
    (["--config.optimizer.nme=adam"], 'unknown config key in --config.optimizer.nme=adam'),
    (["--config.batch_size=abc"], "--config.batch_size=abc"),
    (["--config=configs/missing.py"], "configs/missing.py"),
    (["--no_such_flag=1"], "no_such_flag"),
])
def test_bad_flags_are_one_line_exit_2(args, expected, tmp_path):
  proc = run_cli([DEFAULT] + args, workdir=tmp_path / "run")
  assert proc.returncode == 2
  assert len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr
  assert not (tmp_path / "run").exists()


def test_overrides_reach_the_run(tmp_path):
  proc = run_cli([DEFAULT, "--config.optimizer.name=nadam", "--config.model.hidden_sizes=(32,)",
                  "--config.num_train_steps=30", "--config.log_every_steps=10"],
                 workdir=tmp_path)
  assert proc.returncode == 0, proc.stderr
  with open(tmp_path / "config.json") as f:
    config = json.load(f)
  assert config["optimizer"]["name"] == "nadam" and config["model"]["hidden_sizes"] == [32]
  assert "test_accuracy=" in proc.stdout
  assert "step 10/30" in proc.stderr  # The progress line.
  assert [r["step"] for r in metrics.read_metrics(str(tmp_path), "train")] == [10, 20, 30]


def _args(steps):
  return [DEFAULT, "--config.dataset.name=synthetic",
          "--config.dataset.synthetic.image_shape=(16,16,1)",
          "--config.model.hidden_sizes=(256,256)", "--config.model.dropout_rate=0.1",
          "--config.optimizer.schedule=cosine", f"--config.num_train_steps={steps}",
          "--config.checkpoint_every_steps=50", "--config.log_every_steps=25",
          "--config.eval_every_steps=100"]


def _checkpoint_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def test_sigkill_mid_run_then_rerun_matches_uninterrupted(tmp_path):
  steps = 1500
  ref = tmp_path / "ref"
  proc = run_cli(_args(steps), workdir=ref)
  assert proc.returncode == 0, proc.stderr
  expected = metrics.read_metrics(str(ref))

  killed = tmp_path / "killed"
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  env.pop("XLA_FLAGS", None)
  child = subprocess.Popen([sys.executable, "-m", "vgg_jax.main", *_args(steps),
                            f"--workdir={killed}"], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while time.time() < deadline and not any(s >= 300 for s in _checkpoint_steps(killed)):
    time.sleep(0.02)
  assert child.poll() is None, "the run finished before it could be killed"
  os.kill(child.pid, signal.SIGKILL)
  child.wait()
  kill_step = max(_checkpoint_steps(killed))
  assert kill_step < steps

  proc = run_cli(_args(steps), workdir=killed)
  assert proc.returncode == 0, proc.stderr
  got = metrics.read_metrics(str(killed))
  strip = lambda rows: [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in rows]
  # Checkpoints fall on log steps, so every row matches: no step is missing
  # or written twice, and the final test metrics are the uninterrupted ones.
  assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in expected]
  assert strip(got) == strip(expected)


CONFIG_FILE_FAULTS = {
    "syntax_error": ("def get_config(:\n", "SyntaxError: invalid syntax"),
    "get_config_raises": ("def get_config():\n  raise RuntimeError('boom')\n",
                          "RuntimeError: boom"),
    "returns_a_partial_dict": ("def get_config():\n  return {'seed': 0}\n",
                               "config error: dtype='<missing>'"),
}


@pytest.mark.parametrize("fault", sorted(CONFIG_FILE_FAULTS))
def test_a_config_file_that_fails_to_load_is_one_line(fault, tmp_path):
  source, expected = CONFIG_FILE_FAULTS[fault]
  path = tmp_path / "bad_config.py"
  path.write_text(source)
  proc = run_cli([f"--config={path}"], workdir=tmp_path / "run")
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and expected in lines[0], proc.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,expected", [
    (["--config=configs/cats_vs_dogs.py:bogus"], "ValueError: unknown variant 'bogus'"),
    ([DEFAULT, f"--config.seed={2**64}"], "seed=18446744073709551616 is invalid"),
    # Used to die in eval with "range() arg 3 must not be zero".
    ([DEFAULT, "--config.dataset.validation_fraction=0.0001"],
     "dataset.validation_fraction=0.0001 is invalid"),
    ([DEFAULT, "--config.dataset.test_fraction=0.0001"], "dataset.test_fraction=0.0001 is invalid"),
])
def test_an_unknown_variant_a_huge_seed_or_an_empty_split_is_one_line(args, expected, tmp_path):
  proc = run_cli(args, workdir=tmp_path / "run")
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and expected in lines[0], proc.stderr
  assert not (tmp_path / "run").exists()


DOCUMENTED_CONFIGS = [("default.py", None), ("fashion_mnist.py", None), ("fashion_mnist.py", "vgg"),
                      ("fashion_mnist.py", "vgg_bn"), ("fashion_mnist.py", "binary"),
                      ("vgg_digits.py", None), ("vgg_digits.py", "vgg11"),
                      ("vgg_digits.py", "vgg13"), ("vgg_digits.py", "vgg19"),
                      ("sweep_digits.py", None), ("vgg16_imagenet.py", None)]


@pytest.mark.parametrize("name,variant", DOCUMENTED_CONFIGS)
def test_every_documented_config_validates(name, variant):
  """Each config file and variant the README names passes validation as written."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from vgg_jax import config_validation  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(f"config_{name[:-3]}",
                                                os.path.join(REPO, "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant)
  config_validation.validate(config)
  if variant == "vgg_bn":  # The >= 0.94 recipe the README quotes.
    assert (config.model.name, config.model.width_multiplier, config.model.batch_norm,
            config.dataset.flip, config.num_epochs) == ("vgg16", 0.25, True, True, 30)
