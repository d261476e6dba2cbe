"""The data layer: every source, preprocessing, both pipelines, bad data."""

import gzip
import logging
import os
import struct

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import dataset_config, run_cli, tiny_config, write_idx_dir
from vgg_jax import data, metrics, train
from vgg_jax.data import idx, pipeline
from vgg_jax.errors import ConfigError, DataError

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


# ------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_round_trip(tmp_path, gz):
  directory = write_idx_dir(str(tmp_path), 30, 12, gz=gz)
  (x, y), (xt, yt) = idx.load_dir(directory)
  assert x.shape == (30, 28, 28, 1) and x.dtype == np.uint8 and xt.shape == (12, 28, 28, 1)
  np.testing.assert_array_equal(y, np.arange(30) % 10)
  assert x[7].min() == x[7].max() == 7


def test_idx_bad_magic_and_bad_size_name_the_file(tmp_path):
  bad = tmp_path / "bad.gz"
  with gzip.open(bad, "wb") as f:
    f.write(b"\x12\x34\x08\x01" + b"\x00" * 8)
  with pytest.raises(DataError, match=f"{bad}.*bad magic number 12340801"):
    idx.read_idx(str(bad))
  short = tmp_path / "short"
  short.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 100) + b"\x00" * 99)
  with pytest.raises(DataError, match=f"{short}.*108 bytes.*107 bytes"):
    idx.read_idx(str(short))


def test_idx_dataset_loads_from_idx_dir(tmp_path):
  directory = write_idx_dir(str(tmp_path / "idx"), 50, 20)
  ds = data.load(dataset_config("fashion_mnist", idx_dir=directory, data_dir=str(tmp_path),
                                download=False))
  assert ds.info.source == f"IDX files in {directory}" and ds.num_train == 50
  assert ds.info.mean == (0.2860,)  # Fashion-MNIST's published normalization.


# ------------------------------------------------------------------ TFDS


def test_tfds_path_trains_with_mock_data(tmp_path):
  config = tiny_config()
  config.dataset = dataset_config("fashion_mnist", data_dir=str(tmp_path / "tfds"),
                                  idx_dir=str(tmp_path / "none"), download=False)
  config.num_epochs = 1
  config.batch_size = 16
  with tfds.testing.mock_data(num_examples=64):
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert 0.0 <= result["accuracy"] <= 1.0
  with open(tmp_path / "run" / "config.json") as f:
    assert '"fashion_mnist"' in f.read()


def test_memory_and_streaming_pipelines_give_the_same_examples(tmp_path):
  cfg = dataset_config("cifar10", data_dir=str(tmp_path), download=False, image_size=24)
  with tfds.testing.mock_data(num_examples=40):
    memory = data.load(cfg)
    cfg.pipeline = "streaming"
    stream = data.load(cfg)
    assert memory.info.image_shape == stream.info.image_shape == (24, 24, 3)
    # Evaluation order is the split's order in both.
    pipe = pipeline.InMemoryPipeline(memory, batch_size=8, seed=0)
    for (m, m_mask), (s, s_mask) in zip(pipe.eval_batches("test", 16),
                                        stream.eval_batches("test", 16)):
      np.testing.assert_array_equal(np.asarray(m["image"]), s["image"])
      np.testing.assert_array_equal(np.asarray(m["label"]), s["label"])
      np.testing.assert_array_equal(m_mask, s_mask)
    # A training epoch holds the same examples, each once, in a seeded order.
    epoch = list(zip(range(5), stream.train_batches(8, seed=3, start_step=0)))
    streamed = np.concatenate([b["image"] for _, b in epoch])
    x, _ = memory.splits["train"]
    key = lambda a: sorted(map(bytes, a.reshape(len(a), -1)))
    assert key(streamed) == key(x)
    again = next(stream.train_batches(8, seed=3, start_step=0))
    np.testing.assert_array_equal(again["image"], epoch[0][1]["image"])
    resumed = next(stream.train_batches(8, seed=3, start_step=3))
    np.testing.assert_array_equal(resumed["image"], epoch[3][1]["image"])


