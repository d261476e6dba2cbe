"""The prepare command: Debian's IDX files become a TFDS data_dir that a plain
`tfds.load` reads offline."""

import numpy as np
import tensorflow_datasets as tfds

from conftest import dataset_config
from vgg_jax import data


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


