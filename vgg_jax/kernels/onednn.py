"""3x3 SAME convolutions on CPU through oneDNN, called from XLA by FFI.

XLA:CPU's convolutions run far below the matmul peak (jax-ml/jax#31662), and
even the best matmul lowering (conv.py's `blocked`) leaves narrow layers
memory-bound: with 16-64 channels the shifted copies cost more than the
products. PyTorch's CPU convolutions are oneDNN's direct JIT kernels; this
module gives JAX the same kernels, as XLA FFI custom calls (forward with
bias and ReLU fused; backward: input, weight and bias gradients), wrapped in
a custom VJP.

The kernels want activations in a channel-blocked layout, [N, C/cb, H, W, cb]
(cb = 16 with AVX-512, else 8; cb = 1, i.e. NCHW, for the image and widths
that are not multiples of 8; see channel_blocks).
The wrapper converts with XLA transposes, which fuse into the work around
them (the ReLU mask, the pool), so callers see NHWC and HWIO as everywhere
else and the parameters are flax's.

The handlers (vgg_jax/kernels/native/onednn_conv.cc) are compiled on first use with
the system C++ compiler against oneDNN 3.x or 2.x, and cached under
~/.cache/vgg_jax (VGG_JAX_CACHE overrides). oneDNN comes from, in order:
ONEDNN_ROOT (an install prefix), the Python environment (pip's
`onednn-cpu-gomp` and `onednn-devel-cpu-gomp`, which `pip install vgg_jax`
brings on x86-64 Linux), or the system (`apt-get install libdnnl-dev`).
Without a compiler or oneDNN, `available()` is False, says why in
`unavailable_reason()` and in one log line, and the `auto` lowering uses the
blocked matmul lowering instead. VGG_JAX_ONEDNN=0 turns this path off.
"""

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import threading

import jax
import jax.numpy as jnp
import jaxlib

logger = logging.getLogger(__name__)  # Shown by the CLIs (cli.setup_logging).
SOURCE = pathlib.Path(__file__).resolve().parent / "native" / "onednn_conv.cc"
_TARGETS = {
    "vgg_onednn_conv_forward": "VggOnednnConvForward",
    "vgg_onednn_conv_backward": "VggOnednnConvBackward",
    "vgg_onednn_conv_backward_weights": "VggOnednnConvBackwardWeights",
}

_lock = threading.Lock()
_state: dict = {}  # "block": channel block once loaded, or "error": why not.


def cache_dir() -> pathlib.Path:
  root = os.environ.get("VGG_JAX_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vgg_jax")
  return pathlib.Path(root) / "native"


def onednn_root() -> str:
  """The install prefix holding oneDNN's headers and library: ONEDNN_ROOT,
  else this Python environment's (pip's onednn packages put them in
  <prefix>/include and <prefix>/lib), else "" for the system's."""
  root = os.environ.get("ONEDNN_ROOT")
  if root:
    return root
  for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
    if (pathlib.Path(prefix) / "include/oneapi/dnnl/dnnl.hpp").is_file():
      return prefix
  return ""


def _compile_flags():
  flags = ["-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}"]
  root = onednn_root()
  if root:
    flags += [f"-I{root}/include", f"-L{root}/lib", f"-Wl,-rpath,{root}/lib"]
  return flags


def library_path() -> pathlib.Path:
  """Where the compiled handlers for this source, jaxlib and flags live."""
  key = hashlib.sha256()
  for part in (SOURCE.read_bytes(), jaxlib.__version__.encode(),
               " ".join(_compile_flags()).encode(), os.environ.get("CXX", "g++").encode()):
    key.update(part)
  return cache_dir() / f"libvgg_onednn-{key.hexdigest()[:16]}.so"


