"""Bad input as a user meets it on the command line: one line on stderr, the
documented exit code, no traceback, and nothing written or lost.

One table holds the refusals that share that check (a flag, a config file, a
config value found at each stage that checks it, data, weights, a workdir);
the cases below it need more set-up or check more. Which config values are
refused, and with what words, is tested in process, key by key, in
tests/unit/test_config_validation.py.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import (DEFAULT, DEFAULT_ARGS, DEFAULT_LONGER, REPO, assert_one_line,
                      in_a_mount_namespace, messages, png_header, run_cli, status, subprocess_env,
                      user_loader, write_images)
from vgg_jax.training import workdir as workdir_lib

SHORT = "--config.num_epochs=1"


def _config_file(source):
  def make(tmp_path):
    path = tmp_path / "bad_config.py"
    path.write_text(source)
    return [f"--config={path}"]
  return make


def _stand_in(tmp_path, *extra):
  write_images(str(tmp_path / "folder"), corrupt=False)
  return ["--config=configs/cats_vs_dogs.py:stand_in", f"--config.dataset.path={tmp_path / 'folder'}",
          "--config.batch_size=4", "--config.eval_batch_size=4", *extra]


def _one_class_folder(tmp_path):
  write_images(str(tmp_path / "only"), corrupt=False)
  shutil.rmtree(tmp_path / "only" / "dog")
  return [DEFAULT, "--config.dataset.name=image_folder", f"--config.dataset.path={tmp_path / 'only'}",
          "--config.dataset.image_size=8"]


def _sixteen_bit(path, value):
  """A 16-bit grayscale PNG (Pillow mode I;16), as scientific cameras write."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.full((8, 8), value, np.uint16)).save(path)
  return str(path)


def _sixteen_bit_folder(tmp_path):
  for name, value in (("dark", 1000), ("bright", 40000)):
    os.makedirs(tmp_path / "deep" / name)
    for i in range(4):
      _sixteen_bit(tmp_path / "deep" / name / f"{i}.png", value + i)
  return [DEFAULT, "--config.dataset.name=image_folder", f"--config.dataset.path={tmp_path / 'deep'}",
          "--config.dataset.image_size=8"]


def _no_data(tmp_path):
  return ["--config=configs/fashion_mnist.py", f"--config.dataset.data_dir={tmp_path}",
          f"--config.dataset.idx_dir={tmp_path / 'none'}", "--config.dataset.download=False"]


EIGHT_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}

