"""VGG16 from ImageNet weights, fine-tuned to cats vs dogs: the seed's one-epoch program.

The fast.ai 2016 lesson 1 recipe: ImageNet VGG16, the last layer replaced by
a 2-way softmax and trained alone (Adam, batch 64, one epoch) on 23,000
train images, 2,000 held out. Here the frozen base runs once and caches its
fc2 features, so the epoch trains a single Dense layer.

    # Needs the weights file (never downloaded here) and the data; a GPU helps.
    vgg-jax train --config=cats_vs_dogs --workdir=/tmp/vgg_jax/cats_vs_dogs \\
        --config.model.pretrained=$HOME/.keras/models/vgg16_weights_tf_dim_ordering_tf_kernels.h5
    python -m vgg_jax.predict --workdir=/tmp/vgg_jax/cats_vs_dogs cat.jpg dog.jpg

Variants:
  :folder     Kaggle's dogs-vs-cats as an image folder: --config.dataset.path=DIR
              (root/<class>/*.jpg, root/train|test/<class>/, or flat cat.1.jpg).
  :stand_in   the offline stand-in: an image folder at 32x32 (e.g. sneakers vs
              ankle boots written by `python -m vgg_jax.data.to_folder`), only
              the conv base imported and frozen, conv features cached, a new
              256-unit classifier trained on them.
"""

from vgg_jax.config_lib import base_config


def get_config(arg=None):
  config = base_config()
  config.dataset.name = "cats_vs_dogs"
  config.dataset.image_size = 224
  config.dataset.channels = 3
  config.dataset.validation_fraction = 2000 / 23262  # fast.ai: 23,000 train, 2,000 valid.
  # In memory (3.5 GB of uint8 at 224): the frozen base's features are computed
  # once from the arrays; streaming would re-decode every image.
  config.dataset.pipeline = "memory"
  config.dataset.memory_limit_mb = 8192
  config.model.name = "vgg16"
  config.model.classifier_sizes = (4096, 4096)
  config.model.dropout_rate = 0.5
  config.model.pretrained = ""  # Set to a Keras .h5 or torchvision .pth/.safetensors file.
  config.model.freeze = "all_but_head"
  config.model.cache_features = True
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 64
  config.eval_batch_size = 64
  config.num_epochs = 1
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200
  if arg == "folder":
    config.dataset.name = "image_folder"
    config.dataset.validation_fraction = 0.08
  elif arg == "stand_in":
    config.dataset.name = "image_folder"
    config.dataset.memory_limit_mb = 2048
    config.dataset.image_size = 32
    config.dataset.validation_fraction = 0.1
    config.model.pretrained_layers = "conv"
    config.model.freeze = "conv"
    config.model.classifier_sizes = (256,)
    config.eval_batch_size = 500
    config.num_epochs = 10
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; use folder or stand_in")
  return config
