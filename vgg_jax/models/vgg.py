"""The VGG family (Simonyan & Zisserman 2014), configurations A, B, D and E.

Each stage is a run of 3x3 convolutions with zero padding ('SAME', which
keeps the size), each followed by ReLU, closed by a 2x2 stride-2 max pool
that halves the size. The pool pads odd sizes up (Caffe's ceil mode), which
changes nothing at 224 or 32 and lets 28x28 inputs reach a 1x1 map after
five pools. Then flatten, a classifier of FC-ReLU-Dropout blocks, and the
head (softmax is in the loss). Parameter names (conv{stage}_{i}, fc{j}, head)
follow the paper's layer numbering so imported weights map 1:1.

The convolution and the pool are module fields: flax's nn.Conv (with the
activation after it, as the deck's Keras code writes Conv2D(...,
activation="relu")) and nn.max_pool, unless create_model injects the CPU
kernels (vgg_jax/kernels), which compute the same numbers faster there and
apply the ReLU in the convolution's own pass.
"""

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from vgg_jax.models import components

# Channels of each conv, grouped by stage (one stage per max pool).
VGG_STAGES = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),  # A
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),  # B
    "vgg16": ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),  # D
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),  # E
}


def scaled_width(channels: int, multiplier: float) -> int:
  return max(1, int(round(channels * multiplier)))


def min_input_size(stages: Sequence[Sequence[int]]) -> int:
  """Smallest height/width for which every 2x2 pool still sees a 2x2 map.

  With P pools in ceil mode the map before the last pool is
  ceil(size / 2**(P-1)), which is at least 2 iff size > 2**(P-1).
  """
  return 2 ** (len(stages) - 1) + 1


class VGG(nn.Module):
  """A VGG network built from a stage list."""

  stages: Sequence[Sequence[int]]
  num_outputs: int
  classifier_sizes: Sequence[int] = (4096, 4096)
  dropout_rate: float = 0.5
  batch_norm: bool = False
  width_multiplier: float = 1.0
  activation: str = "relu"
  kernel_init: str = "he_normal"
  dtype: Any = jnp.float32
  # Under pmap: the device axis, so BatchNorm averages statistics across it.
  bn_axis_name: Optional[str] = None
  # Called as nn.Conv (plus activation=) and nn.max_pool are; on CPU,
  # create_model passes kernels.conv_and_pool's.
  conv: Callable[..., nn.Module] = components.Conv
  pool: Callable = nn.max_pool

  @nn.compact
  def __call__(self, x, *, train: bool, cut: Optional[str] = None):
    """Logits; or, with cut="conv", the flattened conv features, and with
    cut="fc", the last FC layer's activations (what a frozen base hands a
    new head)."""
    height, width = x.shape[1:3]
    if min(height, width) < min_input_size(self.stages):
      raise ValueError(
          f"input {height}x{width} is too small for {len(self.stages)} 2x2 poolings; "
          f"need at least {min_input_size(self.stages)}x{min_input_size(self.stages)}")
    act = components.activation(self.activation)
    conv = functools.partial(self.conv, kernel_size=(3, 3), padding="SAME",  # zero padding
                             kernel_init=components.kernel_init(self.kernel_init), dtype=self.dtype)
    for s, stage in enumerate(self.stages, start=1):
      for i, channels in enumerate(stage, start=1):
        features, name = scaled_width(channels, self.width_multiplier), f"conv{s}_{i}"
        if self.batch_norm:  # 3x3 convolution, BatchNorm, ReLU.
          x = conv(features, use_bias=False, name=name)(x)
          x = act(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                               axis_name=self.bn_axis_name if train else None,
                               name=f"bn{s}_{i}")(x))
        else:  # 3x3 convolution with ReLU.
          x = conv(features, activation=act, name=name)(x)
      x = self.pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")  # 2x2 max pool
    x = x.reshape((x.shape[0], -1))
    if cut == "conv":
      return x
    return classifier(self, x, train=train, cut=cut)


def classifier(module, x, *, train: bool, start: str = "conv", cut: Optional[str] = None):
  """The FC-ReLU-Dropout blocks and the head, created in `module`'s scope with
  the names fc{j} and head; from the conv features (start="conv") or from the
  last FC activations (start="fc": dropout, then the head only)."""
  act = components.activation(module.activation)
  init = components.kernel_init(module.kernel_init)
  if start == "conv":
    for j, size in enumerate(module.classifier_sizes, start=1):
      x = nn.Dense(size, kernel_init=init, dtype=module.dtype, name=f"fc{j}")(x)
      x = act(x)
      if cut == "fc" and j == len(module.classifier_sizes):
        return x
      x = nn.Dropout(module.dropout_rate, deterministic=not train)(x)
  elif module.classifier_sizes:
    x = nn.Dropout(module.dropout_rate, deterministic=not train)(x)
  return nn.Dense(module.num_outputs, kernel_init=init, dtype=module.dtype, name="head")(x)


class VGGClassifier(nn.Module):
  """A VGG's classifier alone, on cached features: the same parameter names
  (fc{j}, head) as the full VGG, so its params are a subset of the VGG's."""

  num_outputs: int
  classifier_sizes: Sequence[int] = (4096, 4096)
  dropout_rate: float = 0.5
  activation: str = "relu"
  kernel_init: str = "he_normal"
  dtype: Any = jnp.float32
  start: str = "conv"  # conv: features are the flattened conv output; fc: the last FC's.

  @nn.compact
  def __call__(self, x, *, train: bool):
    return classifier(self, x.reshape((x.shape[0], -1)), train=train, start=self.start)
