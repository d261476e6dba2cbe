"""3x3 'SAME' convolution and 2x2 max pool with a choice of lowering.

XLA's CPU convolution is far slower than a matmul of the same FLOPs
(jax-ml/jax#31662, openxla/xla#34273), while on GPU/TPU it maps to cuDNN or
the MXU and is the right choice. So the lowering is a config value:

- xla:     lax.conv_general_dilated and nn.max_pool;
- im2col:  the nine shifted views concatenated on channels, then one matmul
           [N*H*W, 9*Cin] @ [9*Cin, Cout]; the pool is a reshape-and-max;
- shifted: the sum of nine matmuls of shifted views; the same pool;
- auto:    xla on accelerators, im2col on CPU (measured fastest there,
           see benchmarks/vgg_cpu_conv.py).

Every lowering has the same parameters as flax.linen.Conv (kernel
[3, 3, Cin, Cout], bias [Cout]) under the same names, so checkpoints and
imported weights work with any of them.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_LOWERINGS = ("auto", "xla", "im2col", "shifted")


def resolve(lowering: str) -> str:
  if lowering == "auto":
    return "im2col" if jax.default_backend() == "cpu" else "xla"
  return lowering


def _shifted_views(x):
  """The nine [N, H, W, C] views of the zero-padded input, row-major over (di, dj)."""
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return [padded[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)]


def conv3x3(x, kernel, lowering: str):
  """SAME 3x3 convolution, stride 1, NHWC x HWIO -> NHWC."""
  lowering = resolve(lowering)
  if lowering == "xla":
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  cin, cout = kernel.shape[2:]
  views = _shifted_views(x)
  if lowering == "im2col":
    patches = jnp.concatenate(views, axis=-1)  # Channel order (di, dj, c) = kernel's.
    return patches @ kernel.reshape(9 * cin, cout)
  if lowering == "shifted":
    taps = kernel.reshape(9, cin, cout)
    return sum(v @ taps[t] for t, v in enumerate(views))
  raise ValueError(f"unknown conv lowering {lowering!r}")


def _windows(x):
  """[n, h, w, c] (h, w even) -> [n, h/2, w/2, c, 4], each 2x2 window row-major."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // 2, 2, w // 2, 2, c)
  return x.transpose(0, 1, 3, 5, 2, 4).reshape(n, h // 2, w // 2, c, 4)


def _unwindows(g, shape):
  n, h, w, c = shape
  g = g.reshape(n, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
  return g.reshape(shape)


@jax.custom_vjp
def _reshape_pool(x):
  return _windows(x).max(axis=-1)


def _reshape_pool_fwd(x):
  windows = _windows(x)
  return windows.max(axis=-1), (jnp.argmax(windows, axis=-1), x.shape)


def _reshape_pool_bwd(residuals, g):
  # The gradient goes to the first maximum of each window (what reduce_window
  # does), chosen in the forward pass. Re-deriving it in the backward pass by
  # comparing against a recomputed input failed when XLA:CPU recomputed that
  # input with different rounding (under jax_disable_most_optimizations).
  argmax, shape = residuals
  onehot = jax.nn.one_hot(argmax, 4, dtype=g.dtype)
  return (_unwindows(onehot * g[..., None], shape),)


_reshape_pool.defvjp(_reshape_pool_fwd, _reshape_pool_bwd)


def max_pool2x2(x, lowering: str):
  """2x2 stride-2 max pool; odd sizes are padded up (ceil mode).

  The matmul lowerings pool even sizes by reshape-and-max with the argmax
  kept for the backward pass, which XLA:CPU runs faster than
  reduce_window's select-and-scatter. Odd sizes use reduce_window (padding
  with -inf for the reshape got wrong gradients under jit on XLA:CPU).
  """
  n, h, w, c = x.shape
  if resolve(lowering) == "xla" or h % 2 or w % 2:
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
  return _reshape_pool(x)


class Conv3x3(nn.Module):
  """Drop-in for nn.Conv(features, (3, 3), padding='SAME') with a chosen lowering."""

  features: int
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  lowering: str = "auto"

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features),
                        jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    y = conv3x3(x, kernel, self.lowering)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                         jnp.float32).astype(self.dtype)
    return y