def _build(path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  # Compile to a private name, then rename: concurrent first uses (test
  # workers, hosts sharing a home directory) never load a half-written file.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
  os.close(fd)
  cmd = [os.environ.get("CXX", "g++"), *_compile_flags(), str(SOURCE), "-o", tmp, "-ldnnl"]
  try:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
      lines = [l for l in result.stderr.splitlines() if "error" in l] or result.stderr.splitlines()
      raise RuntimeError(f"compiling {SOURCE.name} failed: {(lines or ['no output'])[0].strip()}")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _load() -> int:
  path = library_path()
  if not path.exists():
    _build(path)
  try:
    lib = ctypes.CDLL(str(path))
  except OSError:  # A corrupt or truncated cache entry: rebuild it once.
    path.unlink(missing_ok=True)
    _build(path)
    lib = ctypes.CDLL(str(path))
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  lib.VggOnednnChannelBlock.restype = ctypes.c_int
  _state["lib"] = lib
  return int(lib.VggOnednnChannelBlock())


def available() -> bool:
  """Whether the oneDNN convolutions can run here (builds them on first call)."""
  with _lock:
    if not _state:
      if os.environ.get("VGG_JAX_ONEDNN", "1") == "0":
        _state["error"] = "VGG_JAX_ONEDNN=0"
      else:
        try:
          _state["block"] = _load()
        except FileNotFoundError as e:
          compiler = os.environ.get("CXX", "g++")
          _state["error"] = (f"no C++ compiler ({compiler})" if e.filename == compiler
                             else f"{e.strerror}: {e.filename}")
        except (OSError, RuntimeError) as e:
          _state["error"] = str(e).splitlines()[0]
        if "error" in _state:
          logger.info("oneDNN convolutions unavailable (%s); using the blocked matmul "
                       "lowering. Install g++ (and oneDNN: pip install onednn-cpu-gomp "
                       "onednn-devel-cpu-gomp) to enable them.", _state["error"])
    return "block" in _state


def unavailable_reason() -> str:
  return "" if available() else _state["error"]


def channel_blocks(cin: int, cout: int):
  """(input, output) channel blocks for one conv. The JIT kernels want the
  same block on both sides (16 with AVX-512, else 8); mixed blocks fall back
  to oneDNN's reference code. Channels that no block divides (the image) go
  as NCHW (block 1), which the first-layer kernels read."""
  for block in (_state["block"], 8):
    if cin % block == 0 and cout % block == 0:
      return block, block
  out = next((b for b in (_state["block"], 8) if cout % b == 0), 1)
  return 1, out


def implementation(shape, cout: int, kind: str = "forward") -> str:
  """oneDNN's kernel for a conv of an [n, h, w, cin] input, e.g.
  'jit:avx512_core' ('ref:any' is its slow reference code)."""
  if not available():
    return ""
  n, h, w, cin = shape
  buf = ctypes.create_string_buffer(256)
  kinds = {"forward": 0, "backward_data": 1, "backward_weights": 2}
  args = [ctypes.c_int64(v) for v in (n, h, w, cin, cout, *channel_blocks(cin, cout))]
  rc = _state["lib"].VggOnednnImplInfo(*args, kinds[kind], buf, len(buf))
  return buf.value.decode() if rc == 0 else ""


def is_fast(shape, cout: int) -> bool:
  """Whether oneDNN has JIT kernels (not reference loops, 100-1000x slower)
  for this layer's forward and weight gradient, and for its input gradient
  unless the input goes as NCHW (the image, whose gradient training never
  asks for)."""
  return available() and _is_fast(tuple(shape), cout)


@functools.lru_cache(maxsize=None)
def _is_fast(shape, cout: int) -> bool:
  kinds = ["forward", "backward_weights"]
  if channel_blocks(shape[-1], cout)[0] != 1:
    kinds.append("backward_data")
  for kind in kinds:
    impl = implementation(shape, cout, kind)
    if not impl or impl.startswith("ref"):
      return False
  return True


def to_blocked(x, cb: int):
  """[n, h, w, c] -> [n, c/cb, h, w, cb], oneDNN's channel-blocked layout."""
  n, h, w, c = x.shape
  return x.reshape(n, h, w, c // cb, cb).transpose(0, 3, 1, 2, 4)


def from_blocked(xb):
  n, k, h, w, cb = xb.shape
  return xb.transpose(0, 2, 3, 1, 4).reshape(n, h, w, k * cb)


def _blocked_shape(n, h, w, c, cb):
  return jax.ShapeDtypeStruct((n, c // cb, h, w, cb), jnp.float32)


def _forward(xb, kernel, bias, relu: bool, cb_out: int):
  n, _, h, w, _ = xb.shape
  call = jax.ffi.ffi_call("vgg_onednn_conv_forward",
                          _blocked_shape(n, h, w, kernel.shape[-1], cb_out),
                          vmap_method="sequential")
  return call(xb, kernel, bias, relu=relu)


def _backward(xb, gb, kernel, want_dx: bool):
  """(dx in xb's layout or None, dkernel, dbias)."""
  grads = (jax.ShapeDtypeStruct(kernel.shape, jnp.float32),
           jax.ShapeDtypeStruct(kernel.shape[-1:], jnp.float32))
  if not want_dx:
    call = jax.ffi.ffi_call("vgg_onednn_conv_backward_weights", grads, vmap_method="sequential")
    return (None,) + tuple(call(xb, gb))
  call = jax.ffi.ffi_call("vgg_onednn_conv_backward",
                          (jax.ShapeDtypeStruct(xb.shape, jnp.float32),) + grads,
                          vmap_method="sequential")
  return tuple(call(xb, gb, kernel))


def _apply(x, kernel, bias, relu: bool):
  """(y in NHWC; x and y in the kernels' layout)."""
  cb_in, cb_out = channel_blocks(*kernel.shape[2:])
  xb = to_blocked(x, cb_in)
  yb = _forward(xb, kernel, bias, relu, cb_out)
  return from_blocked(yb), xb, yb


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv(x, kernel, bias, relu: bool):
  return _apply(x, kernel, bias, relu)[0]


def _conv_fwd(x, kernel, bias, relu):
  # symbolic_zeros: each primal comes wrapped with whether it is being
  # differentiated; no input gradient is computed for the image.
  y, xb, yb = _apply(x.value, kernel.value, bias.value, relu)
  return y, (xb, kernel.value, yb if relu else None, x.perturbed)


def _conv_bwd(relu, residuals, g):
  xb, kernel, yb, want_dx = residuals
  gb = to_blocked(g, channel_blocks(*kernel.shape[2:])[1])
  if relu:
    gb = jnp.where(yb > 0, gb, jnp.zeros_like(gb))
  dxb, dkernel, dbias = _backward(xb, gb, kernel, want_dx)
  return (None if dxb is None else from_blocked(dxb)), dkernel, dbias


_conv.defvjp(_conv_fwd, _conv_bwd, symbolic_zeros=True)


def conv(x, kernel, bias=None, *, relu: bool = False):
  """relu?(conv3x3_same(x, kernel) + bias), float32 NHWC x HWIO, via oneDNN."""
  if not available():
    raise RuntimeError(f"oneDNN convolutions unavailable: {unavailable_reason()}")
  if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
    raise TypeError(f"the oneDNN lowering is float32 only, got {x.dtype} and {kernel.dtype}")
  if bias is None:
    bias = jnp.zeros(kernel.shape[-1], jnp.float32)
  return _conv(x, kernel, bias.astype(jnp.float32), relu)
