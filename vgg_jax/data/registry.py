"""The dataset registry: dataset.name -> the Source that knows everything
about it (dataset.py), and the questions asked of a config before any data
is read.

Built in:
  digits, synthetic           embedded, always offline
  mnist, fashion_mnist        TFDS data, else IDX files, else a TFDS download
  cifar10, cats_vs_dogs,
  imagenet2012                TFDS data, else a TFDS download
  image_folder                dataset.path
Your own loader joins as module:function, file.py:function, or a name given
to ``vgg_jax.data.register`` (user.py).
"""

from typing import Dict, Optional, Tuple

import ml_collections

from vgg_jax import checks
from vgg_jax.data import sources, tfds_source, transforms
from vgg_jax.data import user as user_lib
from vgg_jax.data.dataset import Source
from vgg_jax.errors import ConfigError

SOURCES: Dict[str, Source] = {
    "digits": sources.DIGITS,
    "synthetic": sources.SYNTHETIC,
    **tfds_source.SOURCES,
    "image_folder": sources.ImageFolder(),
}
DATASETS = tuple(SOURCES)
NORMALIZATIONS = ("auto", "computed", "unit", "imagenet")
PIPELINES = ("auto", "memory", "streaming")
_PREFIX = "dataset."  # Where the dataset section sits in a config, for error messages.


def is_user(config: ml_collections.ConfigDict) -> bool:
  """Whether dataset.name names the user's own loader rather than a built-in."""
  return config.name not in SOURCES and user_lib.is_user(config.name)


def source(config: ml_collections.ConfigDict) -> Source:
  """The Source for dataset.name (a built-in, or the user's loader)."""
  return sources.UserLoader(config.name) if is_user(config) else SOURCES[config.name]


def load(config: ml_collections.ConfigDict):
  """Loads config's dataset: a ``Dataset`` in memory, or a ``StreamingDataset``.

  Raises DataError listing every place tried when the data is nowhere.
  """
  return source(config).load(config)


def is_image(config: ml_collections.ConfigDict) -> bool:
  """Whether the data are [h, w, c] images (all built-ins; a user's may be features)."""
  return source(config).is_image(config)


def native_shape(config: ml_collections.ConfigDict) -> Tuple[Optional[int], ...]:
  """(height, width, channels) of the stored images; a user loader's shape as given."""
  return tuple(source(config).native_shape(config))


def image_shape(config: ml_collections.ConfigDict) -> Tuple[Optional[int], ...]:
  """The shape the model will see, computed without loading any data (a user's
  loader runs once, and its arrays are kept for the run)."""
  return transforms.shape_after(config, native_shape(config))


def native_class_names(config: ml_collections.ConfigDict) -> Optional[Tuple[str, ...]]:
  """Class names without reading data; None where only the data can tell."""
  return source(config).class_names(config)


def resolve_classes(config: ml_collections.ConfigDict,
                    names: Optional[Tuple[str, ...]] = None) -> Tuple[int, ...]:
  """dataset.classes as class ids; entries may be ids or names ('sneaker')."""
  return transforms.class_ids(config, names if names is not None else native_class_names(config))


def num_classes(config: ml_collections.ConfigDict) -> Optional[int]:
  """Classes after the optional subset; None if only the data can tell."""
  if config.classes:
    return len(config.classes)
  names = native_class_names(config)
  return len(names) if names is not None else None


def use_streaming(config: ml_collections.ConfigDict) -> bool:
  """The pipeline choice: 'auto' streams TFDS datasets too big for memory_limit_mb."""
  return source(config).streams(config)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the dataset section (config.dataset) without reading data, except
  that a user's loader runs once (its arrays are kept for the run)."""
  if not user_lib.is_user(checks.get(config, "name", _PREFIX)):
    checks.choice(config, "name", DATASETS + ("module:function", "file.py:function"), _PREFIX)
  checks.choice(config, "normalization", NORMALIZATIONS, _PREFIX)
  checks.choice(config, "pipeline", PIPELINES, _PREFIX)
  for key, low, extra in (("image_size", 0, ()), ("channels", 0, ()),
                          ("num_train_examples", 1, (-1,)), ("crop_padding", 0, ()),
                          ("memory_limit_mb", 1, ()), ("shuffle_buffer", 1, ())):
    checks.number(config, key, low, integer=True, extra=extra, prefix=_PREFIX)
  if config.channels not in (0, 1, 3):
    raise ConfigError("dataset.channels", config.channels, "0 (native), 1 or 3")
  checks.number(config, "test_fraction", 0, 1, low_open=True, high_open=True, prefix=_PREFIX)
  checks.number(config, "validation_fraction", 0, 1, high_open=True, prefix=_PREFIX)
  src = source(config)
  src.validate(config)
  if config.pipeline == "streaming" and not isinstance(src, tfds_source.TfdsSource):
    raise ConfigError("dataset.pipeline", config.pipeline,
                      f"memory or auto for {config.name}; streaming reads TFDS datasets ("
                      + ", ".join(tfds_source.SOURCES) + ")")
  _check_shape_keys(config, src)
  if config.classes:
    resolve_classes(config)


def _check_shape_keys(config, src: Source) -> None:
  """dataset.channels, and the image-only keys for a user's features."""
  shape = tuple(src.native_shape(config))
  if src.is_image(config):
    if shape[-1] not in (1, 3) and config.channels:
      raise ConfigError("dataset.channels", config.channels,
                        f"0: {config.name} has {shape[-1]} channels, so none can be converted")
    if shape[-1] == 3 and config.channels == 1:
      raise ConfigError("dataset.channels", config.channels, f"0 or 3: {config.name} is RGB")
    return
  what = f"0: {config.name} gives features of shape {list(shape)}, not [h, w, c] images"
  for key in ("image_size", "channels", "crop_padding"):
    if config[key]:
      raise ConfigError(f"dataset.{key}", config[key], what)
  if config.flip:
    raise ConfigError("dataset.flip", config.flip, "False" + what[1:])
