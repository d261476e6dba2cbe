"""What a loaded dataset is, and what a dataset source must say about itself."""

import dataclasses
from typing import Dict, Optional, Tuple

import ml_collections
import numpy as np

Split = Tuple[np.ndarray, np.ndarray]  # (uint8 [n, h, w, c] or float32 [n, ...], int32 [n])
MeanStd = Tuple[Tuple[float, ...], Tuple[float, ...]]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  class_names: Tuple[str, ...]
  image_shape: Tuple[int, ...]  # What the model sees: (h, w, c), or a user's feature shape.
  mean: Tuple[float, ...]  # Per channel (last axis), in [0, 1] pixel units for uint8.
  std: Tuple[float, ...]
  source: str  # Where the data came from, for logs and reports.


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Every split in host memory (uint8 images, or a user's float features); the
  pipeline moves it to the device."""
  info: DatasetInfo
  splits: Dict[str, Split]  # train, test and maybe validation.

  @property
  def num_train(self) -> int:
    return len(self.splits["train"][1])


class Source:
  """Everything about one dataset name: what it looks like without loading it,
  how to check its config keys, and how to load it. The registry
  (registry.py) holds one per name."""

  # The dataset's published per-channel statistics (normalization="auto").
  mean_std: Optional[MeanStd] = None

  def class_names(self, config: ml_collections.ConfigDict) -> Optional[Tuple[str, ...]]:
    """Class names without reading data; None where only the data can tell."""
    del config
    return None

  def native_shape(self, config: ml_collections.ConfigDict) -> Tuple[Optional[int], ...]:
    """(height, width, channels) as stored (None: varies), or a user's feature shape."""
    raise NotImplementedError

  def is_image(self, config: ml_collections.ConfigDict) -> bool:
    """Whether the data are [h, w, c] images (every built-in; a user's may be features)."""
    del config
    return True

  def streams(self, config: ml_collections.ConfigDict) -> bool:
    """Whether this config reads the data as a stream rather than into memory."""
    del config
    return False

  def validate(self, config: ml_collections.ConfigDict) -> None:
    """Checks this source's own dataset keys (ConfigError)."""
    del config

  def load(self, config: ml_collections.ConfigDict):
    """A ``Dataset`` in memory, or a ``StreamingDataset``."""
    raise NotImplementedError
