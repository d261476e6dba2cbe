"""VGG16 training speed on CPU per conv lowering, next to PyTorch eager.

The VGG16-CIFAR shape: 32x32x1 input, channels 64-128-256-512-512 (VGG16's
13 convs), one 512 FC, 10 classes, batch 128, SGD + momentum, float32, one
training step, at full width and at 1/4 width. Prints images/s per lowering
(xla, im2col, shifted), a plain-torch model of the same shape, the ratio to
PyTorch and the fraction of this machine's float32 matmul peak, in one run:

    python benchmarks/vgg_cpu_conv.py [--steps 3] [--skip_xla_full]
"""

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from benchmarks.common import matmul_peak_flops
from vgg_jax import config_lib, models, optim, train
from vgg_jax.models import VGG_STAGES, vgg as vgg_lib

BATCH, SIZE, CLASSES = 128, 32, 10


def widths(multiplier):
  return [[vgg_lib.scaled_width(c, multiplier) for c in stage] for stage in VGG_STAGES["vgg16"]]


def train_flops_per_image(multiplier) -> float:
  """3x the forward matmul FLOPs (forward, input grad, weight grad)."""
  flops, size, cin = 0, SIZE, 1
  for stage in widths(multiplier):
    for cout in stage:
      flops += 2 * size * size * 9 * cin * cout
      cin = cout
    size = (size + 1) // 2
  fc = vgg_lib.scaled_width(512, multiplier)
  flops += 2 * cin * size * size * fc + 2 * fc * CLASSES
  return 3.0 * flops


def jax_images_per_sec(multiplier, lowering, steps) -> float:
  config = config_lib.base_config()
  config.model.name = "vgg16"
  config.model.width_multiplier = multiplier
  config.model.classifier_sizes = (vgg_lib.scaled_width(512, multiplier),)
  config.model.dropout_rate = 0.0
  config.model.conv_lowering = lowering
  config.optimizer.name, config.optimizer.learning_rate = "momentum", 0.01
  model = models.create_model(config.model, CLASSES)
  tx, shape = optim.create_optimizer(config.optimizer, 1000)
  state = train.create_train_state(jax.random.PRNGKey(0), model, tx, (SIZE, SIZE, 1))
  step = jax.jit(functools.partial(train.train_step, head=models.get_head("category"),
                                   preprocess=train.make_preprocess((0.5,), (0.25,)),
                                   lr_shape=shape), donate_argnums=0)
  rng = np.random.default_rng(0)
  batch = jax.device_put({"image": rng.integers(0, 256, (BATCH, SIZE, SIZE, 1), np.uint8),
                          "label": rng.integers(0, CLASSES, BATCH).astype(np.int32)})
  state, m = step(state, batch)
  jax.block_until_ready(m)
  best = float("inf")
  for _ in range(steps):
    start = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    best = min(best, time.perf_counter() - start)
  return BATCH / best


def torch_images_per_sec(multiplier, steps):
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  layers, cin, size = [], 1, SIZE
  for stage in widths(multiplier):
    for cout in stage:
      layers += [torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.ReLU()]
      cin = cout
    layers.append(torch.nn.MaxPool2d(2, ceil_mode=True))
    size = (size + 1) // 2
  fc = vgg_lib.scaled_width(512, multiplier)
  layers += [torch.nn.Flatten(), torch.nn.Linear(cin * size * size, fc), torch.nn.ReLU(),
             torch.nn.Linear(fc, CLASSES)]
  model = torch.nn.Sequential(*layers)
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  x = torch.randint(0, 256, (BATCH, 1, SIZE, SIZE), dtype=torch.uint8)
  y = torch.randint(0, CLASSES, (BATCH,))

  def one():
    loss = torch.nn.functional.cross_entropy(model((x.float() / 255 - 0.5) / 0.25), y)
    opt.zero_grad()
    loss.backward()
    opt.step()

  one()
  best = float("inf")
  for _ in range(steps):
    start = time.perf_counter()
    one()
    best = min(best, time.perf_counter() - start)
  return BATCH / best, torch.__version__


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=3, help="timed steps (best is kept)")
  parser.add_argument("--skip_xla_full", action="store_true",
                      help="skip the slow full-width xla row")
  args = parser.parse_args()
  peak = matmul_peak_flops()["peak"]
  print(f"VGG16 at {SIZE}x{SIZE}x1, one FC, batch {BATCH}, SGD+momentum, float32; "
        f"{os.cpu_count()} CPU cores, jax {jax.__version__}; float32 matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s")
  print(f"{'width':<8}{'lowering':<22}{'images/s':>10}{'vs torch':>10}{'of peak':>9}")
  for multiplier, label in ((1.0, "full"), (0.25, "1/4")):
    try:
      torch_ips, version = torch_images_per_sec(multiplier, args.steps)
    except ImportError:
      torch_ips, version = None, None
    rows = []
    for lowering in ("xla", "im2col", "shifted"):
      if lowering == "xla" and multiplier == 1.0 and args.skip_xla_full:
        continue
      rows.append((lowering, jax_images_per_sec(multiplier, lowering, args.steps)))
    if torch_ips:
      rows.append((f"PyTorch {version} eager", torch_ips))
    flops = train_flops_per_image(multiplier)
    for name, ips in rows:
      ratio = f"{ips / torch_ips:.2f}x" if torch_ips else "-"
      print(f"{label:<8}{name:<22}{ips:>10.1f}{ratio:>10}{ips * flops / peak:>9.0%}")
  print("goal: im2col (auto's CPU choice) >= 1.0x PyTorch at both widths")


if __name__ == "__main__":
  main()
