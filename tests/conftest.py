"""Test setup, and the pieces both layers share.

The suite has two layers (README, "Tests"):

  tests/unit/  mirrors vgg_jax/ (and experiments/ for the readings): in process,
               seconds per file.             pytest -m unit   (or pytest tests/unit)
  tests/e2e/   by behaviour: the command line, bad input, resume, preemption,
               sweeps, experiments, transfer, processes.    pytest -m e2e

This file owns what both use: 8 fake CPU devices and cheap compiles (set
before JAX is imported), the layer markers, tiny configs, the CLI runner with
its kill points and signals, readers for a workdir's rows, status and
results, and the reference runs that several tests compare against, built
once per test run however many xdist workers ask for them (built_once).
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

# Must be set before jax initializes its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

jax.config.update("jax_disable_most_optimizations", True)
from vgg_jax import compile_cache  # pylint: disable=g-import-not-at-top,g-bad-import-order
# Identical programs (a sweep member and the same run alone, a rerun) compile
# once per test process: JAX's persistent cache keys on the HLO.
compile_cache.enable()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
DEFAULT = "--config=configs/default.py"


# The slowest files first, the unit layer last (its slowest file first): with
# two workers a run then ends on short tests, not on one worker's 30-second
# test while the other waits. Within a file the order stays as written.
SLOWEST_FIRST = ("e2e/test_slurm.py", "e2e/test_resume.py", "e2e/test_transfer.py",
                 "e2e/test_parallel.py", "e2e/test_experiments.py", "e2e/test_sweeps.py",
                 "e2e/test_bad_input.py")
SLOWEST_UNIT = "unit/test_conv.py"


def pytest_addoption(parser):
  parser.addoption("--slow", action="store_true",
                   help="also run the tests marked slow (a fresh-venv install); .ci/run does")


def pytest_collection_modifyitems(config, items):
  """A test's layer is its directory (tests/unit -> unit, tests/e2e -> e2e);
  the order is SLOWEST_FIRST, the rest of e2e, then unit. Tests marked slow
  are skipped without --slow."""
  if not config.getoption("--slow"):
    skip = pytest.mark.skip(reason="slow (a fresh-venv install): pytest --slow -m slow runs it")
    for item in items:
      if "slow" in item.keywords:
        item.add_marker(skip)

  def rank(item):
    path = os.path.relpath(str(item.path), TESTS).replace(os.sep, "/")
    if path in SLOWEST_FIRST:
      return SLOWEST_FIRST.index(path)
    if path.startswith("unit/"):
      return len(SLOWEST_FIRST) + (1 if path == SLOWEST_UNIT else 2)
    return len(SLOWEST_FIRST)

  for item in items:
    layer = os.path.relpath(str(item.path), TESTS).split(os.sep)[0]
    if layer in ("unit", "e2e"):
      item.add_marker(getattr(pytest.mark, layer))
  items.sort(key=rank)  # Stable: a file's tests keep their order.


def built_once(tmp_path_factory, name, build):
  """The directory `name`, made by build(directory) once per test session.

  Under pytest-xdist each worker is its own session; the workers of one run
  share the parent of their temp dirs, so the first worker to ask builds
  there (under a lock) and the others wait for it and reuse the result.
  (xdist's loadgroup scheduling, which would keep such tests in one worker,
  did not group them with pytest 9 and xdist 3.8.)
  """
  import fcntl  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.getbasetemp()
  shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  directory = shared / f"built-{name}"
  with open(shared / f"built-{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    if not (directory / ".built").exists():
      shutil.rmtree(directory, ignore_errors=True)  # A build that failed part-way.
      directory.mkdir()
      build(directory)
      (directory / ".built").touch()
  return directory


# ---------------------------------------------------------------- configs


def tiny_config():
  """An MLP on small synthetic data: trains in well under a second."""
  from vgg_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.dataset.name = "synthetic"
  config.dataset.synthetic.num_train = 256
  config.dataset.synthetic.num_test = 100
  config.dataset.synthetic.image_shape = (4, 4, 1)
  config.dataset.synthetic.num_classes = 3
  config.model.hidden_sizes = (16,)
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 2
  config.log_every_steps = 4
  config.checkpoint_every_steps = 8
  config.num_devices = 1  # The parallel tests ask for the 8 fake devices themselves.
  return config


@pytest.fixture
def config():
  return tiny_config()


def dataset_config(name, **overrides):
  """The base config's dataset section, named `name`, with overrides."""
  from vgg_jax import config_lib  # pylint: disable=g-import-not-at-top
  cfg = config_lib.base_config().dataset
  cfg.name = name
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def parse_config(*args):
  """The config `python -m vgg_jax.main ARGS` would run, parsed in process by
  the same flag machinery (--config=FILE[:variant] plus --config.key=value
  overrides), without running anything. num_devices=-1 (all) becomes 1: the
  CLI's process sees one device, this one eight."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  argv = ["vgg_jax", *args]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                  sys_argv=argv)
  old = os.getcwd()
  os.chdir(REPO)  # Config paths are relative to the repo, as in the CLI tests.
  try:
    values(argv)
    config = values.config
  finally:
    os.chdir(old)
  if "num_devices" in config and config.num_devices == -1:
    config.num_devices = 1
  return config


def write_sweep_config(path, *body):
  """A config file on small synthetic data with 10% validation; `body` lines
  (indented two spaces, `c` is the config) set the rest, the sweep included."""
  path.write_text("\n".join([
      "from vgg_jax import sweep", "from vgg_jax.config_lib import base_config",
      "def get_config(arg=None):", "  c = base_config()", "  c.dataset.name = 'synthetic'",
      "  c.dataset.synthetic.image_shape = (4, 4, 1)", "  c.dataset.validation_fraction = 0.1",
      *[f"  {line}" for line in body], "  return c", ""]))
  return path


# ------------------------------------------------------------- the CLI


def subprocess_env(**extra):
  """A child's environment: one CPU device (as a user's run), cheap compiles."""
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  env.pop("XLA_FLAGS", None)
  env.update({k: str(v) for k, v in extra.items()})
  return env


def run_cli(args, workdir=None, *, module="vgg_jax.main", kill_at=None, signal=None,
            env=None, timeout=600):
  """`python -m <module> ARGS [--workdir=W]` from the repo root.

  kill_at="<point>:<step>" sends `signal` (KILL by default; TERM, INT) at that
  point of the training loop (vgg_jax/faults.py).
  """
  extra = dict(env or {})
  if kill_at:
    extra["VGG_JAX_KILL_AT"] = kill_at
  if signal:
    extra["VGG_JAX_KILL_SIGNAL"] = signal
  cmd = [sys.executable, "-m", module, *map(str, args)]
  if workdir is not None:
    cmd.append(f"--workdir={workdir}")
  return subprocess.run(cmd, cwd=REPO, env=subprocess_env(**extra), capture_output=True,
                        text=True, timeout=timeout)


def run_experiment(name, workdir, *args, mode="smoke"):
  return run_cli([f"--mode={mode}", *args], workdir, module=f"experiments.{name}")


# A run's own progress on stderr: the model line, step lines, the resume line.
PROGRESS = re.compile(r"^\d\d:\d\d:\d\d (step \d+/\d+ |resumed from checkpoint at step \d+$"
                      r"|\w+ on .* params, .* train examples|sweep\b|layers \(|  \w+  "
                      r"|compil(ing|ed) |profil)")


def messages(stderr):
  """stderr's lines other than the run's own progress lines."""
  return [l for l in stderr.strip().splitlines() if l and not PROGRESS.match(l)]


def stderr_lines(proc):
  return [line for line in proc.stderr.strip().splitlines() if line.strip()]


def assert_one_line(proc, expected, code=2, after_logs=False):
  """Exit `code`, no traceback, and stderr is one line holding `expected`
  (with `after_logs`, after the run's own timestamped log lines)."""
  assert proc.returncode == code, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = stderr_lines(proc)
  if after_logs:
    lines = [l for l in lines if not re.match(r"\d\d:\d\d:\d\d ", l)]
  assert len(lines) == 1 and expected in lines[0], proc.stderr[-3000:]
  return lines[0]


def in_a_mount_namespace(script, tmp_path):
  """Runs a shell script in a private mount namespace (its mounts, such as a
  small tmpfs at $FULL, are gone when it ends); skips where namespaces are
  not allowed. $OUT is tmp_path, outside the mounts."""
  unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
  probe = subprocess.run(unshare + ["sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
                         capture_output=True)
  if probe.returncode:
    pytest.skip("cannot mount a tmpfs in a private mount namespace here")
  env = subprocess_env(FULL=tmp_path / "full", OUT=tmp_path, PY=sys.executable)
  os.makedirs(tmp_path / "full")
  return subprocess.run(unshare + ["sh", "-c", script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)


# -------------------------------------------------------------- readers


def rows(workdir, split=None):
  """metrics.jsonl without the wall-clock field."""
  from vgg_jax import metrics  # pylint: disable=g-import-not-at-top
  return [{k: v for k, v in r.items() if k != "steps_per_sec"}
          for r in metrics.read_metrics(str(workdir), split)]


def status(workdir):
  with open(os.path.join(workdir, "status.json")) as f:
    return json.load(f)


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def sweep_rows(workdir, file="results.csv"):
  """Every results.csv row of a sweep, in a canonical order, without timings."""
  return sorted((r["run_id"], r["step"], r["split"], r["loss"], r["accuracy"], r["status"])
                for r in read_csv(os.path.join(workdir, file)))


def final_rows(results):
  """{run_id: its last test row} of results.csv rows."""
  return {r["run_id"]: r for r in results if r["split"] == "test"}


# A user's dataset module: loaders of every kind, good and bad.
USER_LOADERS = textwrap.dedent('''
    import numpy as np

    def features():
      """Float signals [n, 3, 8], far from [0, 1]: the class is the sign of channel 0's sum."""
      rng = np.random.default_rng(0)
      x = (rng.standard_normal((600, 3, 8)) * 40 + 100).astype(np.float32)
      y = (x[:, 0, :].mean(axis=1) > 100).astype(np.int64)
      return {"train": (x[:480], y[:480]), "test": (x[480:], y[480:]),
              "class_names": ["low", "high"]}

    def images(config):
      """uint8 [n, h, w] (no channel axis) and no test split: one bright band per class."""
      rng = np.random.default_rng(1)
      y = rng.integers(0, 3, 400)
      x = rng.integers(0, 60, (400, 12, 12)).astype(np.uint8)
      for k in range(3):
        x[y == k, 4 * k:4 * k + 4, :] += 150
      return {'train': (x, y)}

    def nan_features():
      x = np.zeros((10, 4), np.float32); x[3, 2] = np.nan
      return {"train": (x, np.arange(10) % 2)}

    def short_labels():
      return {"train": (np.zeros((10, 4), np.float32), np.zeros(9, np.int32))}

    def uint8_vectors():
      return {"train": (np.zeros((10, 4), np.uint8), np.arange(10) % 2)}

    def not_arrays():
      return [1, 2, 3]

    def fails():
      raise RuntimeError("the share is not mounted")

    def exits_0():
      import sys
      sys.exit(0)

    def exits_3():
      raise SystemExit(3)

    def interrupted():
      raise KeyboardInterrupt

    def _labelled(y_train, y_test=None, **extra):
      x = np.random.default_rng(0).normal(size=(len(y_train), 4)).astype(np.float32)
      out = {"train": (x, np.asarray(y_train)), **extra}
      if y_test is not None:
        out["test"] = (x[:len(y_test)], np.asarray(y_test))
      return out

    def huge_float64():
      x = np.ones((10, 4))
      x[3, 1] = 1e39
      return {"train": (x, np.arange(10) % 2)}

    def labels_from_1():
      return _labelled(np.arange(12) % 3 + 1)

    def raw_ids():
      return _labelled(np.arange(12) % 3 + 1000003)

    def huge_id():
      return _labelled(np.array([0, 1] * 5 + [2**31], np.int64))

    def unseen_test_label():
      return _labelled(np.arange(12) % 2, [0, 1, 2])

    def empty_class_said():
      return _labelled(np.arange(12) % 3, [0, 1, 2], num_classes=4)

    def one_class():
      return {"train": (np.zeros((10, 4), np.float32), np.zeros(10, np.int32))}

    def few_names():
      return {"train": (np.zeros((10, 4), np.float32), np.arange(10) % 3),
              "class_names": ["a", "b"]}
''')


def user_loader(directory, function):
  """USER_LOADERS written as directory/mine.py; returns the dataset name
  "<path>:<function>"."""
  path = os.path.join(directory, "mine.py")
  if not os.path.exists(path):
    with open(path, "w") as f:
      f.write(USER_LOADERS)
  return f"{path}:{function}"


@pytest.fixture(scope="session")
def loader_file(tmp_path_factory):
  """The path of USER_LOADERS as a file."""
  directory = tmp_path_factory.mktemp("userdata")
  user_loader(str(directory), "features")
  return directory / "mine.py"


# ---------------------------------------------------------- data writers


def write_idx(path, array):
  import gzip, struct  # pylint: disable=g-import-not-at-top,multiple-imports
  import numpy as np  # pylint: disable=g-import-not-at-top
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
      f">{array.ndim}I", *array.shape)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def write_idx_dir(directory, num_train, num_test, gz=True):
  """Fake MNIST-family files; image i is filled with i % 251, label i % 10."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  ext = ".gz" if gz else ""
  for split, n in (("train", num_train), ("t10k", num_test)):
    i = np.arange(n)
    images = np.broadcast_to((i % 251)[:, None, None], (n, 28, 28))
    write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte{ext}"), images)
    write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte{ext}"), i % 10)
  return directory


def write_images(root, layout="subfolders", corrupt=True, size=16):
  """Six images each of a dark `cat` and a bright `dog`, some not square; in
  `subfolders` (root/cat/0.png) or Kaggle's `flat` layout (root/cat.0.jpg).
  With `corrupt`, the first file is not an image."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  paths = []
  for c, name in enumerate(("cat", "dog")):
    for i in range(6):
      folder = os.path.join(root, name) if layout == "subfolders" else root
      os.makedirs(folder, exist_ok=True)
      fname = f"{i}.png" if layout == "subfolders" else f"{name}.{i}.jpg"
      shape = (size + 4 + i, size) if i % 2 else (size, size)  # Mixed sizes: must be resized.
      pixels = rng.integers(0, 60, shape[::-1] + (3,)) + 150 * c
      Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, fname))
      paths.append(os.path.join(folder, fname))
  if corrupt:
    with open(paths[0], "wb") as f:
      f.write(b"definitely not an image")
  return paths


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


