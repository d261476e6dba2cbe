"""Read the IDX format of MNIST and Fashion-MNIST, plain or gzipped.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the
number of dimensions), one big-endian uint32 per dimension, then the data.
Any mismatch raises DataError naming the file.
"""

import gzip
import zlib
import os
import struct
from typing import Dict, Tuple

import numpy as np

from vgg_jax.errors import DataError

_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# The four files of the MNIST family, by role.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str) -> np.ndarray:
  """Returns the array stored in the IDX file at `path` (.gz or not)."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:  # Missing, truncated or corrupted.
    raise DataError(f"cannot read IDX file {path}: {e}") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
    raise DataError(f"{path} is not an IDX file: bad magic number {raw[:4].hex() or 'empty'}")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path}: IDX header is cut off ({len(raw)} bytes)")
  dims = struct.unpack(f">{ndim}I", raw[4:header])
  dtype = np.dtype(_TYPES[raw[2]])
  expected = header + int(np.prod(dims)) * dtype.itemsize
  if len(raw) != expected:
    raise DataError(f"{path}: IDX header says {dims} ({expected} bytes) but the file has "
                    f"{len(raw)} bytes")
  return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def find_files(directory: str) -> Dict[str, str]:
  """Paths of the four IDX files in `directory`, preferring .gz; {} if any is missing."""
  found = {}
  for role, stem in FILES.items():
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
      if os.path.isfile(os.path.join(directory, name)):
        found[role] = os.path.join(directory, name)
        break
  return found if len(found) == len(FILES) else {}


def load_dir(directory: str) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
  """(train, test) uint8 NHWC images and int32 labels from a directory of IDX files."""
  paths = find_files(directory)
  if not paths:
    raise DataError(f"{directory} does not hold the four IDX files ({', '.join(FILES.values())})")
  arrays = {role: read_idx(path) for role, path in paths.items()}
  splits = []
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.ndim != 3 or labels.ndim != 1:
      raise DataError(f"{paths[split + '_images']}: expected images [n, h, w] and labels [n], "
                      f"got {images.shape} and {labels.shape}")
    if len(images) != len(labels):
      raise DataError(f"{paths[split + '_images']} has {len(images)} images but "
                      f"{paths[split + '_labels']} has {len(labels)} labels")
    splits.append((images.astype(np.uint8)[..., None], labels.astype(np.int32)))
  return splits[0], splits[1]
