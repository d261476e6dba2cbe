"""Faults a user meets, one test each: a broken workdir, damaged run files, a
full disk, bad weights files and decompression bombs. Each gives one line
naming the file (exit 2), or its documented recovery, and never a traceback.

The CLI tests count stderr lines other than the run's own progress lines
(the model, `step i/n`, `resumed from`): at most 2. The weights and image faults are checked in
process, where they are cheap; vgg_jax.main turns any UserError into its one
line (tests/test_cli.py).
"""

import errno
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_cli
from vgg_jax import errors, metrics, pretrained

ARGS = ["--config=configs/default.py", "--config.num_train_steps=40",
        "--config.checkpoint_every_steps=20", "--config.log_every_steps=20"]
LONGER = ARGS[:1] + ["--config.num_train_steps=60"] + ARGS[2:]
# The run's own progress: the model line, step lines, the resume line.
PROGRESS = re.compile(r"^\d\d:\d\d:\d\d (step \d+/\d+ |resumed from checkpoint at step \d+$"
                      r"|\w+ on .* params, .* train examples)")


def messages(proc):
  """stderr without the progress lines."""
  return [l for l in proc.stderr.strip().splitlines() if l and not PROGRESS.match(l)]


def assert_fails_in_one_line(proc, expected, code=2):
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert proc.returncode == code, proc.stderr[-3000:]
  lines = messages(proc)
  assert len(lines) <= 2 and expected in lines[-1], proc.stderr[-3000:]


def status(workdir):
  with open(os.path.join(workdir, metrics.STATUS_FILE)) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 40-step default run (checkpoints 22 and 40) in run/, the same
  run extended to 60 steps in run60/: what a repaired rerun must match."""
  root = tmp_path_factory.mktemp("faults")
  proc = run_cli(ARGS, workdir=root / "run")
  assert proc.returncode == 0, proc.stderr[-3000:]
  shutil.copytree(root / "run", root / "run60")
  proc = run_cli(LONGER, workdir=root / "run60")
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = run_cli(LONGER, workdir=root / "straight60")  # Uninterrupted.
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert status(root / "straight60")["params_sha256"] == status(root / "run60")["params_sha256"]
  return root


@pytest.fixture
def workdir(trained, tmp_path):
  """A copy of the trained run to damage."""
  shutil.copytree(trained / "run", tmp_path / "run")
  return tmp_path / "run"


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


@pytest.mark.parametrize("fault", sorted(WORKDIR_FAULTS))
def test_a_broken_workdir_is_one_line_and_left_as_it_was(fault, workdir):
  damage, expected = WORKDIR_FAULTS[fault]
  damage(workdir)
  before = sorted(p.name for p in workdir.iterdir())
  proc = run_cli(LONGER, workdir=workdir)
  assert_fails_in_one_line(proc, expected)
  assert sorted(p.name for p in workdir.iterdir()) == before


# ------------------------------------------- damaged files a rerun repairs


REPAIRED_FAULTS = {
    # name: (damage(workdir), whether a warning names the damage)
    "metrics_null_line": (lambda w: _insert_line(w / "metrics.jsonl", b"null\n"), True),
    "metrics_binary_junk": (lambda w: _insert_line(w / "metrics.jsonl", b"\x00\xff\xfe junk\n"),
                            True),
    "metrics_cut_off_last_line": (lambda w: _append(w / "metrics.jsonl", b'{"step": 4'), False),
    "status_json_is_junk": (lambda w: (w / "status.json").write_text("{bad"), False),
    "model_info_is_junk": (lambda w: (w / "model_info.json").write_text("{bad"), False),
}


def _insert_line(path, line):
  lines = path.read_bytes().splitlines(keepends=True)
  path.write_bytes(b"".join(lines[:2] + [line] + lines[2:]))


def _append(path, data):
  with open(path, "ab") as f:
    f.write(data)


@pytest.mark.parametrize("fault", sorted(REPAIRED_FAULTS))
def test_damaged_run_files_are_repaired_by_the_rerun(fault, workdir, trained):
  damage, warns = REPAIRED_FAULTS[fault]
  damage(workdir)
  proc = run_cli(LONGER, workdir=workdir)
  assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  warnings = [l for l in messages(proc) if "damaged line" in l]
  assert len(warnings) == (1 if warns else 0), proc.stderr
  assert len(messages(proc)) <= 2, proc.stderr
  kept = [p for p in workdir.iterdir() if ".damaged-" in p.name]
  assert len(kept) == (1 if warns else 0)  # The original is kept aside.
  ref = trained / "run60"
  assert status(workdir)["params_sha256"] == status(ref)["params_sha256"]
  strip = lambda rows: [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in rows]
  assert strip(metrics.read_metrics(str(workdir))) == strip(metrics.read_metrics(str(ref)))


def test_a_truncated_checkpoint_falls_back_quietly(workdir, trained):
  data = [os.path.join(root, f) for root, _, files in os.walk(workdir / "checkpoints" / "40")
          for f in files if os.sep + "d" + os.sep in os.path.join(root, f)]
  assert data
  for path in data:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  proc = run_cli(LONGER, workdir=workdir)
  assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = messages(proc)
  assert len(lines) <= 3 and "checkpoint at step 40 is unreadable" in lines[0], proc.stderr
  assert status(workdir)["params_sha256"] == status(trained / "run60")["params_sha256"]


# ------------------------------------------------------------ predict


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


def _drop_key(path, section, key):
  config = json.loads(path.read_text())
  del config[section][key]
  path.write_text(json.dumps(config))


def _predict(args):
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "vgg_jax.predict", *map(str, args)], cwd=REPO,
                        env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("image") / "digit.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
  return path


@pytest.mark.parametrize("fault", sorted(PREDICT_FAULTS))
def test_predict_on_a_damaged_workdir_is_one_line(fault, workdir, image):
  damage, expected = PREDICT_FAULTS[fault]
  damage(workdir)
  assert_fails_in_one_line(_predict([f"--workdir={workdir}", image]), expected)


def png_header(path, width, height):
  """A PNG that claims width x height pixels: what Pillow's bomb check reads."""
  import struct, zlib  # pylint: disable=g-import-not-at-top,multiple-imports

  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))

  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                   + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
  return path


