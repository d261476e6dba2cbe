"""The one place TensorFlow is imported: lazily, quietly, and off the GPUs.

TF serves only TFDS data reading here (TensorBoard files are written without
it: vgg_jax/metrics.py). JAX owns the accelerators, so TF must never allocate
GPU memory. oneDNN is turned off because it only speeds TF's own math (unused
here) and announces itself on stderr, which would break our one-line error
messages.
"""

import os


def import_tf():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF was already initialized (and hidden) by an earlier call.
    pass
  return tf
