"""A sweep on digits: 8 learning rates x 3 seeds = 24 MLPs, trained as one vmap program.

    vgg-jax train --config=sweep_digits --workdir=/tmp/vgg_jax/sweep
    # or split over two workers:
    vgg-jax train --config=sweep_digits --workdir=DIR --sweep_shard=0/2
    vgg-jax train --config=sweep_digits --workdir=DIR --sweep_shard=1/2

Writes results.csv: run_id, learning rate, seed, step, split, loss, accuracy,
status, wall time; one row per run per eval. 10% of train is validation.
"""

from vgg_jax import sweep
from vgg_jax.config_lib import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.optimizer.name = "sgd"
  config.dataset.validation_fraction = 0.1
  config.num_epochs = 20
  config.sweep = sweep.to_config(sweep.product(
      sweep.axis("optimizer.learning_rate", [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]),
      sweep.axis("seed", [0, 1, 2])))
  return config