@pytest.mark.parametrize("pixels,expected", [
    (20000, "DecompressionBombError"),  # Past twice Pillow's limit: Pillow refuses.
    (10000, "DecompressionBombWarning"),  # Past the limit: Pillow only warns, then decodes.
    (0, "UnidentifiedImageError"),  # Not an image at all.
])
def test_predict_on_a_bad_image_is_one_line(pixels, expected, trained, tmp_path):
  path = tmp_path / "bomb.png"
  if pixels:
    png_header(path, pixels, pixels)
  else:
    path.write_text("not an image")
  assert_fails_in_one_line(_predict([f"--workdir={trained / 'run'}", path]),
                           f"cannot read image {path}: {expected}")


def test_a_decompression_bomb_in_a_folder_is_skipped_with_a_warning(tmp_path, caplog):
  import logging  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vgg_jax.data import image_folder  # pylint: disable=g-import-not-at-top
  paths = []
  for i in range(3):
    paths.append(tmp_path / f"{i}.png")
    Image.fromarray(np.full((6, 6, 3), i, np.uint8)).save(paths[-1])
  paths.insert(1, png_header(tmp_path / "bomb.png", 10000, 10000))
  with caplog.at_level(logging.WARNING):
    images, good = image_folder.decode_all([str(p) for p in paths], 4)
  assert list(good) == [0, 2, 3] and images.shape == (3, 4, 4, 3)
  assert any("bomb.png" in r.getMessage() and "DecompressionBomb" in r.getMessage()
             for r in caplog.records)


# ---------------------------------------------------------- a full disk


