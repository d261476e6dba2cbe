"""vgg_jax: the "deep learning installed in your head" chain, runnable in JAX.

Sigmoid -> ReLU, GD -> SGD -> Adam, dropout, and conv/pool up to VGG16, as
pure Flax modules, Optax chains and a jit-compiled train loop driven by
ml_collections configs. See README.md.
"""

__version__ = "0.1.0"

import os as _os

# jaxlib and TensorFlow share one C++ logger, set up by whichever is imported
# first (jax, here), so TF's own quieting (vgg_jax.tf_import) comes too late:
# its warnings (a TensorBoard flush on a full disk prints eight lines) would
# break the one-line errors. Errors still print; TF_CPP_MIN_LOG_LEVEL=0 shows
# everything.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# The notebook API (vgg_jax/api.py), imported on first call so that `import
# vgg_jax` stays light. vgg_jax.sweep is also the module of sweep helpers
# (sweep.results, sweep.status); calling it runs a sweep.


def load_config(spec: str):
  """A built-in config by name ("default", "fashion_mnist:vgg_bn") or a path."""
  from vgg_jax import api  # pylint: disable=g-import-not-at-top
  return api.load_config(spec)


def train(config, workdir: str):
  """Trains a config (or a config's name) into workdir; returns the test metrics."""
  from vgg_jax import api  # pylint: disable=g-import-not-at-top
  return api.train(config, workdir)


def results(workdir: str, as_frame: bool = True):
  """A run's or sweep's rows as a pandas DataFrame (a list of dicts without pandas)."""
  from vgg_jax import api  # pylint: disable=g-import-not-at-top
  return api.results(workdir, as_frame)


def __getattr__(name):
  if name == "sweep":
    import importlib  # pylint: disable=g-import-not-at-top
    return importlib.import_module("vgg_jax.sweep")
  raise AttributeError(f"module 'vgg_jax' has no attribute {name!r}")
