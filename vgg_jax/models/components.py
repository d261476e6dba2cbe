"""Building blocks chosen by config name: activations, kernel initializers,
compute dtypes; and the convolution VGG draws by default."""

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": nn.relu,
    "leaky_relu": nn.leaky_relu,
    "elu": nn.elu,
    "gelu": nn.gelu,
}

KERNEL_INITS = {
    # U[-1/sqrt(fan_in), 1/sqrt(fan_in)]: the "classic" small init of the
    # sigmoid era (and torch's nn.Linear default); variance 1/(3 fan_in).
    "classic_uniform": nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
    "glorot_uniform": nn.initializers.glorot_uniform(),
    "glorot_normal": nn.initializers.glorot_normal(),
    "he_normal": nn.initializers.he_normal(),
    "he_uniform": nn.initializers.he_uniform(),
    "lecun_normal": nn.initializers.lecun_normal(),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def activation(name: str):
  return ACTIVATIONS[name]


def kernel_init(name: str) -> jax.nn.initializers.Initializer:
  return KERNEL_INITS[name]


class Conv(nn.Conv):
  """flax's nn.Conv followed by an optional activation: the deck's
  Conv2D(64, (3, 3), activation="relu", padding="same"). The CPU kernels
  (vgg_jax.kernels.Conv3x3) take the same call and apply a ReLU in the
  convolution's own pass over memory."""

  activation: Optional[Callable] = None

  def __call__(self, inputs):
    y = super().__call__(inputs)
    return y if self.activation is None else self.activation(y)