# ------------------------------------------------- shared reference runs


@pytest.fixture(scope="session")
def prepared_fashion(tmp_path_factory):
  """Fake IDX files laid out as Debian's package lays them out, prepared into
  a TFDS data_dir (full-size: TFDS's builder expects 60,000 + 10,000)."""
  from vgg_jax.data import prepare  # pylint: disable=g-import-not-at-top

  def build(root):
    debian = write_idx_dir(str(root / "usr/share/datasets/fashion-mnist"), 60000, 10000)
    prepare.prepare("fashion_mnist", debian, str(root / "tfds"))

  return str(built_once(tmp_path_factory, "prepared_fashion", build) / "tfds")


# The run every single-run resume and preemption test stops and resumes: every
# kind of row (train, test), dropout and a schedule, so a resume that lost an
# RNG or schedule state shows in the numbers.
MEMORY_ARGS = [DEFAULT, "--config.dataset.name=synthetic",
               "--config.dataset.synthetic.num_train=512",
               "--config.dataset.synthetic.image_shape=(8,8,1)",
               "--config.model.hidden_sizes=(64,)", "--config.model.dropout_rate=0.1",
               "--config.optimizer.schedule=cosine", "--config.batch_size=16",
               "--config.num_train_steps=192", "--config.log_every_steps=16",
               "--config.eval_every_steps=64", "--config.checkpoint_every_steps=32",
               "--config.scan_epoch=False"]


