"""Your own images: class subfolders (root/cat/*.jpg, root/dog/*.jpg, optionally
under root/train and root/test) or Kaggle's flat dogs-vs-cats names
(root/cat.123.jpg). Unreadable files are skipped with a warning.

A narrow VGG11 at 64x64 with flips and crops, Adam:

    vgg-jax train --config=image_folder --workdir=/tmp/vgg_jax/folder \
        --config.dataset.path=/path/to/images
"""

from vgg_jax.config_lib import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.dataset.name = "image_folder"
  config.dataset.path = ""  # Required: set with --config.dataset.path=DIR.
  config.dataset.image_size = 64
  config.dataset.flip = True
  config.dataset.crop_padding = 4
  config.dataset.validation_fraction = 0.1
  config.model.name = "vgg11"
  config.model.width_multiplier = 0.25
  config.model.classifier_sizes = (256,)
  config.model.dropout_rate = 0.5
  config.model.kernel_init = "he_normal"
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 3e-4
  config.batch_size = 32
  config.num_epochs = 20
  return config
