r"""vgg-jax train: train and evaluate one config (or a sweep) into a workdir.

    vgg-jax train --config=default --workdir=/tmp/vgg_jax/default \
        --config.optimizer.name=nadam --config.optimizer.learning_rate=3e-3

(the same as `python -m vgg_jax.main ...`). --config is a built-in config by
name (default, fashion_mnist:vgg_bn, ...) or a path to a config file;
--config.KEY=VALUE overrides any key. The workdir gets checkpoints,
results.csv, status.json and TensorBoard events; rerunning the same command
resumes. Exit codes: 0 done; 2 bad input (one line on stderr, nothing
written); 1 diverged; 75 stopped by SIGTERM/SIGINT after a checkpoint (rerun
to resume).
"""

if __name__ == "__main__":  # Ctrl-C from the first moment: one line, exit 130.
  from vgg_jax import cli as _cli  # pylint: disable=g-import-not-at-top
  _cli.exit_on_ctrl_c()

from absl import flags
from ml_collections import config_flags

from vgg_jax import cli, preemption
from vgg_jax.errors import DivergedError, UserError, disk_full_message, is_disk_full

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.json.")
cli.define_cluster_flags()  # --sweep_shard, --multihost and the multi-process flags.
config_flags.DEFINE_config_file("config", None, "A built-in config by name (default, "
                                "fashion_mnist:vgg_bn) or a config file's path[:variant].",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  cli.exit_on_ctrl_c()
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.setup_logging()
  from vgg_jax import config_validation  # pylint: disable=g-import-not-at-top
  config = cli.load_config_flag()
  try:
    config_validation.validate(config)
    from vgg_jax import compile_cache, sweep, training  # pylint: disable=g-import-not-at-top
    compile_cache.enable()  # A sweep's runs (and evals) compile each program once.
    cli.initialize_cluster()
    if config.sweep:
      results = sweep.run_sweep(config, FLAGS.workdir, FLAGS.sweep_shard)
      for r in results:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in r.items() if k != "run_id"))
      print(f"{len(results)} runs trained -> {FLAGS.workdir} (results.csv, status.json; "
            f"tensorboard --logdir={FLAGS.workdir})")
      return
    result = training.train_and_evaluate(config, FLAGS.workdir)
  except DivergedError as e:
    cli.fail(str(e), code=1)
  except preemption.Preempted as e:
    cli.fail(str(e), code=preemption.EXIT_CODE)
  except UserError as e:
    cli.fail(str(e), code=cli.exit_code(e))
  except Exception as e:  # pylint: disable=broad-except
    if is_disk_full(e):
      cli.fail(disk_full_message(FLAGS.workdir))
    from vgg_jax import parallel  # pylint: disable=g-import-not-at-top
    parallel.wait_for_watchdog()  # A dead peer ends the run here, clearly.
    raise
  print(f"final step {result['step']}: test_accuracy={result['accuracy']:.4f} "
        f"test_loss={result['loss']:.4f} ({result['wall_seconds']:.1f}s) -> {FLAGS.workdir}")


def run():
  cli.run_app(main, __doc__)


if __name__ == "__main__":
  run()
