"""3x3 'SAME' convolutions on CPU as matmuls (2x2 max pooling: pooling.py).

The lowerings (model.conv_lowering), each with flax.linen.Conv's parameters
(kernel [3, 3, Cin, Cout], bias [Cout]) under the same names, so checkpoints
and imported weights work with any of them:

- xla:     lax.conv_general_dilated (what nn.Conv runs);
- im2col:  the nine shifted views concatenated on channels, then one matmul;
- shifted: the sum of nine matmuls of shifted views;
- blocked: matmuls over cache-sized blocks of the batch, with a custom VJP
           that never builds a patch matrix for the whole batch;
- onednn:  oneDNN's direct convolution kernels through XLA's FFI (onednn.py);
- auto:    xla on accelerators; on CPU onednn where it is available and has
           JIT kernels for the layer, else blocked.

Why XLA:CPU's own convolution is not used, what was measured and which
XLA flags were tried: docs/cpu_convolutions.md.
"""

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgg_jax.kernels import onednn

CONV_LOWERINGS = ("auto", "xla", "im2col", "shifted", "blocked", "onednn")


# On CPU, `auto` gives wide layers on images under this many pixels (2x2,
# 1x1) to the blocked lowering even where oneDNN is available: five ninths
# of a direct kernel's products there multiply the zero padding, which
# blocked's valid-taps matmuls skip (forward+backward at batch 128, 2x2x512:
# 11 vs 22 ms per layer). Narrower layers stay on oneDNN: at 2x2x128 blocked
# was faster alone (1.3 vs 1.9 ms) but the whole 1/4-width step ran slower
# with it, the hand-offs between oneDNN's and XLA's threads costing more
# than the layer (benchmarks/vgg_cpu_conv.py, auto vs onednn rows).
ONEDNN_MIN_PIXELS = 5
ONEDNN_SMALL_IMAGE_MAX_WEIGHTS = 256 * 256  # cin * cout


def resolve(lowering: str, dtype=jnp.float32, shape=None, cout=None) -> str:
  """The lowering `auto` stands for here, for this compute dtype and (when
  given) a layer with this [n, h, w, cin] input and cout output channels:
  onednn where oneDNN has JIT kernels for the layer, else blocked."""
  if lowering == "auto":
    if jax.default_backend() != "cpu":
      return "xla"
    if dtype != jnp.float32 or not onednn.available():
      return "blocked"
    if shape is not None and cout is not None:
      _, h, w, cin = shape
      wide_and_tiny = h * w < ONEDNN_MIN_PIXELS and cin * cout >= ONEDNN_SMALL_IMAGE_MAX_WEIGHTS
      if wide_and_tiny or not onednn.is_fast(shape, cout):
        return "blocked"
    return "onednn"
  return lowering


def conv3x3(x, kernel, lowering: str):
  """SAME 3x3 convolution, stride 1, NHWC x HWIO -> NHWC."""
  lowering = resolve(lowering, x.dtype, x.shape, kernel.shape[-1])
  if lowering == "xla":
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if lowering == "blocked":
    return blocked_conv(x, kernel, None, relu=False)
  if lowering == "onednn":
    return onednn.conv(x, kernel)
  n, h, w, cin = x.shape
  cout = kernel.shape[-1]
  if lowering == "im2col":  # Channel order (di, dj, c) = the kernel's.
    return (_gather_taps(x) @ kernel.reshape(9 * cin, cout)).reshape(n, h, w, cout)
  if lowering == "shifted":
    taps = kernel.reshape(9, cin, cout)
    return sum(v @ taps[t] for t, v in enumerate(_shifted(x)))
  raise ValueError(f"unknown conv lowering {lowering!r}")


# The blocked lowering works on batch blocks whose largest intermediate (rows x
# nine taps x channels, float32) stays under this many bytes, so that it is
# written and read back in cache rather than in DRAM. XLA:CPU's copies run at
# a few GB/s here, and whole-batch patch matrices (300 MB for VGG's first
# block at batch 128) made im2col memory-bound. Tuned on a 2-core EPYC with a
# 32 MB L3 (benchmarks/vgg_cpu_conv.py --block_mb sweeps it).
BLOCK_BYTES = 8 << 20
# Each block also adds its weight gradient [9*cin, cout] into a running sum;
# blocks of at least this many rows per weight row keep that add small.
ROWS_PER_WEIGHT_ROW = 4