# id: (module, args or args(tmp_path), env, the words the one line must hold).
# Every case is refused with exit 2 and one line, and no workdir is created;
# in AFTER_LOGS, the line comes after the data's own log lines ("HH:MM:SS ...").
ONE_LINE_REFUSALS = {
    # Flags and config files (vgg_jax/cli.py).
    "unknown_key": ("main", [DEFAULT, "--config.optimizer.nme=adam"], {},
                    ["unknown config key in --config.optimizer.nme=adam"]),
    "bad_value_type": ("main", [DEFAULT, "--config.batch_size=abc"], {}, ["--config.batch_size=abc"]),
    "missing_config_file": ("main", ["--config=configs/missing.py"], {}, ["configs/missing.py"]),
    "unknown_flag": ("main", [DEFAULT, "--no_such_flag=1"], {}, ["no_such_flag"]),
    "config_syntax_error": ("main", _config_file("def get_config(:\n"), {},
                            ["SyntaxError: invalid syntax"]),
    "get_config_raises": ("main", _config_file("def get_config():\n  raise RuntimeError('boom')\n"),
                          {}, ["RuntimeError: boom"]),
    "get_config_returns_a_partial_dict": (
        "main", _config_file("def get_config():\n  return {'seed': 0}\n"), {},
        ["config error: dtype='<missing>'"]),
    "unknown_variant": ("main", ["--config=configs/cats_vs_dogs.py:bogus"], {},
                        ["ValueError: unknown variant 'bogus'"]),
    # Config values, at each stage that checks them: validation, the sweep's
    # overrides, the data's size, the devices.
    "validation": ("main", [DEFAULT, "--config.optimizer.name=adamx"], {},
                   ["vgg_jax: config error: optimizer.name='adamx' is invalid; allowed: one of sgd"]),
    "sweep_override": ("main", [DEFAULT, '--config.sweep=[{"seed": 1.5}]'], {},
                       ["vgg_jax: config error: ", " seed=1.5", "allowed:"]),
    "batch_over_the_data": ("main", [DEFAULT, "--config.batch_size=100000"], {},
                            ["vgg_jax: config error: ", " batch_size=100000", "allowed:"]),
    "more_devices_than_seen": ("main", [DEFAULT, "--config.num_devices=3"], {},
                               ["vgg_jax: config error: ", " num_devices=3", "allowed:"]),
    "batch_not_divisible_by_devices": (
        "main", [DEFAULT, "--config.batch_size=60", "--config.num_devices=8"], EIGHT_DEVICES,
        [" batch_size=60", "multiple of the 8 devices"]),
    "huge_seed": ("main", [DEFAULT, f"--config.seed={2**64}"], {},
                  ["seed=18446744073709551616 is invalid"]),
    # Used to die in eval with "range() arg 3 must not be zero".
    "empty_validation_split": ("main", [DEFAULT, "--config.dataset.validation_fraction=0.0001"],
                               {}, ["dataset.validation_fraction=0.0001 is invalid"]),
    "empty_test_split": ("main", [DEFAULT, "--config.dataset.test_fraction=0.0001"], {},
                         ["dataset.test_fraction=0.0001 is invalid"]),
    # Data.
    "missing_dataset": ("main", _no_data, {},
                        ["TFDS data in", "IDX files in", "TFDS download",
                         "apt-get install dataset-fashion-mnist",
                         "vgg_jax.data.prepare fashion_mnist"]),
    "image_folder_of_one_class": ("main", _one_class_folder, {}, ["need at least 2"]),
    "user_loader_with_a_nan": ("main", lambda t: [DEFAULT, "--config.dataset.name="
                                                  + user_loader(t, "nan_features")], {},
                               ["non-finite"]),
    "prepare_from_an_empty_directory": (
        "vgg_jax.data.prepare", lambda t: ["fashion_mnist", "--from", t, "--data_dir", t / "d"],
        {}, ["does not hold the four IDX files"]),
    # Weights.
    "freeze_without_weights": ("main", lambda t: _stand_in(t), {}, [" model.pretrained="]),
    "missing_weights_file": ("main", lambda t: _stand_in(
        t, f"--config.model.pretrained={t / 'missing.h5'}"), {}, ["missing.h5 does not exist"]),
    # Experiments.
    "experiment_bad_override": ("experiments.learning_rate",
                                ["--mode=smoke", "--config.train.batch_size=0"], {},
                                ["batch_size"]),
    "experiment_without_seeds": ("experiments.learning_rate", ["--mode=smoke", "--config.seeds=()"],
                                 {}, ["seeds=()", "non-empty"]),
    "experiment_with_no_evals": ("experiments.dropout", ["--mode=smoke",
                                                         "--config.evals_per_run=0"], {},
                                 ["evals_per_run=0", "an integer >= 1"]),
    "experiment_without_its_data": (
        "experiments.learning_rate",
        lambda t: ["--mode=smoke", "--config.train.dataset.name=mnist",
                   f"--config.train.dataset.idx_dir={t / 'none'}",
                   f"--config.train.dataset.data_dir={t / 'none'}",
                   "--config.train.dataset.download=False"], {}, ["dataset mnist not found"]),
}
ONE_LINE_REFUSALS["loader_calls_sys_exit_0"] = (
    "main", lambda t: [DEFAULT, f"--config.dataset.name={user_loader(str(t), 'exits_0')}"], {},
    ["exits_0: the loader exited (SystemExit(0)) while loading"])
def _one_image_per_class(tmp_path):
  write_images(str(tmp_path / "tiny"), corrupt=False)
  for name in ("cat", "dog"):
    for extra in sorted(os.listdir(tmp_path / "tiny" / name))[1:]:
      os.remove(tmp_path / "tiny" / name / extra)
  return [DEFAULT, "--config.dataset.name=image_folder", f"--config.dataset.path={tmp_path / 'tiny'}",
          "--config.dataset.image_size=8", "--config.dataset.validation_fraction=0.1"]


