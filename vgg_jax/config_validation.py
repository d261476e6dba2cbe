"""Validate a config once, at the edge, before anything compiles or is written.

Every failure raises ``ConfigError`` naming the key, the bad value and what is
allowed; ``vgg_jax.main`` prints it as one line and exits with code 2.
"""

import math
from typing import Iterable

import ml_collections

from vgg_jax import data, kernels, models, optim, parallel
from vgg_jax.errors import ConfigError
from vgg_jax.kernels import onednn
from vgg_jax.models import components


def _choice(config, key: str, allowed: Iterable[str]):
  value = _get(config, key)
  if value not in allowed:
    raise ConfigError(key, value, "one of " + ", ".join(allowed))


def _get(config, key: str):
  node = config
  for part in key.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError):
      raise ConfigError(key, "<missing>", "a config with every key of "
                        "vgg_jax.config_lib.base_config() (start get_config from it)") from None
  return node


def _number(config, key: str, low=None, high=None, *, low_open=False, high_open=False,
            integer=False, extra: Iterable = ()):
  """Checks low <=/< value <=/< high; values in `extra` are also allowed."""
  value = _get(config, key)
  if value in tuple(extra):
    return
  lo = "" if low is None else f"{low} {'<' if low_open else '<='} "
  hi = "" if high is None else f" {'<' if high_open else '<='} {high}"
  allowed = f"{'an integer' if integer else 'a number'} with {lo}{key}{hi}"
  if extra:
    allowed += " (or " + ", ".join(str(e) for e in extra) + ")"
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (not integer or float(value).is_integer())
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  if not ok:
    raise ConfigError(key, value, allowed)


