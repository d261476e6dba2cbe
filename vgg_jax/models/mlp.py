"""A multilayer perceptron: the network of the sigmoid-vs-ReLU story.

Depth and width, activation, init and dropout are all config values, so the
vanishing-gradient ablation is one sweep over this module.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from vgg_jax.models import components


class MLP(nn.Module):
  """Flatten -> Dropout -> [Dense -> activation -> Dropout] x len(hidden_sizes) -> Dense."""

  hidden_sizes: Sequence[int]
  num_outputs: int
  activation: str = "relu"
  kernel_init: str = "lecun_normal"
  dropout_rate: float = 0.0
  input_dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    act = components.activation(self.activation)
    init = components.kernel_init(self.kernel_init)
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.input_dropout_rate, deterministic=not train)(x)
    for i, width in enumerate(self.hidden_sizes):
      x = nn.Dense(width, kernel_init=init, dtype=self.dtype, name=f"hidden_{i}")(x)
      x = act(x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_outputs, kernel_init=init, dtype=self.dtype, name="output")(x)
