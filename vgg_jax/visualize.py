"""What the filters see: the first layer's filters and each block's feature maps.

    vgg-jax visualize --workdir=/tmp/vgg_jax/cats_vs_dogs --image=cat.jpg --out=/tmp/look
    vgg-jax visualize --weights=vgg16.h5 --image=cat.jpg --out=/tmp/look

Writes filters.png (every conv1_1 filter as a small RGB tile) and
feature_maps.png (for the image: the strongest channels after each block's
pool): dots and lines first, then shapes, then parts, as in Zeiler & Fergus.
"""

import os

from absl import flags
import numpy as np

from vgg_jax import cli, inference, report
from vgg_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run's workdir.")
flags.DEFINE_string("weights", None, "A Keras .h5 or torchvision .pth/.safetensors file.")
flags.DEFINE_enum("model", "vgg16", ["vgg11", "vgg13", "vgg16", "vgg19"],
                  "The architecture of --weights.")
flags.DEFINE_string("image", None, "The image whose feature maps to draw.")
flags.DEFINE_string("out", None, "Directory for filters.png and feature_maps.png.")
flags.DEFINE_integer("channels", 8, "Feature maps per block.", lower_bound=1)


def filter_grid(kernel: np.ndarray, path: str) -> None:
  """kernel [3, 3, in, out] -> one tile per output filter, each scaled to [0, 1]."""
  plt = report.pyplot()
  k = kernel if kernel.shape[2] in (1, 3) else kernel[:, :, :1]
  count = k.shape[-1]
  cols = int(np.ceil(np.sqrt(count)))
  rows = int(np.ceil(count / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.7, rows * 0.7), squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i < count:
      tile = k[:, :, :, i]
      tile = (tile - tile.min()) / (np.ptp(tile) + 1e-12)
      ax.imshow(tile if tile.shape[-1] == 3 else tile[:, :, 0], cmap=None if tile.shape[-1] == 3
                else "gray", interpolation="nearest")
  fig.suptitle(f"conv1_1: {count} filters ({k.shape[0]}x{k.shape[1]}x{k.shape[2]})")
  report.save(fig, path)


def feature_maps(maps, image: np.ndarray, path: str, channels: int) -> None:
  """maps: [(name, [h, w, c])] -> a row per block of its most active channels."""
  plt = report.pyplot()
  fig, axes = plt.subplots(len(maps), channels + 1, figsize=(1.6 * (channels + 1),
                                                             1.7 * len(maps)), squeeze=False)
  for row, (name, fmap) in zip(axes, maps):
    row[0].imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None)
    row[0].set_title("input" if name == maps[0][0] else "", fontsize=8)
    row[0].set_ylabel(name, fontsize=8)
    strongest = np.argsort(-fmap.mean(axis=(0, 1)))[:channels]
    for ax, c in zip(row[1:], strongest):
      ax.imshow(fmap[:, :, c], cmap="viridis", interpolation="nearest")
      ax.set_title(f"ch {c}", fontsize=7)
    for ax in row:
      ax.set_xticks([])
      ax.set_yticks([])
  fig.suptitle("Feature maps after each block (strongest channels)")
  report.save(fig, path)


def block_outputs(model, variables, images, mean, std):
  """[(block name, maps [h, w, c])] after each block's pool, for images[0]."""
  import jax  # pylint: disable=g-import-not-at-top
  from vgg_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  _, state = model.apply(variables, pipeline.normalize(images, mean, std), train=False,
                         capture_intermediates=lambda mdl, method: mdl.name is not None
                         and mdl.name.startswith("conv") and method == "__call__",
                         mutable=["intermediates"])
  inter = state["intermediates"]
  names = [n for n in inter if n.startswith("conv")]
  last = {}
  for n in names:  # The last conv of each stage, then its 2x2 pool.
    stage = n.split("_")[0]
    last[stage] = n
  return [(f"block {stage[4:]}",
           np.asarray(nn.max_pool(jax.nn.relu(inter[n]["__call__"][0]), (2, 2), strides=(2, 2),
                                 padding="SAME"))[0])
          for stage, n in last.items()]


def main(argv):
  del argv
  cli.exit_on_ctrl_c("vgg_jax.visualize")
  cli.setup_logging()
  if bool(FLAGS.workdir) == bool(FLAGS.weights) or not FLAGS.image or not FLAGS.out:
    cli.fail("give --out, --image and exactly one of --workdir or --weights",
             prog="vgg_jax.visualize")
  if os.path.exists(FLAGS.out) and not os.path.isdir(FLAGS.out):
    cli.fail(f"--out={FLAGS.out} is a file; give a directory for filters.png and "
             "feature_maps.png", prog="vgg_jax.visualize")
  try:
    if FLAGS.workdir:
      model, variables, info, _ = inference.restore_for_inference(FLAGS.workdir)
      mean, std, shape = info["mean"], info["std"], tuple(info["image_shape"])
    else:
      model, variables, mean, std = inference.model_from_weights(FLAGS.weights, FLAGS.model)
      shape = (224, 224, 3)
    if "conv1_1" not in variables["params"]:
      raise UserError("feature maps and filters need a VGG")
    images = inference.load_images([FLAGS.image], *shape)
  except UserError as e:
    cli.fail(str(e), prog="vgg_jax.visualize")
  try:
    os.makedirs(FLAGS.out, exist_ok=True)
    filter_grid(np.asarray(variables["params"]["conv1_1"]["kernel"]),
                os.path.join(FLAGS.out, "filters.png"))
    feature_maps(block_outputs(model, variables, images, mean, std), images[0],
                 os.path.join(FLAGS.out, "feature_maps.png"), FLAGS.channels)
  except OSError as e:  # A read-only or full output directory.
    cli.fail(f"cannot write in --out={FLAGS.out}: {e.strerror or e}", prog="vgg_jax.visualize")
  print(f"wrote {FLAGS.out}/filters.png and {FLAGS.out}/feature_maps.png")


def run():
  cli.run_app(main, __doc__)


if __name__ == "__main__":
  run()