def _positive_ints(config, key: str, allow_empty: bool):
  value = tuple(_get(config, key))
  if not value and not allow_empty:
    raise ConfigError(key, value, "a non-empty tuple of positive integers")
  if any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in value):
    raise ConfigError(key, value, "a tuple of positive integers")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks everything that can be checked without loading data."""
  _choice(config, "dtype", components.DTYPES)
  _choice(config, "head", models.HEADS)
  if not data.user_lib.is_user(config.dataset.name):
    _choice(config, "dataset.name", data.DATASETS + ("module:function", "file.py:function"))
  _choice(config, "model.name", models.MODELS)
  _choice(config, "model.activation", components.ACTIVATIONS)
  _choice(config, "model.kernel_init", components.KERNEL_INITS)
  _choice(config, "optimizer.name", optim.OPTIMIZERS)
  _choice(config, "optimizer.schedule", optim.SCHEDULES)

  _validate_optimizer(config)
  _validate_run(config)
  _validate_model(config)
  _validate_finetuning(config)
  _validate_dataset(config)


def _validate_optimizer(config):
  _number(config, "optimizer.learning_rate", 0, low_open=True)
  _number(config, "optimizer.momentum", 0, 1, high_open=True)
  _number(config, "optimizer.rho", 0, 1, low_open=True, high_open=True)
  _number(config, "optimizer.b1", 0, 1, high_open=True)
  _number(config, "optimizer.b2", 0, 1, high_open=True)
  _number(config, "optimizer.eps", 0, low_open=True)
  _number(config, "optimizer.weight_decay", 0)
  _number(config, "optimizer.grad_clip_norm", 0)
  _number(config, "optimizer.warmup_steps", 0, integer=True)
  _number(config, "optimizer.step_factor", 0, low_open=True)
  for i, _ in enumerate(config.optimizer.step_boundaries):
    value = config.optimizer.step_boundaries[i]
    if not isinstance(value, (int, float)) or not 0 < value < 1:
      raise ConfigError("optimizer.step_boundaries", tuple(config.optimizer.step_boundaries),
                        "fractions of training strictly between 0 and 1")


def _validate_run(config):
  _choice(config, "parallelism", parallel.PARALLELISMS)
  _number(config, "num_devices", 1, integer=True, extra=(-1,))
  _number(config, "seed", 0, 2**63 - 1, integer=True)
  _number(config, "batch_size", 1, integer=True, extra=(-1,))  # -1: full batch.
  _number(config, "eval_batch_size", 1, integer=True)
  _number(config, "num_epochs", 1, integer=True)
  _number(config, "num_train_steps", 1, integer=True, extra=(-1,))
  _number(config, "log_every_steps", 1, integer=True)
  _number(config, "eval_every_steps", 1, integer=True, extra=(-1,))
  _number(config, "eval_train_examples", 0, integer=True)
  _number(config, "checkpoint_every_steps", 1, integer=True)
  _number(config, "keep_checkpoints", 1, integer=True)
  _number(config, "profile_steps", 0, integer=True)
  _number(config, "profile_start_step", 0, integer=True)
  _number(config, "sweep_vmap_size", 1, integer=True, extra=(-1,))


def _validate_model(config):
  _number(config, "model.dropout_rate", 0, 1, high_open=True)
  _number(config, "model.input_dropout_rate", 0, 1, high_open=True)
  if config.model.name == "mlp":
    _positive_ints(config, "model.hidden_sizes", allow_empty=False)
  else:
    _number(config, "model.width_multiplier", 0, low_open=True)
    _choice(config, "model.conv_lowering", kernels.CONV_LOWERINGS)
    if config.model.conv_lowering == "onednn" and not onednn.available():
      raise ConfigError("model.conv_lowering", "onednn",
                        f"auto or blocked here (oneDNN unavailable: "
                        f"{onednn.unavailable_reason()})")
    if config.model.conv_lowering == "onednn" and config.dtype != "float32":
      raise ConfigError("model.conv_lowering", "onednn",
                        f"auto or blocked with dtype={config.dtype} (oneDNN here is float32 only)")
    _positive_ints(config, "model.classifier_sizes", allow_empty=True)


def _validate_finetuning(config):
  """model.pretrained, freeze and cache_features: which combinations can work."""
  _choice(config, "model.freeze", ("none", "conv", "all_but_head"))
  _choice(config, "model.pretrained_layers", ("all", "conv"))
  m = config.model
  if (m.pretrained or m.freeze != "none") and m.name == "mlp":
    raise ConfigError("model.name", m.name, "a VGG (vgg11/13/16/19) with model.pretrained or "
                      "model.freeze")
  if m.pretrained and (m.batch_norm or m.width_multiplier != 1.0):
    raise ConfigError("model.width_multiplier" if m.width_multiplier != 1.0 else
                      "model.batch_norm", m.width_multiplier if m.width_multiplier != 1.0
                      else m.batch_norm, "1.0 and no batch norm: ImageNet VGG weights are "
                      "full width without BN")
  if m.freeze != "none" and not m.pretrained:
    raise ConfigError("model.pretrained", m.pretrained, "a Keras .h5 or torchvision .pth/"
                      ".safetensors weights file when model.freeze is set (a frozen random "
                      "base learns nothing); get one from keras.applications or torchvision "
                      "on a machine with network")
  if m.cache_features:
    if m.freeze == "none":
      raise ConfigError("model.cache_features", True, "False unless model.freeze is conv or "
                        "all_but_head (only a frozen base's features can be cached)")
    if config.dataset.crop_padding or config.dataset.flip:
      raise ConfigError("model.cache_features", True, "False with augmentation (crop_padding, "
                        "flip): cached features see each image once")
    if config.dataset.pipeline != "memory":
      raise ConfigError("dataset.pipeline", config.dataset.pipeline, "memory with "
                        "model.cache_features (features are computed from in-memory arrays)")


def _validate_dataset(config):
  ds = config.dataset
  _choice(config, "dataset.normalization", data.NORMALIZATIONS)
  _choice(config, "dataset.pipeline", data.PIPELINES)
  _number(config, "dataset.image_size", 0, integer=True)
  _number(config, "dataset.channels", 0, integer=True)
  if ds.channels not in (0, 1, 3):
    raise ConfigError("dataset.channels", ds.channels, "0 (native), 1 or 3")
  _number(config, "dataset.test_fraction", 0, 1, low_open=True, high_open=True)
  _number(config, "dataset.validation_fraction", 0, 1, high_open=True)
  _number(config, "dataset.num_train_examples", 1, integer=True, extra=(-1,))
  _number(config, "dataset.crop_padding", 0, integer=True)
  _number(config, "dataset.memory_limit_mb", 1, integer=True)
  _number(config, "dataset.shuffle_buffer", 1, integer=True)
  if ds.name == "synthetic":
    _number(config, "dataset.synthetic.num_train", 1, integer=True)
    _number(config, "dataset.synthetic.num_test", 1, integer=True)
    _number(config, "dataset.synthetic.num_classes", 2, integer=True)
    _positive_ints(config, "dataset.synthetic.image_shape", allow_empty=False)
    if len(ds.synthetic.image_shape) != 3:
      raise ConfigError("dataset.synthetic.image_shape", tuple(ds.synthetic.image_shape),
                        "(height, width, channels)")
  if ds.name == "image_folder" and not ds.path:
    raise ConfigError("dataset.path", ds.path, "the root directory of the image folder")
  if data.is_user(ds):  # Runs the user's loader once (its arrays are kept for the run).
    _validate_user_data(config)
  elif data.native_shape(ds)[-1] == 3 and ds.channels == 1:
    raise ConfigError("dataset.channels", ds.channels, f"0 or 3: {ds.name} is RGB")
  if ds.pipeline == "streaming" and ds.name not in data.tfds_source.SPECS:
    raise ConfigError("dataset.pipeline", ds.pipeline,
                      "memory or auto for " + ds.name + "; streaming reads TFDS datasets ("
                      + ", ".join(data.tfds_source.SPECS) + ")")
  if ds.pipeline == "streaming" and ds.normalization == "computed":
    raise ConfigError("dataset.normalization", ds.normalization,
                      "auto, unit or imagenet when streaming (computed needs every pixel)")
  if ds.classes:
    data.resolve_classes(ds)
  classes = data.num_classes(ds)
  if config.head == "binary" and classes is not None and classes != 2:
    raise ConfigError("head", config.head,
                      f"'binary' needs a 2-class task, but {ds.name} has {classes} classes; "
                      "set dataset.classes=(a, b) or use head=category")
  shape = data.image_shape(ds)
  if len(shape) != 3:
    return
  height, width, _ = shape
  if height is None:
    raise ConfigError("dataset.image_size", ds.image_size,
                      f"a size > 0: {ds.name} images vary in size, so they must be resized")
  need = models.required_input_size(config.model)
  if min(height, width) < need:
    raise ConfigError("dataset.image_size", ds.image_size,
                      f"{config.model.name} pools {(need - 1).bit_length()} times and needs "
                      f"images of at least {need}x{need}, but {ds.name} gives "
                      f"{height}x{width}; set dataset.image_size>={need}")


def _validate_user_data(config):
  ds = config.dataset
  shape = data.native_shape(ds)
  if data.is_image(ds):
    if shape[-1] not in (1, 3) and ds.channels:
      raise ConfigError("dataset.channels", ds.channels,
                        f"0: {ds.name} has {shape[-1]} channels, so none can be converted")
    if shape[-1] == 3 and ds.channels == 1:
      raise ConfigError("dataset.channels", ds.channels, f"0 or 3: {ds.name} is RGB")
    return
  what = f"0: {ds.name} gives features of shape {list(shape)}, not [h, w, c] images"
  for key in ("image_size", "channels", "crop_padding"):
    if ds[key]:
      raise ConfigError(f"dataset.{key}", ds[key], what)
  if ds.flip:
    raise ConfigError("dataset.flip", ds.flip, "False" + what[1:])
  if config.model.name != "mlp":
    raise ConfigError("model.name", config.model.name,
                      f"mlp: {ds.name} gives features of shape {list(shape)}, and "
                      f"{config.model.name} needs [h, w, c] images")


def validate_derived(config: ml_collections.ConfigDict, num_train: int, total_steps: int,
                     num_classes: int, num_devices: int = 1):
  """Checks that need the loaded dataset and the devices; before any write."""
  import jax  # pylint: disable=g-import-not-at-top
  available = jax.device_count() if config.parallelism == "jit" else jax.local_device_count()
  if num_devices > available:
    raise ConfigError("num_devices", config.num_devices,
                      f"-1 or at most the {available} devices this run can use")
  if config.batch_size % num_devices:
    raise ConfigError("batch_size", config.batch_size,
                      f"a multiple of the {num_devices} devices (the batch is split evenly)")
  if config.parallelism == "pmap" and jax.process_count() > 1:
    raise ConfigError("parallelism", config.parallelism,
                      "jit for multi-process runs (the pmap form here is single-process)")
  if config.batch_size > num_train:
    fraction = config.dataset.get("validation_fraction", 0.0)
    if fraction >= 0.5:  # The carve, not the batch, left train this small.
      raise ConfigError("dataset.validation_fraction", fraction,
                        f"a fraction that leaves a batch to train on: it held out all but "
                        f"{num_train} training examples of {config.dataset.name}, fewer than "
                        f"batch_size={config.batch_size}")
    raise ConfigError("batch_size", config.batch_size,
                      f"at most the {num_train} training examples of {config.dataset.name}")
  if config.head == "binary" and num_classes != 2:
    raise ConfigError("head", config.head,
                      f"'binary' needs a 2-class task, but {config.dataset.name} has "
                      f"{num_classes} classes; set dataset.classes=(a, b)")
  if config.optimizer.schedule == "warmup_cosine" and not (
      0 < config.optimizer.warmup_steps < total_steps):
    raise ConfigError("optimizer.warmup_steps", config.optimizer.warmup_steps,
                      f"0 < warmup_steps < the run's {total_steps} steps")
