"""VGG16 (configuration D) at ImageNet shape: 224x224x3, 1000 classes, 138,357,544 params.

The paper's recipe: SGD momentum 0.9, lr 0.01, weight decay 5e-4, dropout
0.5, batch 256. The data here is synthetic so the config runs anywhere; the
data issue adds imagenet2012 through TFDS. Meant for accelerators.

    vgg-jax train --config=vgg16_imagenet --workdir=/tmp/vgg_jax/vgg16
"""

from vgg_jax.config_lib import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.dataset.name = "synthetic"
  config.dataset.synthetic.image_shape = (224, 224, 3)
  config.dataset.synthetic.num_classes = 1000
  config.dataset.synthetic.num_train = 2560
  config.dataset.synthetic.num_test = 512
  config.model.name = "vgg16"
  config.model.dropout_rate = 0.5
  config.model.kernel_init = "he_normal"
  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.01
  config.optimizer.weight_decay = 5e-4
  config.optimizer.schedule = "step"
  config.batch_size = 256
  config.eval_batch_size = 256
  config.num_epochs = 1
  config.log_every_steps = 1
  return config
