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


# The notebook API, vgg_jax.load_config / train / results (vgg_jax/api.py),
# imported on first use so that `import vgg_jax` stays light. vgg_jax.sweep
# is the module of sweep helpers (sweep.results, sweep.status); calling it
# runs a sweep (api.sweep).
_API = ("load_config", "train", "results")


def __getattr__(name):
  import importlib  # pylint: disable=g-import-not-at-top
  if name in _API:
    return getattr(importlib.import_module("vgg_jax.api"), name)
  if name == "sweep":
    return importlib.import_module("vgg_jax.sweep")
  raise AttributeError(f"module 'vgg_jax' has no attribute {name!r}")
