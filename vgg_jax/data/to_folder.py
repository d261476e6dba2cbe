"""Write a dataset's images as an image folder (root/<split>/<class>/<i>.png).

    vgg-jax to-folder fashion_mnist --classes=sneaker,ankle_boot \\
        --out=/tmp/vgg_jax/sneakers_vs_boots [--per_class=1000]

The offline stand-in for cats vs dogs: any dataset vgg_jax can load becomes
the image-folder source that configs/cats_vs_dogs.py:stand_in reads.
"""

import os

from absl import flags
import numpy as np

from vgg_jax import cli
from vgg_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Root directory to write.")
flags.DEFINE_list("classes", [], "Class names or ids to keep (default: all).")
flags.DEFINE_integer("per_class", 1000, "At most this many training images per class "
                     "(test: a fifth of it).")


def write_folder(dataset, out: str, per_class: int) -> int:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  names = dataset.info.class_names
  written = 0
  for split, limit in (("train", per_class), ("test", max(1, per_class // 5))):
    images, labels = dataset.splits[split]
    for c, name in enumerate(names):
      directory = os.path.join(out, split, name)
      os.makedirs(directory, exist_ok=True)
      for i in np.flatnonzero(labels == c)[:limit]:
        image = images[i].squeeze(-1) if images[i].shape[-1] == 1 else images[i]
        Image.fromarray(image).save(os.path.join(directory, f"{i}.png"))
        written += 1
  return written


def main(argv):
  if len(argv) != 2 or not FLAGS.out:
    cli.fail("usage: python -m vgg_jax.data.to_folder DATASET --out=DIR [--classes=a,b]",
             prog="vgg_jax.data.to_folder")
  cli.setup_logging()
  from vgg_jax import data  # pylint: disable=g-import-not-at-top
  from vgg_jax.config_lib import base_config  # pylint: disable=g-import-not-at-top
  config = base_config().dataset
  config.name = argv[1]
  config.classes = tuple(int(c) if c.isdigit() else c for c in FLAGS.classes)
  try:
    dataset = data.load(config)
  except UserError as e:
    cli.fail(str(e), prog="vgg_jax.data.to_folder")
  count = write_folder(dataset, FLAGS.out, FLAGS.per_class)
  print(f"{count} images of {', '.join(dataset.info.class_names)} -> {FLAGS.out}")


def run():
  cli.run_app(main, __doc__)


if __name__ == "__main__":
  run()
