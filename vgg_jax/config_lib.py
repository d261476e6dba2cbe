"""The config schema: every key a run can set, with its default, in one place.

Config files in configs/ start from ``base_config()`` and override what they
need, so a locked config accepts exactly these keys and a typo in a
``--config.x=y`` override fails at parse time.
"""

import importlib.util
import os
import pathlib

import ml_collections

from vgg_jax import errors


def base_config() -> ml_collections.ConfigDict:
  """Returns the full schema with defaults: an MLP on digits trained by Adam."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Compute dtype of the model; params always stay float32.
  c.dtype = "float32"
  # Output head: category (softmax + CE), binary (sigmoid + BCE), value (linear + MSE).
  c.head = "category"

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "digits"
  # Resize images to image_size x image_size; 0 keeps the native size.
  c.dataset.image_size = 0
  # 3 repeats grey images to RGB; 0 keeps the native channels.
  c.dataset.channels = 0
  # Keep only these classes (ids or names), relabelled 0..k-1 in this order,
  # e.g. ('sneaker', 'ankle_boot') for a binary task.
  c.dataset.classes = ()
  # auto: the dataset's published mean/std (else computed from train);
  # computed, unit (x/255) or imagenet.
  c.dataset.normalization = "auto"
  # Fraction of train carved out as a validation split (fixed, seed-independent),
  # so hyperparameters are never picked on test. 0 disables it.
  c.dataset.validation_fraction = 0.0
  # Train on a fixed subset of this many examples; -1 uses all.
  c.dataset.num_train_examples = -1
  # Augmentation: zero-pad and random-crop back (0 = off), random horizontal flip.
  c.dataset.crop_padding = 0
  c.dataset.flip = False
  # Fraction held out as test where a source has no test split (digits, image folders).
  c.dataset.test_fraction = 0.2
  # memory: whole splits on the device as uint8; streaming: tf.data from TFDS;
  # auto: streaming when the train split would exceed memory_limit_mb.
  c.dataset.pipeline = "auto"
  c.dataset.memory_limit_mb = 2048
  c.dataset.shuffle_buffer = 10_000  # streaming only.
  # TFDS: '' uses TFDS's default data_dir; download=False never touches the network.
  c.dataset.data_dir = ""
  c.dataset.download = True
  # mnist / fashion_mnist: a directory with the four IDX files ('' tries Debian's).
  c.dataset.idx_dir = ""
  c.dataset.path = ""  # image_folder: its root directory.
  c.dataset.synthetic = ml_collections.ConfigDict()
  c.dataset.synthetic.num_train = 2048
  c.dataset.synthetic.num_test = 512
  c.dataset.synthetic.image_shape = (8, 8, 1)
  c.dataset.synthetic.num_classes = 10

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"
  c.model.hidden_sizes = (256, 256)  # MLP only.
  c.model.activation = "relu"
  c.model.kernel_init = "lecun_normal"
  c.model.dropout_rate = 0.0
  c.model.input_dropout_rate = 0.0  # MLP only: dropout on the flattened input.
  c.model.width_multiplier = 1.0  # VGG only: scales every conv's channels.
  c.model.batch_norm = False  # VGG only.
  c.model.classifier_sizes = (4096, 4096)  # VGG only: FC-ReLU-Dropout blocks.
  # VGG only: how 3x3 convs and 2x2 pools compile. auto: on CPU oneDNN's
  # kernels where installed, else blocked matmuls (XLA's CPU conv is slow;
  # kernels/conv.py, kernels/onednn.py); XLA's native conv on GPU/TPU.
  c.model.conv_lowering = "auto"
  # VGG only: ImageNet weights to start from, a Keras .h5 or a torchvision
  # .pth/.safetensors file (see vgg_jax/pretrained.py; never downloaded). The
  # input preprocessing then follows the weights. pretrained_layers: "all",
  # or "conv" for inputs whose FC shapes differ from ImageNet's 224x224. The
  # head is replaced whenever its class count differs.
  c.model.pretrained = ""
  c.model.pretrained_layers = "all"
  # Train only part of the net: "conv" freezes the conv base, "all_but_head"
  # everything but the head (the one-epoch fine-tune of the seed).
  c.model.freeze = "none"
  # With a frozen base: compute its features once and train the rest on them.
  c.model.cache_features = False

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3  # Peak rate; the schedule shapes it.
  c.optimizer.momentum = 0.9  # momentum, nesterov.
  c.optimizer.rho = 0.9  # rmsprop decay, adadelta rho.
  c.optimizer.b1 = 0.9  # adam, nadam, adamw.
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.0  # Decoupled for adamw, L2 added to grads otherwise.
  c.optimizer.grad_clip_norm = 0.0  # 0 disables clipping by global norm.
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0  # warmup_cosine only.
  c.optimizer.step_boundaries = (0.5, 0.75)  # step only: fractions of training.
  c.optimizer.step_factor = 0.1  # step only: multiply the rate by this at each boundary.

  # In-memory pipeline: run each epoch as one lax.scan (no Python per step),
  # cut at eval points so evals land exactly every eval_every_steps. Log rows
  # are exact either way; checkpoints happen at the end of the scanned chunk
  # in which their interval falls.
  c.scan_epoch = True
  # Run op by op with jax_debug_nans: the first primitive that makes a NaN
  # raises, named. Very slow (nothing is compiled); for the hunt.
  c.debug_nans = False
  # Data parallel over num_devices (-1: all) in the jit form (Mesh + NamedSharding)
  # or the pmap form. batch_size is global and must divide by the device count.
  c.parallelism = "jit"
  c.num_devices = -1
  c.batch_size = 64  # -1: full batch (every training example in each step: gradient descent).
  c.eval_batch_size = 512
  c.num_epochs = 30
  c.num_train_steps = -1  # -1: num_epochs * steps_per_epoch.
  c.log_every_steps = 50
  c.eval_every_steps = -1  # -1: once per epoch; the last step always evaluates.
  # Also evaluate (no dropout, no augmentation) on the first N training
  # examples, as split "train_eval": the train side of a train-test gap.
  c.eval_train_examples = 0
  # Sweeps: evaluate the test split at every eval (False: only at the end;
  # curves and choices then use validation alone, and evals cost less).
  c.test_every_eval = True
  # Sweep: a JSON list of {config key: value} overrides, one per run; build it
  # with vgg_jax.sweep.product / zip_ / axis in a config file. Empty: one run.
  c.sweep = ""
  # Models per vmap program within a sweep group; -1 picks by backend and size.
  c.sweep_vmap_size = -1
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 3
  # Profiling: a jax.profiler trace of about profile_steps steps (whole
  # compiled chunks), from the first chunk boundary at or after
  # profile_start_step, into WORKDIR/plugins/profile for TensorBoard's
  # Profile tab. 0: off.
  c.profile_steps = 0
  c.profile_start_step = 1
  return c


# Built-in configs, by name: the files of the repo's configs/, installed as
# vgg_jax.configs. --config=default, --config=fashion_mnist:vgg_bn, or a path.


def configs_dir() -> pathlib.Path:
  """Where the built-in configs live (installed, or the repo's configs/)."""
  spec = importlib.util.find_spec("vgg_jax.configs")
  if spec is not None and spec.submodule_search_locations:
    return pathlib.Path(list(spec.submodule_search_locations)[0])
  return pathlib.Path(__file__).resolve().parent.parent / "configs"


def builtin_configs() -> list:
  return sorted(p.stem for p in configs_dir().glob("*.py") if not p.stem.startswith("_"))


def config_path(spec: str) -> str:
  """A --config value as config_flags reads it, PATH[:variant]: a path as
  given when it is a file; a built-in config's file for a bare name
  ("fashion_mnist:vgg_bn", even where a directory of that name sits in the
  working directory, such as an earlier run's workdir), and for
  configs/NAME.py outside the repo."""
  path, sep, variant = spec.partition(":")
  if os.path.isfile(path):
    return spec
  name = path[:-3] if path.endswith(".py") else path
  if ("/" not in name or pathlib.Path(name).parent.name == "configs"):
    builtin = configs_dir() / f"{pathlib.Path(name).name}.py"
    if builtin.is_file():
      return f"{builtin}{sep}{variant}"
  raise errors.UserError(f"--config={spec}: no such file, and no built-in config of that name "
                         f"(built-in: {', '.join(builtin_configs())}; add :variant for one "
                         "of a file's variants)")


def load_config(spec: str, lock: bool = True) -> ml_collections.ConfigDict:
  """The config that --config=spec gives: `load_config("default")`,
  `load_config("fashion_mnist:vgg_bn")` or `load_config("my/config.py")`."""
  path, _, variant = config_path(spec).partition(":")
  module_spec = importlib.util.spec_from_file_location(f"_vgg_jax_config_{pathlib.Path(path).stem}",
                                                       path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant) if variant else module.get_config()
  if lock:
    config.lock()
  return config