def _in_a_mount_namespace(script, tmp_path):
  """Runs a shell script in a private mount namespace (its mounts, such as a
  small tmpfs at $FULL, are gone when it ends); skips where namespaces are
  not allowed. $OUT is tmp_path, outside the mounts."""
  unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
  probe = subprocess.run(unshare + ["sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
                         capture_output=True)
  if probe.returncode:
    pytest.skip("cannot mount a tmpfs in a private mount namespace here")
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             FULL=str(tmp_path / "full"), OUT=str(tmp_path), PY=sys.executable)
  env.pop("XLA_FLAGS", None)
  os.makedirs(tmp_path / "full")
  return subprocess.run(unshare + ["sh", "-c", script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)


@pytest.mark.parametrize("size,kept", [
    ("1600k", "the newest complete checkpoint, step 22"),  # The second checkpoint fails.
    ("8k", "no checkpoint had been completed"),  # model_info.json fails.
])
def test_a_full_disk_is_one_line_keeps_the_checkpoint_and_the_rerun_resumes(
    size, kept, trained, tmp_path):
  main = f'"$PY" -m vgg_jax.main {" ".join(LONGER)} --workdir="$FULL/run"'
  script = "\n".join([
      f'mount -t tmpfs -o size={size} tmpfs "$FULL" || exit 99',
      f'{main} 2> "$OUT/first.err"; echo $? > "$OUT/first.rc"',
      'mount -o remount,size=16m "$FULL"',  # Space freed.
      f'{main} 2> "$OUT/second.err"; echo $? > "$OUT/second.rc"',
      'cp "$FULL/run/status.json" "$FULL/run/metrics.jsonl" "$OUT/"'])
  proc = _in_a_mount_namespace(script, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  first = subprocess.CompletedProcess([], int((tmp_path / "first.rc").read_text()), "",
                                      (tmp_path / "first.err").read_text())
  assert_fails_in_one_line(first, "no space left on the device of --workdir=")
  assert kept in first.stderr and "rerun the same command to resume" in first.stderr
  second = (tmp_path / "second.err").read_text()
  assert (tmp_path / "second.rc").read_text().strip() == "0", second[-3000:]
  assert "Traceback" not in second
  ref = trained / "straight60"
  assert status(tmp_path)["params_sha256"] == status(ref)["params_sha256"]
  strip = lambda rows: [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in rows]
  assert strip(metrics.read_metrics(str(tmp_path))) == strip(metrics.read_metrics(str(ref)))


@pytest.mark.parametrize("where,expected", [
    ("$FULL/run", "cannot create --workdir="),  # A new workdir in a read-only directory.
    ("$FULL", "cannot write in --workdir="),  # A read-only workdir.
])
def test_a_read_only_workdir_is_one_line(where, expected, tmp_path):
  script = "\n".join([
      'mount --bind -o ro "$FULL" "$FULL" || exit 99',
      f'"$PY" -m vgg_jax.main {" ".join(ARGS)} --workdir="{where}" 2> "$OUT/err"; '
      'echo $? > "$OUT/rc"'])
  proc = _in_a_mount_namespace(script, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = subprocess.CompletedProcess([], int((tmp_path / "rc").read_text()), "",
                                       (tmp_path / "err").read_text())
  assert_fails_in_one_line(result, expected)
  assert "Read-only file system" in result.stderr


def test_disk_full_is_recognized_through_tensorflow_and_orbax_wrappers():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  assert errors.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
  assert errors.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
  # What the TensorBoard writer raised (issue 17), and orbax's TensorStore error.
  assert errors.is_disk_full(tf.errors.ResourceExhaustedError(
      None, None, "/w/tensorboard/events.out; No space left on device"))
  wrapped = ValueError("RESOURCE_EXHAUSTED: Error writing ...")
  wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
  assert errors.is_disk_full(wrapped)
  assert not errors.is_disk_full(OSError(errno.EACCES, "Permission denied"))
  assert not errors.is_disk_full(ValueError("RESOURCE_EXHAUSTED: out of memory"))


# ------------------------------------------------------- weights files


def _weights_fixture():
  """A random narrow VGG11 in torchvision's layout, and the model it fits."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vgg_jax import config_lib, models  # pylint: disable=g-import-not-at-top

  def model_config(width=1 / 16, name="vgg11"):
    c = config_lib.base_config().model
    c.name, c.width_multiplier, c.classifier_sizes = name, width, (32, 32)
    return c

  def shapes(c):
    model = models.create_model(c, 10)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))["params"]

  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.random(s.shape, np.float32), shapes(model_config()))
  return pretrained.to_torchvision(params, "vgg11"), model_config, shapes


def _replace(state, **changes):
  state = dict(state)
  for key, value in changes.items():
    key = key.replace("__", ".")
    if value is None:
      del state[key]
    else:
      state[key] = value
  return state


WEIGHTS_FAULTS = {
    # name: (torchvision state -> state or raw safetensors header, model changes, message)
    "header_is_a_list": (lambda s: [1, 2], {}, "the header is a JSON list"),
    "header_entry_is_a_string": (lambda s: {"features.0.weight": "x"}, {},
                                 "not a readable safetensors file"),
    "conv_bias_missing": (lambda s: _replace(s, features__0__bias=None), {},
                          "has features.0.weight but no features.0.bias"),
    "fc_bias_missing": (lambda s: _replace(s, classifier__0__bias=None), {},
                        "has classifier.0.weight but no classifier.0.bias"),
    "conv_weight_is_2d": (lambda s: _replace(s, features__3__weight=np.zeros((8, 3), np.float32)),
                          {}, "features.3.weight has shape (8, 3)"),
    "conv_of_another_shape": (
        lambda s: _replace(s, features__3__weight=np.zeros((7, 4, 3, 3), np.float32)), {},
        "features.3.weight has shape (7, 4, 3, 3)"),
    "fc1_takes_no_square_map": (
        lambda s: _replace(s, classifier__0__weight=np.zeros((32, 37), np.float32)), {},
        "classifier.0.weight takes 37 inputs"),
    "model_narrower_than_the_file": (lambda s: s, {"width": 1 / 32},
                                     "conv1_1/kernel has shape (3, 3, 3, 4), the model needs "
                                     "(3, 3, 3, 2)"),
    "model_wider_than_the_file": (lambda s: s, {"width": 1 / 8}, "the model needs (3, 3, 3, 8)"),
    "another_vgg": (lambda s: s, {"name": "vgg16"}, "has 8 conv layers"),
}


@pytest.mark.parametrize("fault", sorted(WEIGHTS_FAULTS))
def test_a_weights_file_that_does_not_fit_is_one_line(fault, tmp_path):
  import struct  # pylint: disable=g-import-not-at-top
  from vgg_jax import finetune  # pylint: disable=g-import-not-at-top
  state, model_config, shapes = _weights_fixture()
  make, changes, expected = WEIGHTS_FAULTS[fault]
  content = make(state)
  path = tmp_path / f"{fault}.safetensors"
  if isinstance(content, dict) and all(isinstance(v, np.ndarray) for v in content.values()):
    pretrained.write_safetensors(str(path), content)
  else:  # A raw header.
    header = json.dumps(content).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)
  config = model_config(**changes)
  config.pretrained = str(path)
  with pytest.raises(pretrained.WeightsError) as e:
    finetune.load_pretrained(config, shapes(config), 3)
  assert "\n" not in str(e.value) and str(path) in str(e.value) and expected in str(e.value)


def test_the_unbroken_weights_file_loads(tmp_path):
  from vgg_jax import finetune  # pylint: disable=g-import-not-at-top
  state, model_config, shapes = _weights_fixture()
  path = tmp_path / "ok.safetensors"
  pretrained.write_safetensors(str(path), state)
  config = model_config()
  config.pretrained = str(path)
  layers, preprocessing = finetune.load_pretrained(config, shapes(config), 3)
  assert preprocessing["name"] == "torch" and "conv4_2" in layers


@pytest.mark.parametrize("content,expected", [
    (b"\x00" * 4, "not a readable safetensors file"),  # Shorter than its own header length.
    (np.uint64(2**62).tobytes(), "not a readable safetensors file"),  # A header length past the end.
])
def test_a_truncated_safetensors_file_is_one_line(content, expected, tmp_path):
  path = tmp_path / "w.safetensors"
  path.write_bytes(content)
  with pytest.raises(pretrained.WeightsError, match=expected):
    pretrained.load(str(path), "vgg11")


def test_a_pth_holding_a_list_is_one_line(tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "w.pth"
  torch.save([1, 2], path)
  with pytest.raises(pretrained.WeightsError, match="holds a list, not a state_dict"):
    pretrained.load(str(path), "vgg11")
