"""The `vgg-jax` command: one subcommand per job.

    vgg-jax train --config=default --workdir=/tmp/vgg_jax/default
    vgg-jax dropout --workdir=/tmp/vgg_jax/exp/dropout --mode=smoke
    vgg-jax <command> --help

Each subcommand is a module's absl app (`python -m vgg_jax.main` is `vgg-jax
train`), imported only when it runs, so each sees only its own flags.
"""

import importlib
import sys

# name: (module, what it does). Experiments follow the lecture deck's order.
COMMANDS = {
    "train": ("vgg_jax.main", "train and evaluate one config, or a sweep, into a workdir"),
    "predict": ("vgg_jax.predict", "label images with a trained run or ImageNet weights"),
    "visualize": ("vgg_jax.visualize", "draw first-layer filters and each block's feature maps"),
    "prepare": ("vgg_jax.data.prepare", "make tfds.load('fashion_mnist') work offline from "
                "IDX files"),
    "to-folder": ("vgg_jax.data.to_folder", "write a dataset's images as an image folder"),
    "vanishing-gradient": ("vgg_jax.experiments.vanishing_gradient",
                           "experiment: sigmoid vs ReLU as networks get deep"),
    "batch-size": ("vgg_jax.experiments.batch_size",
                   "experiment: full-batch GD vs mini-batch SGD"),
    "optimizers": ("vgg_jax.experiments.optimizers",
                   "experiment: SGD, Momentum, NAG, Adagrad, RMSProp, AdaDelta, Adam, Nadam"),
    "dropout": ("vgg_jax.experiments.dropout", "experiment: overfitting, dropout off and on"),
    "learning-rate": ("vgg_jax.experiments.learning_rate",
                      "experiment: a learning-rate sweep, too small to diverging"),
}


def usage() -> str:
  width = max(map(len, COMMANDS))
  lines = [__doc__.strip(), "", "commands:"]
  lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
  return "\n".join(lines)


def main(argv=None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  name = argv[1].replace("_", "-")
  if name not in COMMANDS:
    print(f"vgg-jax: unknown command {argv[1]!r}; commands: {', '.join(COMMANDS)}",
          file=sys.stderr)
    sys.exit(2)
  from vgg_jax import cli  # pylint: disable=g-import-not-at-top
  cli.exit_on_ctrl_c(f"vgg-jax {name}")  # Before the imports: Ctrl-C is one line.
  sys.argv = [f"vgg-jax {name}", *argv[2:]]
  importlib.import_module(COMMANDS[name][0]).run()