@pytest.fixture(scope="session")
def memory_reference(tmp_path_factory):
  """MEMORY_ARGS run uninterrupted: (rows, status)."""
  def build(workdir):
    proc = run_cli(MEMORY_ARGS, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]

  workdir = built_once(tmp_path_factory, "memory_reference", build)
  return rows(workdir), status(workdir)


# A default run short enough to damage and repair many times.
DEFAULT_ARGS = [DEFAULT, "--config.num_train_steps=40", "--config.checkpoint_every_steps=20",
                "--config.log_every_steps=20"]
DEFAULT_LONGER = [DEFAULT, "--config.num_train_steps=60", "--config.checkpoint_every_steps=20",
                  "--config.log_every_steps=20"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """A finished 40-step default run (checkpoints 22 and 40) in run/, the same
  run extended to 60 steps in run60/, and 60 steps uninterrupted in
  straight60/: what a repaired rerun must match."""
  def build(root):
    proc = run_cli(DEFAULT_ARGS, root / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copytree(root / "run", root / "run60")
    proc = run_cli(DEFAULT_LONGER, root / "run60")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli(DEFAULT_LONGER, root / "straight60")
    assert proc.returncode == 0, proc.stderr[-3000:]

  root = built_once(tmp_path_factory, "trained", build)
  assert status(root / "straight60")["params_sha256"] == status(root / "run60")["params_sha256"]
  return root


@pytest.fixture
def trained_copy(trained, tmp_path):
  """A copy of the trained 40-step run, to damage."""
  shutil.copytree(trained / "run", tmp_path / "run")
  return tmp_path / "run"
