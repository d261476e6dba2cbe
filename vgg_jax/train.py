"""Training entry points, kept for imports: the engine lives in vgg_jax.training.

    from vgg_jax import train
    train.train_and_evaluate(config, workdir)  # -> final test metrics

`train_and_evaluate` is a sweep of one through vgg_jax.training; the step
functions and TrainState are re-exported from vgg_jax.training.steps.
"""

# pylint: disable=unused-import
from vgg_jax import models, optim
from vgg_jax.training import EVAL_SPLITS
from vgg_jax.training.program import total_train_steps
from vgg_jax.training.rows import params_fingerprint
from vgg_jax.training.run import train_and_evaluate
from vgg_jax.training.steps import (GRAD_FINITE, TrainState, create_train_state, eval_means,
                                    eval_step, evaluate, init_variables, make_preprocess,
                                    train_chunk, train_step)
