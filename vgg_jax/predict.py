"""Label images with a trained run, or with imported ImageNet weights.

    vgg-jax predict --workdir=/tmp/vgg_jax/cats_vs_dogs cat.jpg dog.jpg
    vgg-jax predict --weights=vgg16_weights_tf_dim_ordering_tf_kernels.h5 cat.jpg

With --workdir: the run's latest checkpoint, config and classes; prints each
image's label and probability (--top_k for more). With --weights: VGG16 (or
--model=vgg19) straight from a Keras or torchvision file; prints the top-5
ImageNet classes. Their names come from --class_names (Keras's
imagenet_class_index.json, or a text file with one name per line), else
from Keras's cache (~/.keras/models/imagenet_class_index.json), else the
class index is printed.
"""


from absl import flags
import numpy as np

from vgg_jax import cli, inference
from vgg_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run's workdir.")
flags.DEFINE_string("weights", None, "A Keras .h5 or torchvision .pth/.safetensors ImageNet file.")
flags.DEFINE_enum("model", "vgg16", ["vgg11", "vgg13", "vgg16", "vgg19"],
                  "The architecture of --weights.")
flags.DEFINE_integer("top_k", None, "Classes to print per image (default: 1 for a run, 5 for "
                     "ImageNet weights).")
flags.DEFINE_string("class_names", None, "ImageNet class names: imagenet_class_index.json or "
                    "one name per line.")

def main(argv):
  images = argv[1:]
  cli.setup_logging()
  if not images:
    cli.fail("give one or more image files", prog="vgg_jax.predict")
  if bool(FLAGS.workdir) == bool(FLAGS.weights):
    cli.fail("give exactly one of --workdir (a trained run) or --weights (ImageNet weights)",
             prog="vgg_jax.predict")
  try:
    if FLAGS.workdir:
      probabilities, names, shape = inference.run_classifier(FLAGS.workdir)
      k = FLAGS.top_k or 1
    else:
      probabilities, names, shape = inference.imagenet_classifier(FLAGS.weights, FLAGS.model,
                                                                    FLAGS.class_names)
      k = FLAGS.top_k or 5
    batch = inference.load_images(images, *shape)
    probs = probabilities(batch)
  except UserError as e:
    cli.fail(str(e), prog="vgg_jax.predict")
  for path, p in zip(images, probs):
    ranked = inference.top_classes(np.asarray(p), names, k)
    print(f"{path}: " + ", ".join(f"{name} {prob:.4f}" for name, prob in ranked))


def run():
  cli.run_app(main, __doc__)


if __name__ == "__main__":
  run()
