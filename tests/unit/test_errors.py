"""Errors: a full disk is recognized through every wrapper that carries it.

What a full disk does to a run: tests/e2e/test_resume.py.
"""

import errno

from vgg_jax import errors


def test_disk_full_is_recognized_through_tensorflow_and_orbax_wrappers():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  assert errors.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
  assert errors.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
  # What the TensorBoard writer raised (issue 17), and orbax's TensorStore error.
  assert errors.is_disk_full(tf.errors.ResourceExhaustedError(
      None, None, "/w/tensorboard/events.out; No space left on device"))
  wrapped = ValueError("RESOURCE_EXHAUSTED: Error writing ...")
  wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
  assert errors.is_disk_full(wrapped)
  assert not errors.is_disk_full(OSError(errno.EACCES, "Permission denied"))
  assert not errors.is_disk_full(ValueError("RESOURCE_EXHAUSTED: out of memory"))
