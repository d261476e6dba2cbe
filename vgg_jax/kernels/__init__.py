"""CPU kernels for VGG's 3x3 convolutions and 2x2 max pools.

models/vgg.py draws VGG with flax's nn.Conv (plus its ReLU) and nn.max_pool.
XLA:CPU runs convolutions far below its matmul speed, so on CPU
`create_model` injects these instead, chosen by model.conv_lowering (conv.py
lists them): the same parameters and numbers, computed as blocked matmuls or
by oneDNN's kernels (onednn.py, native/onednn_conv.cc), with the ReLU in the
convolution's own pass. docs/cpu_convolutions.md has the measurements behind
each choice.
"""

import functools
from typing import Callable, Optional, Tuple

import flax.linen as nn
import ml_collections

from vgg_jax import checks
from vgg_jax.errors import ConfigError
from vgg_jax.kernels import conv, onednn, pooling
from vgg_jax.kernels.conv import CONV_LOWERINGS, Conv3x3, resolve
from vgg_jax.kernels.pooling import max_pool


@functools.lru_cache(maxsize=None)  # The same objects each time: equal modules hash equal.
def conv_and_pool(lowering: str) -> Optional[Tuple[Callable[..., nn.Module], Callable]]:
  """(the conv module, the pool function) for a lowering, or None where it
  resolves to xla (as `auto` does on GPU/TPU): flax's own are right there."""
  if resolve(lowering) == "xla":
    return None
  return (functools.partial(Conv3x3, lowering=lowering),
          functools.partial(max_pool, lowering=lowering))


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks model.conv_lowering: one of CONV_LOWERINGS, and onednn only
  where it can run (built here, float32)."""
  checks.choice(config, "model.conv_lowering", CONV_LOWERINGS)
  if config.model.conv_lowering != "onednn":
    return
  if not onednn.available():
    raise ConfigError("model.conv_lowering", "onednn", "auto or blocked here (oneDNN "
                      f"unavailable: {onednn.unavailable_reason()})")
  if config.dtype != "float32":
    raise ConfigError("model.conv_lowering", "onednn",
                      f"auto or blocked with dtype={config.dtype} (oneDNN here is float32 only)")


__all__ = ["CONV_LOWERINGS", "Conv3x3", "conv", "conv_and_pool", "max_pool", "onednn", "pooling",
           "resolve", "validate"]