def test_streaming_run_trains_and_resumes(prepared_fashion, tmp_path):
  """Real TFDS files (prepared from fake IDX): orbax and TFDS's mock_data do not
  mix, since the mock swaps the file system while as_dataset runs."""
  config = tiny_config()
  config.dataset = dataset_config("fashion_mnist", data_dir=prepared_fashion, download=False,
                                  pipeline="streaming", shuffle_buffer=64,
                                  num_train_examples=48)
  config.batch_size, config.num_epochs, config.checkpoint_every_steps = 8, 2, 4
  config.eval_batch_size = 2500
  train.train_and_evaluate(config, str(tmp_path / "full"))
  config.num_train_steps = 8  # Stop early, then resume to the end.
  train.train_and_evaluate(config, str(tmp_path / "cut"))
  config.num_train_steps = -1
  train.train_and_evaluate(config, str(tmp_path / "cut"))
  strip = lambda rows: [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in rows
                        if r["step"] > 8]
  full = strip(metrics.read_metrics(str(tmp_path / "full")))
  assert full and strip(metrics.read_metrics(str(tmp_path / "cut"))) == full


# .ci/run installs the package and sets VGG_JAX_REQUIRE_FMNIST, so CI cannot skip this.
@pytest.mark.skipif(not os.path.isdir(DEBIAN_DIR) and not os.environ.get("VGG_JAX_REQUIRE_FMNIST"),
                    reason="needs apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_one_short_epoch(tmp_path):
  """Real data from Debian's package: a quarter epoch must beat chance by far."""
  config = tiny_config()
  config.dataset = dataset_config("fashion_mnist", data_dir=str(tmp_path), download=False,
                                  num_train_examples=15000)
  config.model.hidden_sizes = (128,)
  config.batch_size, config.num_epochs, config.log_every_steps = 128, 1, 50
  config.eval_batch_size = 2000
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["accuracy"] > 0.7  # Chance is 0.1.


def test_prepare_makes_tfds_load_work_offline(prepared_fashion):
  test = tfds.as_numpy(tfds.load("fashion_mnist", split="test", data_dir=prepared_fashion,
                                 download=False, batch_size=-1))
  assert test["image"].shape == (10000, 28, 28, 1)
  labels, pixels = test["label"], test["image"][:, 0, 0, 0].astype(int)
  # TFDS shuffles; each example still pairs image i (value i % 251) with label i % 10.
  assert sorted(labels.tolist()) == sorted((np.arange(10000) % 10).tolist())
  assert all(np.isin(labels[pixels == p], [i % 10 for i in range(p, 10000, 251)]).all()
             for p in range(251))
  ds = data.load(dataset_config("fashion_mnist", data_dir=prepared_fashion, download=False))
  assert ds.info.source.startswith("TFDS") and ds.num_train == 60000


def test_prepare_cli_refuses_bad_input(tmp_path):
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  empty = tmp_path / "empty"
  empty.mkdir()
  proc = subprocess.run([sys.executable, "-m", "vgg_jax.data.prepare", "fashion_mnist",
                         "--from", str(empty), "--data_dir", str(tmp_path / "d")],
                        capture_output=True, text=True)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1
  assert "does not hold the four IDX files" in proc.stderr


# ---------------------------------------------------------- image folders


def write_images(root, layout, corrupt=True):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  paths = []
  for c, name in enumerate(("cat", "dog")):
    for i in range(6):
      folder = os.path.join(root, name) if layout == "subfolders" else root
      os.makedirs(folder, exist_ok=True)
      fname = f"{i}.png" if layout == "subfolders" else f"{name}.{i}.jpg"
      size = (20 + i, 16) if i % 2 else (16, 16)  # Mixed sizes: must be resized.
      pixels = rng.integers(0, 60, size[::-1] + (3,)) + 150 * c
      Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, fname))
      paths.append(os.path.join(folder, fname))
  if corrupt:
    with open(paths[0], "wb") as f:
      f.write(b"definitely not an image")
  return paths


@pytest.mark.parametrize("layout", ["subfolders", "flat"])
def test_image_folder_skips_corrupt_file_with_a_warning(tmp_path, layout, caplog):
  paths = write_images(str(tmp_path), layout)
  cfg = dataset_config("image_folder", path=str(tmp_path), image_size=12, test_fraction=0.25)
  with caplog.at_level(logging.WARNING):
    ds = data.load(cfg)
  assert any(paths[0] in r.getMessage() for r in caplog.records)
  assert ds.info.class_names == ("cat", "dog")
  assert ds.num_train + len(ds.splits["test"][1]) == 11  # 12 files, one corrupt.
  assert ds.info.image_shape == (12, 12, 3)


