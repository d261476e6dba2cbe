"""The data layer: every source, preprocessing, both pipelines, bad data."""

import gzip
import logging
import os
import struct

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import dataset_config, png_header, tiny_config, write_idx_dir, write_images
from vgg_jax import config_lib, data, metrics, training
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


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_idx_file_names_the_file(damage, tmp_path):
  directory = write_idx_dir(str(tmp_path / "idx"), 50, 20)
  path = os.path.join(directory, "train-images-idx3-ubyte.gz")
  raw = open(path, "rb").read()
  if damage == "truncate":
    raw = raw[:len(raw) // 2]
  else:
    raw = raw[:40] + bytes(b ^ 0xFF for b in raw[40:80]) + raw[80:]
  with open(path, "wb") as f:
    f.write(raw)
  cfg = dataset_config("fashion_mnist", idx_dir=directory, data_dir=str(tmp_path),
                       download=False)
  with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
    data.load(cfg)


# ------------------------------------------------------------------ TFDS


def test_tfds_path_trains_with_mock_data(tmp_path):
  config = tiny_config()
  config.dataset = dataset_config("fashion_mnist", data_dir=str(tmp_path / "tfds"),
                                  idx_dir=str(tmp_path / "none"), download=False)
  config.num_epochs = 1
  config.batch_size = 16
  with tfds.testing.mock_data(num_examples=64):
    result = training.train_and_evaluate(config, str(tmp_path / "run"))
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
  result = training.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["accuracy"] > 0.7  # Chance is 0.1.


# ---------------------------------------------------------- image folders


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
  result = training.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 3 * (8 // 4)


def test_a_decompression_bomb_in_a_folder_is_skipped_with_a_warning(tmp_path, caplog):
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


# ----------------------------------------------------------- bad classes


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
    results[scan] = training.train_and_evaluate(config, str(tmp_path / str(scan)))
  rows = {s: metrics.read_metrics(str(tmp_path / str(s))) for s in (True, False)}
  assert [(r["step"], r["split"]) for r in rows[True]] == [
      (r["step"], r["split"]) for r in rows[False]]
  for a, b in zip(rows[True], rows[False]):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
  assert results[True]["accuracy"] == pytest.approx(results[False]["accuracy"], abs=1e-6)


def test_digits_are_scikit_learns_load_digits_without_importing_it():
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from vgg_jax.data import sources  # pylint: disable=g-import-not-at-top
  images, labels = sources.digits_arrays()
  reference = datasets.load_digits()
  assert images.dtype == reference.images.dtype and labels.dtype == reference.target.dtype
  np.testing.assert_array_equal(images, reference.images)
  np.testing.assert_array_equal(labels, reference.target)


def test_every_dataset_name_is_one_source_that_knows_its_facts():
  """The registry: one Source per name, answering without reading data; a
  register()ed loader joins it (and can be found again by name)."""
  from vgg_jax.data import registry, tfds_source
  config = config_lib.base_config().dataset
  assert data.DATASETS == tuple(registry.SOURCES)
  facts = {}
  for name in data.DATASETS:
    config.name = name
    facts[name] = (data.native_shape(config), data.num_classes(config)
                   if name not in ("imagenet2012", "image_folder") else None)
  assert facts["fashion_mnist"] == ((28, 28, 1), 10)
  assert facts["cats_vs_dogs"] == ((None, None, 3), 2)
  assert facts["image_folder"][0] == (None, None, 3)
  fmnist = registry.SOURCES["fashion_mnist"]
  assert isinstance(fmnist, tfds_source.TfdsSource) and fmnist.idx_dir.endswith("fashion-mnist")
  assert fmnist.class_names(config)[7] == "Sneaker" and fmnist.mean_std == ((0.2860,), (0.3530,))
  data.register("tiny_registry_test", lambda: {"train": (np.zeros((4, 2), np.float32),
                                                         np.array([0, 1, 0, 1]))})
  config.name = "tiny_registry_test"
  assert data.is_user(config) and not data.is_image(config)
  assert data.source(config).native_shape(config) == (2,)


def test_the_hold_out_carve_is_fixed_and_says_what_went_wrong():
  """One carve for digits' test split, a loader's missing test split and the
  validation split: seed-independent; an empty side is one error."""
  from vgg_jax.data import transforms
  held, rest = transforms.hold_out(10, 3, key="k", value=0.3, of="examples", too_few="few")
  again = transforms.hold_out(10, 3, key="k", value=0.3, of="examples", too_few="few")
  assert (held == again[0]).all() and sorted(list(held) + list(rest)) == list(range(10))
  assert list(held) == sorted(held)
  unsorted, _ = transforms.hold_out(10, 3, key="k", value=0.3, of="examples", too_few="few",
                                    sort=False)
  assert sorted(unsorted) == list(held)
  with pytest.raises(ConfigError, match="between 1 and 9 of the 10 examples"):
    transforms.hold_out(10, 10, key="dataset.test_fraction", value=0.99, of="examples",
                        too_few="few")
  with pytest.raises(DataError, match="^few$"):
    transforms.hold_out(1, 1, key="k", value=0.5, of="examples", too_few="few")