def _folder_is_a_file(tmp_path):
  (tmp_path / "photos.zip").write_bytes(b"PK")
  return [DEFAULT, "--config.dataset.name=image_folder",
          f"--config.dataset.path={tmp_path / 'photos.zip'}", "--config.dataset.image_size=8"]


ONE_LINE_REFUSALS.update({
    "one_image_per_class": ("main", _one_image_per_class, {},
                            ["has 1 training example: too few to hold out a validation split"]),
    "validation_fraction_leaves_no_batch": (
        "main", [DEFAULT, "--config.dataset.validation_fraction=0.999"], {},
        ["dataset.validation_fraction=0.999", "held out all but"]),
    "image_folder_path_is_a_file": ("main", _folder_is_a_file, {},
                                    ["photos.zip is a file, not a directory"]),
})
ONE_LINE_REFUSALS["sixteen_bit_images"] = ("main", _sixteen_bit_folder, {},
                                            ["16-bit image (Pillow mode I;16)", "real range"])
# The image folder is read (and says so) before the weights and before decoding.
AFTER_LOGS = {"missing_weights_file", "sixteen_bit_images", "one_image_per_class"}


@pytest.mark.parametrize("case", sorted(ONE_LINE_REFUSALS))
def test_refused_in_one_line_with_exit_2_and_nothing_written(case, tmp_path):
  module, args, env, expected = ONE_LINE_REFUSALS[case]
  args = args(tmp_path) if callable(args) else args
  workdir = tmp_path / "run"
  proc = run_cli(args, None if module == "vgg_jax.data.prepare" else workdir,
                 module="vgg_jax.main" if module == "main" else module, env=env)
  line = assert_one_line(proc, expected[0], after_logs=case in AFTER_LOGS)
  for words in expected[1:]:
    assert words in line, line
  assert not workdir.exists()


@pytest.mark.parametrize("workdir", ["", "file", "deep"])
def test_an_unusable_workdir_is_one_line(workdir, tmp_path):
  if workdir == "file":
    (tmp_path / "file").write_text("x")
    workdir = str(tmp_path / "file")
  elif workdir == "deep":
    workdir = str(tmp_path / ("x" * 300))  # A name longer than the filesystem allows.
  proc = run_cli([DEFAULT, SHORT], workdir)
  line = assert_one_line(proc, "vgg_jax: ")
  assert line.startswith("vgg_jax: ")
  json.dumps(line)  # Plain text.


# ------------------------------------------------------- a broken workdir


WORKDIR_FAULTS = {
    # name: (damage(workdir), text of the one line)
    "checkpoints_is_a_file": (lambda w: (shutil.rmtree(w / "checkpoints"),
                                         (w / "checkpoints").write_text("x")),
                              "checkpoints should be a directory"),
    "tensorboard_is_a_file": (lambda w: (shutil.rmtree(w / "tensorboard"),
                                         (w / "tensorboard").write_text("x")),
                              "tensorboard should be a directory"),
    "metrics_is_a_directory": (lambda w: (os.remove(w / "metrics.jsonl"),
                                          os.mkdir(w / "metrics.jsonl")),
                               "metrics.jsonl should be a file"),
    "config_json_is_junk": (lambda w: (w / "config.json").write_bytes(b"\xff\x00{"),
                            "config.json is unreadable"),
    "config_json_is_a_list": (lambda w: (w / "config.json").write_text("[1, 2]"),
                              "config.json is unreadable"),
}


def assert_fails_in_one_line(proc, expected, code=2):
  """Like assert_one_line, but the run's own progress lines may come first."""
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert proc.returncode == code, proc.stderr[-3000:]
  lines = messages(proc.stderr)
  assert len(lines) <= 2 and expected in lines[-1], proc.stderr[-3000:]


@pytest.mark.parametrize("fault", sorted(WORKDIR_FAULTS))
def test_a_broken_workdir_is_one_line_and_left_as_it_was(fault, trained_copy):
  damage, expected = WORKDIR_FAULTS[fault]
  damage(trained_copy)
  before = sorted(p.name for p in trained_copy.iterdir())
  assert_fails_in_one_line(run_cli(DEFAULT_LONGER, trained_copy), expected)
  assert sorted(p.name for p in trained_copy.iterdir()) == before


