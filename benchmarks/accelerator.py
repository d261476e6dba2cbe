"""Training throughput and MFU on whatever JAX runs on: GPU, TPU or CPU.

    python -m benchmarks.accelerator                    # VGG16 224x224, bf16 and f32
    python -m benchmarks.accelerator --smoke            # seconds on a CPU (the suite runs it)

Prints, per form (jit on one device, jit data-parallel over every device,
pmap, and a vmapped sweep of small MLPs): images/s, model FLOPs per step
from XLA's cost analysis of the compiled step, and MFU, those FLOPs per
second against the device's peak for that dtype. Peaks are the vendors'
dense figures (a small table below); on a CPU, or a device not in the table,
the peak is measured as the float32 matmul rate (benchmarks.common), and the
MFU is against that. The conv lowering is XLA's everywhere (its convolutions
are what XLA counts: custom calls, like the CPU oneDNN path, count 0).
"""

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense peak FLOP/s per device: (bfloat16, float32 without TF32), by the
# device_kind JAX reports (matched by prefix, case-insensitive).
PEAKS = {
    "nvidia h200": (989e12, 67e12),
    "nvidia h100": (989e12, 67e12),  # SXM; PCIe is 756e12, 51e12.
    "nvidia a100": (312e12, 19.5e12),
    "nvidia l4": (121e12, 30e12),
    "tpu v6": (918e12, None),
    "tpu v5p": (459e12, None),
    "tpu v5 lite": (197e12, None),
    "tpu v5e": (197e12, None),
    "tpu v4": (275e12, None),
}


def device_peak(dtype: str):
  """(peak FLOP/s per device, where it comes from)."""
  kind = jax.devices()[0].device_kind.lower()
  for prefix, (bf16, f32) in PEAKS.items():
    if kind.startswith(prefix):
      peak = bf16 if dtype == "bfloat16" else f32
      if peak:
        return peak, f"{jax.devices()[0].device_kind} datasheet"
  from benchmarks.common import matmul_peak_flops  # pylint: disable=g-import-not-at-top
  return matmul_peak_flops(512 if SMOKE else 2048)["peak"], "measured float32 matmul"


SMOKE = False


def vgg_config(dtype: str, size: int, width: float):
  from vgg_jax import config_lib  # pylint: disable=g-import-not-at-top
  from vgg_jax.models import vgg as vgg_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.dtype = dtype
  config.model.name = "vgg16"
  config.model.width_multiplier = width
  config.model.classifier_sizes = (vgg_lib.scaled_width(4096, width),) * 2
  config.model.conv_lowering = "xla"
  config.optimizer.name, config.optimizer.learning_rate = "momentum", 0.01
  return config


def train_step_parts(config, image_shape, classes: int):
  from vgg_jax import models, optim, training  # pylint: disable=g-import-not-at-top
  model = models.create_model(config.model, classes, dtype=config.dtype)
  tx, shape = optim.create_optimizer(config.optimizer, 1000)
  state = training.create_train_state(jax.random.PRNGKey(0), model, tx, image_shape)
  step = functools.partial(training.train_step, head=models.get_head("category"),
                           preprocess=training.make_preprocess((0.5,), (0.25,),
                                                               dtype=jnp.dtype(config.dtype)),
                           lr_multiplier=shape)
  return state, step


def batch_of(n: int, image_shape, classes: int):
  rng = np.random.default_rng(0)
  return {"image": rng.integers(0, 256, (n, *image_shape), np.uint8),
          "label": rng.integers(0, classes, n).astype(np.int32)}