def test_image_folder_config_trains(tmp_path):
  write_images(str(tmp_path / "images"), "subfolders")
  config = tiny_config()
  config.dataset = dataset_config("image_folder", path=str(tmp_path / "images"), image_size=8,
                                  test_fraction=0.25)
  config.batch_size, config.num_epochs = 4, 3
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 3 * (8 // 4)


def test_image_folder_with_one_class_is_a_clear_error(tmp_path):
  write_images(str(tmp_path / "only"), "subfolders", corrupt=False)
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(tmp_path / "only" / "dog")
  proc = run_cli(["--config=configs/default.py", "--config.dataset.name=image_folder",
                  f"--config.dataset.path={tmp_path / 'only'}", "--config.dataset.image_size=8"],
                 workdir=tmp_path / "run")
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().count("\n") == 0 and "need at least 2" in proc.stderr
  assert not (tmp_path / "run").exists()


# ------------------------------------------------------- missing dataset


def test_missing_dataset_is_one_message_listing_sources(tmp_path):
  proc = run_cli(["--config=configs/fashion_mnist.py", f"--config.dataset.data_dir={tmp_path}",
                  f"--config.dataset.idx_dir={tmp_path / 'none'}",
                  "--config.dataset.download=False"], workdir=tmp_path / "run")
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  for part in ("TFDS data in", "IDX files in", "TFDS download", "apt-get install "
               "dataset-fashion-mnist", "vgg_jax.data.prepare fashion_mnist"):
    assert part in lines[0]
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("classes,message", [
    (("sneaker", "ankle boot"), None), ((7, "Ankle_Boot"), None),
    (("sneaker", "boot"), "dataset.classes"), (("sneaker",), "dataset.classes")])
def test_binary_subsets_by_name(classes, message):
  cfg = dataset_config("fashion_mnist", classes=classes)
  if message:
    with pytest.raises(ConfigError, match=message):
      data.resolve_classes(cfg)
  else:
    assert data.resolve_classes(cfg) == (7, 9)


# --------------------------------------------------------- preprocessing


def test_resize_channels_validation_and_subset():
  cfg = dataset_config("digits", image_size=16, channels=3, validation_fraction=0.1,
                       num_train_examples=500)
  ds = data.load(cfg)
  assert ds.info.image_shape == (16, 16, 3) and len(ds.info.mean) == 3
  x, _ = ds.splits["train"]
  np.testing.assert_array_equal(x[..., 0], x[..., 2])  # Grey repeated to RGB.
  assert ds.num_train == 500 and len(ds.splits["validation"][1]) == 144
  full = data.load(dataset_config("digits", validation_fraction=0.1))
  # The validation carve is fixed; the subset is drawn from the rest.
  np.testing.assert_array_equal(ds.splits["validation"][1], full.splits["validation"][1])


def test_random_crop_flip_keeps_pixels_and_depends_on_key():
  images = np.arange(2 * 4 * 4 * 1, dtype=np.uint8).reshape(2, 4, 4, 1)
  flipped = pipeline.random_crop_flip(images, jax.random.PRNGKey(0), padding=0, flip=True)
  for a, b in zip(images, np.asarray(flipped)):
    assert np.array_equal(a, b) or np.array_equal(a[:, ::-1], b)
  crops = [np.asarray(pipeline.random_crop_flip(images, jax.random.PRNGKey(k), 1, False))
           for k in range(6)]
  assert all(c.shape == images.shape for c in crops)
  assert len({c.tobytes() for c in crops}) > 1
  np.testing.assert_array_equal(
      crops[0], pipeline.random_crop_flip(images, jax.random.PRNGKey(0), 1, False))


# ---------------------------------------------------------------- scan


def test_epoch_as_one_scan_equals_the_per_step_loop(tmp_path):
  config = tiny_config()
  config.model.dropout_rate = 0.1
  config.dataset.crop_padding, config.dataset.flip = 1, True
  results = {}
  for scan in (True, False):
    config.scan_epoch = scan
    results[scan] = train.train_and_evaluate(config, str(tmp_path / str(scan)))
  rows = {s: metrics.read_metrics(str(tmp_path / str(s))) for s in (True, False)}
  assert [(r["step"], r["split"]) for r in rows[True]] == [
      (r["step"], r["split"]) for r in rows[False]]
  for a, b in zip(rows[True], rows[False]):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
  assert results[True]["accuracy"] == pytest.approx(results[False]["accuracy"], abs=1e-6)