def test_a_workdir_of_another_config_is_refused_with_the_differences(trained_copy):
  before = (trained_copy / "config.json").read_text()
  proc = run_cli(DEFAULT_ARGS + ["--config.model.hidden_sizes=(32,)", "--config.seed=3"],
                 trained_copy)
  line = assert_one_line(proc, "model.hidden_sizes")
  assert "seed: 0 there, 3 here" in line
  assert (trained_copy / "config.json").read_text() == before
  # Cadence may change: this resumes (and finds the run finished).
  assert run_cli(DEFAULT_ARGS + ["--config.log_every_steps=5"], trained_copy).returncode == 0


def test_no_readable_checkpoint_is_a_clear_error_and_keeps_the_workdir(trained_copy):
  steps = [d for d in os.listdir(trained_copy / "checkpoints") if d.isdigit()]
  assert len(steps) == 2
  for step in steps:
    os.remove(trained_copy / "checkpoints" / step / "state" / "manifest.ocdbt")
  metrics_before = (trained_copy / "metrics.jsonl").read_text()
  again = run_cli(DEFAULT_ARGS, trained_copy)
  assert again.returncode == 2
  errors = [l for l in again.stderr.splitlines() if l.startswith("vgg_jax:")]
  assert len(errors) == 1 and errors[0].startswith("vgg_jax: no readable checkpoint")
  assert "refusing to start" in errors[0]
  assert again.stderr.count("is unreadable") == 2  # Each damaged step: its own warning.
  assert (trained_copy / "metrics.jsonl").read_text() == metrics_before  # Nothing overwritten.
  assert os.listdir(trained_copy / "corrupt_checkpoints")


def test_a_busy_workdir_is_refused_in_one_line_and_a_killed_holder_does_not_block(tmp_path):
  code = ("import sys, time; from vgg_jax.training import workdir as w\n"
          "with w.locked(sys.argv[1]):\n  print('held', flush=True); time.sleep(600)\n")
  holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  try:
    busy = run_cli([DEFAULT, SHORT], tmp_path)
    assert_one_line(busy, f"in use by pid {holder.pid} on ")
    assert sorted(os.listdir(tmp_path)) == [workdir_lib.LOCK_FILE]  # Nothing written.
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  rerun = run_cli([DEFAULT, SHORT], tmp_path)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  with open(tmp_path / workdir_lib.LOCK_FILE) as f:
    assert f.read().startswith("pid ")


# --------------------------------------------------------- a diverged run


NAN_ARGS = [DEFAULT, "--config.optimizer.name=sgd", "--config.optimizer.learning_rate=0.1",
            "--config.optimizer.schedule=step", "--config.optimizer.step_boundaries=(0.5,)",
            "--config.optimizer.step_factor=1e30", "--config.num_train_steps=40",
            "--config.model.hidden_sizes=(32,)"]


@pytest.mark.parametrize("debug_nans", [False, True])
def test_a_diverged_run_exits_1_with_one_line(debug_nans, tmp_path):
  """With debug_nans the line names the primitive. In its own process: in one
  that already ran a diverging config, JAX's cached primitives skipped the
  check (seen with jax 0.10.2)."""
  proc = run_cli(NAN_ARGS + [f"--config.debug_nans={debug_nans}"], tmp_path)
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  if debug_nans:
    import re  # pylint: disable=g-import-not-at-top
    assert re.search(r"jax_debug_nans: invalid value \(nan\) encountered in \w+", last), last
  else:
    assert "diverged at step" in last and len(messages(proc.stderr)) == 1, proc.stderr
  assert status(tmp_path)["status"] == "diverged"


# ------------------------------------------------------------ predict


def _drop_key(path, section, key):
  config = json.loads(path.read_text())
  del config[section][key]
  path.write_text(json.dumps(config))


PREDICT_FAULTS = {
    "config_json_empty_object": (lambda w: (w / "config.json").write_text("{}"),
                                 "config.json or model_info.json lacks a field"),
    "config_json_lacks_model_name": (lambda w: _drop_key(w / "config.json", "model", "name"),
                                     "model.name='<missing>'"),
    "model_info_is_junk": (lambda w: (w / "model_info.json").write_text("{bad"),
                           "model_info.json is damaged"),
    "model_info_lacks_a_key": (lambda w: (w / "model_info.json").write_text('{"class_names": [1]}'),
                               "KeyError: 'image_shape'"),
    "checkpoints_empty": (lambda w: [shutil.rmtree(p) for p in (w / "checkpoints").iterdir()],
                          "has no checkpoint yet"),
    "checkpoints_only_a_partial_save": (
        lambda w: ([shutil.rmtree(p) for p in (w / "checkpoints").iterdir()],
                   os.mkdir(w / "checkpoints" / "40.orbax-checkpoint-tmp-1")),
        "has no checkpoint yet"),
    "no_config_json": (lambda w: os.remove(w / "config.json"), "holds no trained run"),
}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("image") / "digit.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
  return path


