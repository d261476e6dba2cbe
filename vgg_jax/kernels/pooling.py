"""2x2 stride-2 max pooling, VGG's downsampling: halves the image, keeps the
strongest response of each 2x2 window.

Two implementations with the same result and gradient: XLA's reduce_window
(nn.max_pool), and a reshape-and-max that keeps each window's argmax for the
backward pass, which XLA:CPU runs faster than reduce_window's
select-and-scatter. The conv lowering picks between them (conv.resolve).
`max_pool` has nn.max_pool's signature, so the model can take either.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgg_jax.kernels.conv import resolve


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


def max_pool(x, window_shape, strides=None, padding="VALID", *, lowering: str = "auto"):
  """nn.max_pool, with 2x2 stride-2 pools of even sizes as a reshape-and-max
  under the matmul lowerings.

  The reshape-and-max keeps each window's argmax for the backward pass,
  which XLA:CPU runs faster than reduce_window's select-and-scatter. Odd
  sizes (padded up by padding="SAME", Caffe's ceil mode) use reduce_window:
  padding with -inf for the reshape got wrong gradients under jit on XLA:CPU.
  """
  _, h, w, _ = x.shape
  pool2x2 = tuple(window_shape) == (2, 2) and tuple(strides or (1, 1)) == (2, 2)
  if not pool2x2 or resolve(lowering) == "xla" or h % 2 or w % 2:
    return nn.max_pool(x, window_shape, strides=strides, padding=padding)
  return _reshape_pool(x)
