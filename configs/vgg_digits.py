"""A narrow VGG on digits upsampled to 32x32: conv, padding and pooling, offline.

VGG16's layout (13 convs in 5 stages, 2x2 max pools) at 1/8 width, with a
small 128-128 classifier, trained with Nesterov momentum and a cosine
schedule. Variants: `configs/vgg_digits.py:vgg11` (or vgg13, vgg19).

    vgg-jax train --config=vgg_digits --workdir=/tmp/vgg_jax/vgg_digits
"""

from vgg_jax.config_lib import base_config


def get_config(arg=None):
  config = base_config()
  config.dataset.image_size = 32  # 5 poolings need at least 32x32.
  config.model.name = arg or "vgg16"
  config.model.width_multiplier = 0.125
  config.model.classifier_sizes = (128, 128)
  config.model.dropout_rate = 0.3
  config.model.kernel_init = "he_normal"
  config.optimizer.name = "nesterov"
  config.optimizer.learning_rate = 0.02
  config.optimizer.schedule = "cosine"
  config.batch_size = 64
  config.num_epochs = 15
  return config