def predict(*args):
  return run_cli(args, module="vgg_jax.predict")


@pytest.mark.parametrize("fault", sorted(PREDICT_FAULTS))
def test_predict_on_a_damaged_workdir_is_one_line(fault, trained_copy, image):
  damage, expected = PREDICT_FAULTS[fault]
  damage(trained_copy)
  assert_fails_in_one_line(predict(f"--workdir={trained_copy}", image), expected)


@pytest.mark.parametrize("pixels,expected", [
    (20000, "DecompressionBombError"),  # Past twice Pillow's limit: Pillow refuses.
    (10000, "DecompressionBombWarning"),  # Past the limit: Pillow only warns, then decodes.
    (0, "UnidentifiedImageError"),  # Not an image at all.
])
def test_predict_on_a_bad_image_is_one_line(pixels, expected, trained_copy, tmp_path):
  path = tmp_path / "bomb.png"
  if pixels:
    png_header(path, pixels, pixels)
  else:
    path.write_text("not an image")
  assert_fails_in_one_line(predict(f"--workdir={trained_copy}", path),
                           f"cannot read image {path}: {expected}")


# ------------------------------------------------------------ read-only


def test_a_read_only_workdir_is_one_line(tmp_path):
  """A new workdir in a read-only directory, and a read-only workdir, in a
  read-only bind mount of a private mount namespace."""
  cases = [("$FULL/run", "cannot create --workdir="), ("$FULL", "cannot write in --workdir=")]
  script = ['mount --bind -o ro "$FULL" "$FULL" || exit 99']
  for i, (where, _) in enumerate(cases):
    script.append(f'"$PY" -m vgg_jax.main {" ".join(DEFAULT_ARGS)} --workdir="{where}" '
                  f'2> "$OUT/err{i}"; echo $? > "$OUT/rc{i}"')
  proc = in_a_mount_namespace("\n".join(script), tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for i, (_, expected) in enumerate(cases):
    result = subprocess.CompletedProcess([], int((tmp_path / f"rc{i}").read_text()), "",
                                         (tmp_path / f"err{i}").read_text())
    assert_fails_in_one_line(result, expected)
    assert "Read-only file system" in result.stderr


def test_predict_refuses_a_16_bit_image_in_one_line(trained_copy, tmp_path):
  """Pillow's convert() clips a 16-bit image to white: refused, not misread."""
  image = _sixteen_bit(tmp_path / "scan.png", 30000)
  proc = run_cli([f"--workdir={trained_copy}", image], module="vgg_jax.predict")
  assert_one_line(proc, "scan.png is a 16-bit image (Pillow mode I;16)")


def test_ctrl_c_in_a_loader_is_one_line_and_exit_130(tmp_path):
  name = user_loader(str(tmp_path), "interrupted")
  proc = run_cli([DEFAULT, f"--config.dataset.name={name}"], tmp_path / "run")
  assert_one_line(proc, "interrupted (Ctrl-C) while loading", code=130)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("after", [0.3, 2.0])
def test_ctrl_c_at_start_up_is_one_line_and_exit_130(after, tmp_path):
  """SIGINT during imports, compilation or the first steps: one line, never
  swallowed (it once landed in a garbage-collection callback and the run went
  on to exit 0), never a traceback. Once training runs, it is the preemption
  path (exit 75), tested with the other signals in test_resume.py."""
  proc = subprocess.Popen([sys.executable, "-m", "vgg_jax.main", DEFAULT,
                           f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=subprocess_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  time.sleep(after)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode in (130, 75), err[-3000:]
  assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
  last = err.strip().splitlines()[-1]
  expected = "interrupted (Ctrl-C)" if proc.returncode == 130 else "stopped by SIGINT"
  assert expected in last, err[-3000:]
