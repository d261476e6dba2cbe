"""Default: a 64-256-256-10 ReLU MLP on scikit-learn's digits, Adam, 30 epochs.

Embedded data, no network, about half a minute on 2 CPU cores:

    vgg-jax train --config=default --workdir=/tmp/vgg_jax/default
"""

from vgg_jax.config_lib import base_config


def get_config(arg=None):
  del arg
  return base_config()
