"""Validate a config once, at the edge, before anything compiles or is written.

Each part checks its own keys: optim (optimizer), models (model, head,
dtype; kernels: the conv lowering), finetune (pretrained weights and
freezing) and data (the dataset section, each source its own keys). Here
are the run's keys and the checks that span sections. Every failure raises
``ConfigError`` naming the key, the bad value and what is allowed;
``vgg_jax.main`` prints it as one line and exits with code 2.
"""

import ml_collections

from vgg_jax import checks, data, finetune, models, optim, parallel
from vgg_jax.errors import ConfigError


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks everything that can be checked without loading data."""
  models.validate(config)
  optim.validate(config)
  _validate_run(config)
  finetune.validate(config)
  data.validate(checks.get(config, "dataset"))
  _validate_model_meets_data(config)


def _validate_run(config):
  checks.choice(config, "parallelism", parallel.PARALLELISMS)
  checks.number(config, "num_devices", 1, integer=True, extra=(-1,))
  checks.number(config, "seed", 0, 2**63 - 1, integer=True)
  checks.number(config, "batch_size", 1, integer=True, extra=(-1,))  # -1: full batch.
  for key in ("eval_batch_size", "num_epochs", "log_every_steps", "checkpoint_every_steps",
              "keep_checkpoints"):
    checks.number(config, key, 1, integer=True)
  for key in ("num_train_steps", "eval_every_steps", "sweep_vmap_size"):
    checks.number(config, key, 1, integer=True, extra=(-1,))
  for key in ("eval_train_examples", "profile_steps", "profile_start_step"):
    checks.number(config, key, 0, integer=True)


def _validate_model_meets_data(config):
  """The head against the classes, and the model against the data's shape."""
  ds = config.dataset
  models.check_classes(config.head, ds.name, data.num_classes(ds))
  shape = data.image_shape(ds)
  if len(shape) != 3:
    if config.model.name != "mlp":
      raise ConfigError("model.name", config.model.name,
                        f"mlp: {ds.name} gives features of shape {list(shape)}, and "
                        f"{config.model.name} needs [h, w, c] images")
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
  models.check_classes(config.head, config.dataset.name, num_classes)
  if config.optimizer.schedule == "warmup_cosine" and not (
      0 < config.optimizer.warmup_steps < total_steps):
    raise ConfigError("optimizer.warmup_steps", config.optimizer.warmup_steps,
                      f"0 < warmup_steps < the run's {total_steps} steps")