def timed(fn, state, batch, steps: int):
  """(seconds per step, final state) after two warm-up steps (the second
  call can compile again: its state comes back committed to the devices)."""
  for _ in range(2):
    state, metrics = fn(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = fn(state, batch)
  jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / steps, state


def flops_per_step(jitted, *args) -> float:
  from vgg_jax.training import summary  # pylint: disable=g-import-not-at-top
  return summary.flops_of(jitted.lower(*args).compile())


def jit_form(config, image_shape, classes, per_device_batch, steps, devices):
  """jit over `devices` (batch sharded; params replicated)."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  state, step = train_step_parts(config, image_shape, classes)
  mesh = Mesh(np.array(devices), ("data",))
  batch = jax.device_put(batch_of(per_device_batch * len(devices), image_shape, classes),
                         NamedSharding(mesh, P("data")))
  state = jax.device_put(state, NamedSharding(mesh, P()))
  jitted = jax.jit(step, donate_argnums=0)
  # XLA's count is for one device's part of the partitioned program.
  flops = flops_per_step(jitted, state, batch) * len(devices)
  seconds, _ = timed(jitted, state, batch, steps)
  return len(batch["label"]) / seconds, flops, seconds


def pmap_form(config, image_shape, classes, per_device_batch, steps, devices):
  from vgg_jax import parallel  # pylint: disable=g-import-not-at-top
  state, step = train_step_parts(config, image_shape, classes)
  n = len(devices)
  p_step = jax.pmap(functools.partial(step, axis_name="batch"), axis_name="batch",
                    devices=devices, donate_argnums=0)
  state = parallel.replicate_for_pmap(state, n)
  batch = parallel.split_for_pmap(batch_of(per_device_batch * n, image_shape, classes), n)
  flops = flops_per_step(p_step, state, batch) * n  # Per-device program, n copies.
  seconds, _ = timed(p_step, state, batch, steps)
  return per_device_batch * n / seconds, flops, seconds


def mlp_sweep_form(dtype, members: int, batch: int, steps: int):
  """K small MLPs (64-256-256-10 on 8x8 digits) in one vmapped step."""
  from vgg_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.dtype = dtype
  state, step = train_step_parts(config, (8, 8, 1), 10)
  states = jax.tree.map(lambda x: jnp.stack([x] * members), state)
  vstep = jax.jit(jax.vmap(step, in_axes=(0, None)), donate_argnums=0)
  data = jax.device_put(batch_of(batch, (8, 8, 1), 10))
  flops = flops_per_step(vstep, states, data)
  seconds, _ = timed(vstep, states, data, steps)
  return batch * members / seconds, flops, seconds


def main(argv=None):
  global SMOKE
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes (VGG16 at 1/16 width, 32x32, batch 4): a CPU check")
  parser.add_argument("--steps", type=int, default=0, help="timed steps per row")
  parser.add_argument("--batch", type=int, default=0, help="per-device batch")
  parser.add_argument("--dtypes", default="bfloat16,float32")
  args = parser.parse_args(argv)
  SMOKE = args.smoke
  size, width = (32, 1 / 16) if SMOKE else (224, 1.0)
  batch = args.batch or (4 if SMOKE else 64)
  steps = args.steps or (2 if SMOKE else 20)
  classes = 1000
  devices = jax.devices()
  print(f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), jax "
        f"{jax.__version__}; VGG16 at {size}x{size}x3, width x{width:g}, per-device batch "
        f"{batch}, SGD+momentum, {steps} timed steps per row")
  print(f"{'form':<30} {'dtype':<9} {'images/s':>10} {'GFLOP/step':>11} {'TFLOP/s':>8} "
        f"{'peak TFLOP/s':>13} {'MFU':>6}")
  for dtype in args.dtypes.split(","):
    peak, source = device_peak(dtype)
    config = vgg_config(dtype, size, width)
    forms = [("jit, 1 device", functools.partial(jit_form, devices=devices[:1])),
             (f"jit, {len(devices)} devices", functools.partial(jit_form, devices=devices)),
             (f"pmap, {len(devices)} devices", functools.partial(pmap_form, devices=devices))]
    if len(devices) == 1:
      forms = forms[:1] + forms[2:]
    for name, form in forms:
      images, flops, seconds = form(config, (size, size, 3), classes, batch, steps)
      _row(name, dtype, images, flops, seconds, peak * (1 if "1 device" in name else
                                                        len(devices)))
    members = 8 if SMOKE else 64
    images, flops, seconds = mlp_sweep_form(dtype, members, 128, steps * 5)
    _row(f"vmap sweep, {members} MLPs, 1 device", dtype, images, flops, seconds, peak)
    print(f"  ({dtype} peak: {peak / 1e12:.3g} TFLOP/s per device, {source})")
  sys.stdout.flush()


def _row(name, dtype, images, flops, seconds, peak):
  achieved = flops / seconds
  print(f"{name:<30} {dtype:<9} {images:>10.1f} {flops / 1e9:>11.3f} {achieved / 1e12:>8.3f} "
        f"{peak / 1e12:>13.3g} {achieved / peak:>6.1%}")


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
