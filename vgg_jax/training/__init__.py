"""The one training engine. Data flows one way:

    config + dataset info -> program.build (model, head, optax chain with
    frozen masks, preprocessing, train and eval steps)
      -> a driver (drivers.py: in-memory scan, vmap over K members,
         streaming, pmap), yielding (state, step, stacked metrics) chunks
      -> engine.train_members: one loop for log rows, evals, checkpoints,
         divergence and status
      -> outputs: a single run's metrics.jsonl/TensorBoard/status.json
         (run.py) or a sweep group's results.csv rows (sweep_group.py).

A single run is a sweep of one: the same builder, loop and checkpoints,
with the K=1 program left unvmapped.
"""

from vgg_jax.training.engine import EVAL_SPLITS, Member, crossed, train_members
from vgg_jax.training.program import Program, build, resolve_batch_size, total_train_steps
from vgg_jax.training.rows import params_fingerprint
from vgg_jax.training.run import train_and_evaluate
from vgg_jax.training.steps import (GRAD_FINITE, TrainState, create_train_state, eval_step,
                                    init_variables, make_preprocess, train_chunk, train_step)

__all__ = ["EVAL_SPLITS", "GRAD_FINITE", "Member", "Program", "TrainState", "build",
           "create_train_state", "crossed", "eval_step", "init_variables", "make_preprocess",
           "params_fingerprint", "resolve_batch_size", "total_train_steps", "train_and_evaluate",
           "train_chunk", "train_members", "train_step"]
