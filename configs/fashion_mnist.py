"""An MLP on Fashion-MNIST: 784-512-256-10, ReLU, dropout 0.2, Adam, 15 epochs.

Works offline once the data is anywhere vgg_jax looks: prepared TFDS data,
Debian's package (apt-get install dataset-fashion-mnist), or the four IDX
files in --config.dataset.idx_dir. 10% of train is held out as validation.

    vgg-jax train --config=fashion_mnist --workdir=/tmp/vgg_jax/fmnist

Variants: `:vgg` trains the narrow VGG16 at 32x32 instead; `:vgg_bn` is
VGG16 at 1/4 width with BatchNorm, flips and crops, Nesterov momentum with
warmup, cosine decay and weight decay, 30 epochs (about 12 minutes on 2 CPU
cores; docs/data.md quotes its accuracy over 3 seeds);
`:binary` is sneaker vs ankle boot with the sigmoid head.

    vgg-jax train --config=fashion_mnist:vgg_bn --workdir=/tmp/vgg_jax/fmnist_vgg
"""

from vgg_jax.config_lib import base_config


def get_config(arg=None):
  config = base_config()
  config.dataset.name = "fashion_mnist"
  config.dataset.validation_fraction = 0.1
  config.model.hidden_sizes = (512, 256)
  config.model.dropout_rate = 0.2
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "cosine"
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.num_epochs = 15
  config.log_every_steps = 200
  config.checkpoint_every_steps = 2000
  if arg in ("vgg", "vgg_bn"):  # The VGG16 layout at 32x32 with crops.
    config.dataset.image_size = 32
    config.dataset.crop_padding = 2
    config.model.name = "vgg16"
    config.model.kernel_init = "he_normal"
    config.model.dropout_rate = 0.3
  if arg == "vgg":
    config.model.width_multiplier = 0.125
    config.model.classifier_sizes = (128,)
    config.num_epochs = 10
  elif arg == "vgg_bn":
    config.dataset.flip = True
    config.model.width_multiplier = 0.25
    config.model.batch_norm = True
    config.model.classifier_sizes = (256,)
    config.optimizer.name = "nesterov"
    config.optimizer.learning_rate = 0.05
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 842  # Two epochs of 421 steps.
    config.num_epochs = 30
    config.test_every_eval = False  # Choices read validation; test is scored once, at the end.
    config.checkpoint_every_steps = 4210
  elif arg == "binary":
    config.dataset.classes = ("sneaker", "ankle_boot")
    config.head = "binary"
    config.num_epochs = 5
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; use vgg, vgg_bn or binary")
  return config
