"""Test setup: 8 fake CPU devices and cheap compiles, before JAX is imported."""

import os
import sys

# Must be set before jax initializes its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

jax.config.update("jax_disable_most_optimizations", True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def run_cli(args, workdir=None, env_extra=None, **kwargs):
  """Runs `python -m vgg_jax.main` in a subprocess from the repo root."""
  import subprocess  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  env.pop("XLA_FLAGS", None)
  env.update(env_extra or {})
  cmd = [sys.executable, "-m", "vgg_jax.main"] + list(args)
  if workdir is not None:
    cmd.append(f"--workdir={workdir}")
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, **kwargs)


def write_sweep_config(path, *body):
  """A config file on small synthetic data with 10% validation; `body` lines
  (indented two spaces, `c` is the config) set the rest, the sweep included."""
  path.write_text("\n".join([
      "from vgg_jax import sweep", "from vgg_jax.config_lib import base_config",
      "def get_config(arg=None):", "  c = base_config()", "  c.dataset.name = 'synthetic'",
      "  c.dataset.synthetic.image_shape = (4, 4, 1)", "  c.dataset.validation_fraction = 0.1",
      *[f"  {line}" for line in body], "  return c", ""]))
  return path


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


@pytest.fixture(scope="session")
def prepared_fashion(tmp_path_factory):
  """Fake IDX files laid out as Debian's package lays them out, prepared into
  a TFDS data_dir (full-size: TFDS's builder expects 60,000 + 10,000)."""
  from vgg_jax.data import prepare  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("prepare")
  debian = write_idx_dir(str(root / "usr/share/datasets/fashion-mnist"), 60000, 10000)
  data_dir = str(root / "tfds")
  prepare.prepare("fashion_mnist", debian, data_dir)
  return data_dir