def block_size(shape, cout: int) -> int:
  """Images per block for an [n, h, w, cin] input: the largest divisor of n
  that fits BLOCK_BYTES, unless that is under half of what fits (a prime n);
  then the batch is zero-padded to a multiple of what fits."""
  n, h, w, cin = shape
  if _method(shape, cout) == "valid":  # Only the taps' valid rectangles.
    pixels = sum((r1 - r0) * (c1 - c0) for _, _, r0, r1, c0, c1 in _tap_rects(h, w))
    fits = BLOCK_BYTES // (pixels * cout * 4)
  else:
    fits = BLOCK_BYTES // (h * w * 9 * min(cin, cout) * 4)
    fits = max(fits, -(-ROWS_PER_WEIGHT_ROW * max(cin, cout) // (h * w)))
  fits = max(1, min(n, fits))
  divisor = max(d for d in range(1, fits + 1) if n % d == 0)
  return divisor if 2 * divisor >= fits else fits


def _shifted(x, mirrored: bool = False):
  """The nine views v_t[p] = x[p + offset_t], or x[p - offset_t] if mirrored
  (zero outside), each as slice-then-pad so that XLA fuses it into its
  consumer rather than materializing a padded copy."""
  h, w = x.shape[1:3]
  views = []
  for i in range(3):
    for j in range(3):
      di, dj = (1 - i, 1 - j) if mirrored else (i - 1, j - 1)
      part = x[:, max(di, 0):h + min(di, 0), max(dj, 0):w + min(dj, 0)]
      views.append(jnp.pad(part, ((0, 0), (max(-di, 0), max(di, 0)),
                                  (max(-dj, 0), max(dj, 0)), (0, 0))))
  return views


def _gather_taps(x, mirrored: bool = False):
  """im2col: [b, h, w, c] -> [b*h*w, 9*c], row p = (v_t[p] for each tap t)."""
  n, h, w, c = x.shape
  return jnp.concatenate(_shifted(x, mirrored), axis=-1).reshape(n * h * w, 9 * c)


def _scatter_taps(z, shape, mirrored: bool = False):
  """The adjoint of _gather_taps with the other mirroring: [b*h*w, 9*c] ->
  [b, h, w, c], out[p] = sum over taps t of z[p + offset_t, t] (or p - ...)."""
  n, h, w, c = shape
  z = z.reshape(n, h, w, 9, c)
  return sum(_shifted(z[..., t, :], mirrored)[t] for t in range(9))


def _blocks(x, size):
  """[n, ...] -> [n_blocks, size, ...], zero-padding n up to a multiple of size."""
  extra = -x.shape[0] % size
  if extra:
    x = jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape((-1, size) + x.shape[1:])


def _over_blocks(fn, carry, *arrays):
  """lax.scan of fn over the blocks, or a plain call when there is one."""
  if arrays[0].shape[0] == 1:
    carry, out = fn(carry, tuple(a[0] for a in arrays))
    return carry, jax.tree.map(lambda o: o[None], out)
  return jax.lax.scan(fn, carry, arrays)


def _bias_act(y, bias, relu: bool):
  if bias is not None:
    y = y + bias
  return jax.nn.relu(y) if relu else y


def _transposed(a):
  # A materialized transpose: XLA:CPU ran a transposed-operand dot 1.2-1.5x
  # slower than the plain dot after this (small, in-cache) copy.
  return jax.lax.optimization_barrier(a.T)


# Two orientations of the same convolution; each keeps its nine-tap
# intermediate at 9 x the smaller of cin and cout:
# - "in" (cin < cout): im2col rows P = gather(x), y = P @ K; backward
#   dK = P^T @ g, dx = scatter(g @ K^T) with the taps mirrored.
# - "out" (cout <= cin): y[p] = sum_t (x @ k_t)[p + offset_t], one matmul of x
#   against all taps and a scatter of the nine output planes; backward
#   dZ = gather(g) mirrored, dT = x^T @ dZ, dx = dZ @ T^T.


# - "valid" (images of at most VALID_TAPS_MAX_PIXELS): at 4x4 a third of the
#   nine-tap products fall on the zero padding, at 2x2 five ninths. Here
#   each tap multiplies only the input rectangle whose shifted image lands
#   inside: nine matmuls straight on the HWIO kernel's [cin, cout] slices,
#   and in the backward pass nine for dk and nine for dx. Forward+backward
#   at batch 128: 60-65 vs 89 ms ("out") at 4x4x512, 12 vs 20 at 2x2x512;
#   35 vs 51 ("in") at 4x4 256->512; at 8x8x256 (a sixth on the padding) it
#   tied "out".
VALID_TAPS_MAX_PIXELS = 16


def _method(shape, cout: int) -> str:
  _, h, w, cin = shape
  if h * w <= VALID_TAPS_MAX_PIXELS:
    return "valid"
  return "in" if cin < cout else "out"


def _tap_rects(h: int, w: int):
  """(i, j, output rows r0:r1, cols c0:c1) of each tap whose shifted input
  rectangle x[r0+i-1:r1+i-1, c0+j-1:c1+j-1] is not empty."""
  rects = []
  for i in range(3):
    for j in range(3):
      r0, r1, c0, c1 = max(0, 1 - i), h - max(0, i - 1), max(0, 1 - j), w - max(0, j - 1)
      if r1 > r0 and c1 > c0:
        rects.append((i, j, r0, r1, c0, c1))
  return rects


def _tap_input(x, i, j, r0, r1, c0, c1):
  return x[:, r0 + i - 1:r1 + i - 1, c0 + j - 1:c1 + j - 1].reshape(-1, x.shape[-1])


def _pad_to(part, shape, r0, r1, c0, c1):
  n, h, w, _ = shape
  part = part.reshape(n, r1 - r0, c1 - c0, -1)
  return jnp.pad(part, ((0, 0), (r0, h - r1), (c0, w - c1), (0, 0)))


def _valid_fwd_block(xb, kernel):
  n, h, w, _ = xb.shape
  parts = [_pad_to(_tap_input(xb, i, j, *rect) @ kernel[i, j], (n, h, w, None), *rect)
           for i, j, *rect in _tap_rects(h, w)]
  return sum(parts)


def _valid_bwd_block(xb, gb, kernel_t):
  """(dk [3, 3, cin, cout] float32, dx or None when kernel_t is None)."""
  n, h, w, cin = xb.shape
  cout = gb.shape[-1]
  dk = [[jnp.zeros((cin, cout), jnp.float32) for _ in range(3)] for _ in range(3)]
  dx = []
  for i, j, r0, r1, c0, c1 in _tap_rects(h, w):
    g = gb[:, r0:r1, c0:c1].reshape(-1, cout)
    # No materialized transpose here: XLA:CPU's copy of a sliced, transposed
    # rectangle ran at ~0.3 GB/s (2 ms for [128, 1152]), slower than the dot.
    x_t = _tap_input(xb, i, j, r0, r1, c0, c1)
    dk[i][j] = jnp.matmul(x_t.T, g, preferred_element_type=jnp.float32)
    if kernel_t is not None:
      # The mirrored rectangle: the input pixels this tap's outputs came from.
      dx.append(_pad_to(g @ kernel_t[i, j], (n, h, w, None),
                        r0 + i - 1, r1 + i - 1, c0 + j - 1, c1 + j - 1))
  return jnp.stack([jnp.stack(row) for row in dk]), (sum(dx) if dx else None)


def _weight_matrix(kernel, method: str, for_dx: bool = False):
  """The method's weight matrix (or the one its dx matmul uses),
  materialized once outside the block loop: left to XLA, the transposes were
  redone in every iteration."""
  cin, cout = kernel.shape[2:]
  if method == "valid":  # The kernel's own [cin, cout] slices, or [cout, cin].
    return jax.lax.optimization_barrier(kernel.transpose(0, 1, 3, 2)) if for_dx else kernel
  if method == "in":
    matrix = kernel.reshape(9 * cin, cout)
    return _transposed(matrix) if for_dx else matrix
  if for_dx:  # [9*cout, cin]: rows (tap, out channel).
    return jax.lax.optimization_barrier(kernel.transpose(0, 1, 3, 2).reshape(9 * cout, cin))
  return jax.lax.optimization_barrier(kernel.transpose(2, 0, 1, 3).reshape(cin, 9 * cout))


def _conv_fwd_block(xb, weights, bias, relu, method: str):
  size, h, w, cin = xb.shape
  if method == "valid":
    y = _valid_fwd_block(xb, weights)
  elif method == "in":
    y = (_gather_taps(xb) @ weights).reshape(size, h, w, -1)
  else:
    cout = weights.shape[1] // 9
    y = _scatter_taps(xb.reshape(size * h * w, cin) @ weights, (size, h, w, cout))
  return _bias_act(y, bias, relu)


def _conv_bwd_block(xb, gb, dx_weights, method: str):
  """(d weights in float32, laid out as the method's weight matrix; dx or
  None when dx_weights is None)."""
  size, h, w, cin = xb.shape
  rows = size * h * w
  if method == "valid":
    return _valid_bwd_block(xb, gb, dx_weights)
  if method == "in":
    g = gb.reshape(rows, -1)
    dweights = jnp.matmul(_transposed(_gather_taps(xb)), g, preferred_element_type=jnp.float32)
    dx = None
    if dx_weights is not None:
      dx = _scatter_taps(g @ dx_weights, (size, h, w, cin), mirrored=True)
  else:
    dz = _gather_taps(gb, mirrored=True)
    dweights = jnp.matmul(_transposed(xb.reshape(rows, cin)), dz,
                          preferred_element_type=jnp.float32)
    dx = None if dx_weights is None else (dz @ dx_weights).reshape(size, h, w, cin)
  return dweights, dx


def _weights_to_kernel(dweights, kernel, method: str):
  cin, cout = kernel.shape[2:]
  if method in ("in", "valid"):
    return dweights.reshape(kernel.shape).astype(kernel.dtype)
  return dweights.reshape(cin, 3, 3, cout).transpose(1, 2, 0, 3).astype(kernel.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _blocked_conv(x, kernel, bias, relu: bool):
  return _blocked_forward(x, kernel, bias, relu)


def _blocked_forward(x, kernel, bias, relu):
  n = x.shape[0]
  cout = kernel.shape[-1]
  size = block_size(x.shape, cout)
  method = _method(x.shape, cout)
  weights = _weight_matrix(kernel, method)

  def block(carry, xb):
    return carry, _conv_fwd_block(xb[0], weights, bias, relu, method)

  _, y = _over_blocks(block, None, _blocks(x, size))
  return y.reshape((-1,) + y.shape[2:])[:n]


def _blocked_conv_fwd(x, kernel, bias, relu):
  # symbolic_zeros: the primals come wrapped, with whether each is being
  # differentiated; dx is skipped for an input that is not (the image).
  bias = None if bias is None else bias.value
  y = _blocked_forward(x.value, kernel.value, bias, relu)
  residuals = (x.value, kernel.value, bias, y if relu else None, x.perturbed)
  return y, residuals


def _blocked_conv_bwd(relu, residuals, g):
  x, kernel, bias, y, want_dx = residuals
  n = x.shape[0]
  if relu:
    g = jnp.where(y > 0, g, jnp.zeros_like(g))
  size = block_size(x.shape, kernel.shape[-1])

  cin, cout = kernel.shape[2:]
  method = _method(x.shape, cout)
  dx_weights = _weight_matrix(kernel, method, for_dx=True) if want_dx else None

  def block(dweights, blocks):
    step_dweights, dx = _conv_bwd_block(*blocks, dx_weights, method)
    return dweights + step_dweights, dx

  shape = {"in": (9 * cin, cout), "out": (cin, 9 * cout), "valid": kernel.shape}[method]
  dweights, dx = _over_blocks(block, jnp.zeros(shape, jnp.float32), _blocks(x, size),
                              _blocks(g, size))
  if want_dx:
    dx = dx.reshape((-1,) + x.shape[1:])[:n]
  dbias = None if bias is None else g.sum((0, 1, 2)).astype(bias.dtype)
  return dx, _weights_to_kernel(dweights, kernel, method), dbias


_blocked_conv.defvjp(_blocked_conv_fwd, _blocked_conv_bwd, symbolic_zeros=True)


def blocked_conv(x, kernel, bias=None, *, relu: bool = False):
  """The blocked lowering of relu?(conv3x3(x, kernel) + bias)."""
  return _blocked_conv(x, kernel, bias, relu)


class Conv3x3(nn.Module):
  """nn.Conv(features, (3, 3), padding="SAME") through a chosen lowering, with
  an optional activation after it (models.components.Conv's call): the same
  parameters, and the same numbers up to float rounding. The blocked and
  onednn lowerings apply a ReLU (and its gradient) in the passes they make
  anyway; an XLA op between two oneDNN calls cost 13% of the 1/4-width step
  (docs/cpu_convolutions.md)."""

  features: int
  kernel_size: Sequence[int] = (3, 3)
  padding: str = "SAME"
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  lowering: str = "auto"
  activation: Optional[Callable] = None

  @nn.compact
  def __call__(self, x):
    if tuple(self.kernel_size) != (3, 3) or self.padding != "SAME":
      raise ValueError(f"the {self.lowering} lowering has only 3x3 'SAME' convolutions, got "
                       f"kernel_size={tuple(self.kernel_size)} padding={self.padding!r}")
    kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features),
                        jnp.float32)
    bias: Optional[jax.Array] = None
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
      bias = bias.astype(self.dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    lowering = resolve(self.lowering, self.dtype, x.shape, self.features)
    relu = self.activation is jax.nn.relu
    if lowering == "onednn":
      y = onednn.conv(x, kernel, bias, relu=relu)
    elif lowering == "blocked":
      y = blocked_conv(x, kernel, bias, relu=relu)
    else:
      y = _bias_act(conv3x3(x, kernel, lowering), bias, relu)
    return y if relu or self.activation is None else self.activation(y)
