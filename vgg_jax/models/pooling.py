"""2x2 stride-2 max pooling, VGG's downsampling: halves the image, keeps the
strongest response of each 2x2 window.

Two implementations with the same result and gradient: XLA's reduce_window
(nn.max_pool), and a reshape-and-max that keeps each window's argmax for the
backward pass, which XLA:CPU runs faster than reduce_window's
select-and-scatter. The conv lowering picks between them (conv.resolve).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgg_jax.models.conv import resolve


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
