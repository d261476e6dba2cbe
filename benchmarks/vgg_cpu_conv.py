"""VGG16 training speed on CPU per conv lowering, next to PyTorch eager.

The VGG16-CIFAR shape: 32x32x1 input, channels 64-128-256-512-512 (VGG16's
13 convs), one 512 FC, 10 classes, batch 128, SGD + momentum, float32, one
training step, at full width and at 1/4 width. Prints images/s per lowering
(xla, im2col, shifted, blocked, onednn, and auto, which on CPU takes onednn
where oneDNN is installed and blocked for the wide 2x2 layers), a plain-torch
model of the same shape, the ratio to PyTorch and the fraction of this
machine's float32 matmul peak, in one run:

    python benchmarks/vgg_cpu_conv.py [--repeats 3] [--skip_xla_full]
        [--block_mb 4,8,16] [--per_layer] [--preload libtcmalloc_minimal.so.4]
        [--rounds 5 --lowerings auto]

Each figure comes from its own process: on a 2-core machine PyTorch's OpenMP
threads keep spinning after a step and would slow whatever runs next.
--per_layer adds forward+backward milliseconds of each of the 13 conv layers
(conv + bias + ReLU) for the onednn and blocked lowerings and for PyTorch,
with the oneDNN kernel each layer got.

--preload runs every row (PyTorch's too) with that library in LD_PRELOAD,
e.g. tcmalloc: under glibc's malloc both frameworks take a fresh page fault
for every 4 KB of their large per-step buffers (about 11,000 a step for the
1/4-width VGG16 here), which tcmalloc's retained memory avoids.
"""

import argparse
import functools
import json
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import best_seconds  # pylint: disable=g-import-not-at-top

BATCH, SIZE, CLASSES = 128, 32, 10
WIDTHS = {"full": 1.0, "1/4": 0.25}


def widths(multiplier):
  from vgg_jax.models import VGG_STAGES, vgg as vgg_lib  # pylint: disable=g-import-not-at-top
  return [[vgg_lib.scaled_width(c, multiplier) for c in stage] for stage in VGG_STAGES["vgg16"]]


def conv_shapes(multiplier):
  """(h, w, cin, cout) of the 13 convolutions."""
  shapes, size, cin = [], SIZE, 1
  for stage in widths(multiplier):
    for cout in stage:
      shapes.append((size, size, cin, cout))
      cin = cout
    size = (size + 1) // 2
  return shapes


def train_flops_per_image(multiplier) -> float:
  """3x the forward matmul FLOPs (forward, input grad, weight grad)."""
  from vgg_jax.models import vgg as vgg_lib  # pylint: disable=g-import-not-at-top
  flops = sum(2 * h * w * 9 * cin * cout for h, w, cin, cout in conv_shapes(multiplier))
  cin = conv_shapes(multiplier)[-1][-1]
  fc = vgg_lib.scaled_width(512, multiplier)
  flops += 2 * cin * fc + 2 * fc * CLASSES  # The conv stack ends at 1x1.
  return 3.0 * flops


def jax_images_per_sec(multiplier, lowering, repeats, steps) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vgg_jax import config_lib, models, optim, training  # pylint: disable=g-import-not-at-top
  from vgg_jax.models import vgg as vgg_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.model.name = "vgg16"
  config.model.width_multiplier = multiplier
  config.model.classifier_sizes = (vgg_lib.scaled_width(512, multiplier),)
  config.model.dropout_rate = 0.0
  config.model.conv_lowering = lowering
  config.optimizer.name, config.optimizer.learning_rate = "momentum", 0.01
  model = models.create_model(config.model, CLASSES)
  tx, shape = optim.create_optimizer(config.optimizer, 1000)
  holder = [training.create_train_state(jax.random.PRNGKey(0), model, tx, (SIZE, SIZE, 1))]
  step = jax.jit(functools.partial(training.train_step, head=models.get_head("category"),
                                   preprocess=training.make_preprocess((0.5,), (0.25,)),
                                   lr_multiplier=shape), donate_argnums=0)
  rng = np.random.default_rng(0)
  batch = jax.device_put({"image": rng.integers(0, 256, (BATCH, SIZE, SIZE, 1), np.uint8),
                          "label": rng.integers(0, CLASSES, BATCH).astype(np.int32)})

  def one():
    holder[0], metrics = step(holder[0], batch)
    jax.block_until_ready(metrics)

  return BATCH / best_seconds(one, repeats, steps), faults_per_call(one)


def faults_per_call(fn, calls: int = 5) -> float:
  """Minor page faults per call of fn() (fresh pages touched), after warm-up."""
  fn()
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(calls):
    fn()
  return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def torch_model(multiplier):
  import torch  # pylint: disable=g-import-not-at-top
  from vgg_jax.models import vgg as vgg_lib  # pylint: disable=g-import-not-at-top
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
  return torch.nn.Sequential(*layers)


def torch_images_per_sec(multiplier, repeats, steps):
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  model = torch_model(multiplier)
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  x = torch.randint(0, 256, (BATCH, 1, SIZE, SIZE), dtype=torch.uint8)
  y = torch.randint(0, CLASSES, (BATCH,))

  def one():
    loss = torch.nn.functional.cross_entropy(model((x.float() / 255 - 0.5) / 0.25), y)
    opt.zero_grad()
    loss.backward()
    opt.step()

  return BATCH / best_seconds(one, repeats, steps), faults_per_call(one)


def per_layer_ms(multiplier, which, repeats):
  """Forward + backward ms of each conv (+ bias + ReLU) at batch 128."""
  times = []
  if which == "torch":
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count() or 1)
    for h, w, cin, cout in conv_shapes(multiplier):
      x = torch.randn(BATCH, cin, h, w, requires_grad=cin > 1)
      layer, g = torch.nn.Conv2d(cin, cout, 3, padding=1), torch.randn(BATCH, cout, h, w)
      times.append(best_seconds(lambda: torch.relu(layer(x)).backward(g), repeats, 3))
    return times
  import jax  # pylint: disable=g-import-not-at-top
  from vgg_jax.kernels import conv  # pylint: disable=g-import-not-at-top
  for h, w, cin, cout in conv_shapes(multiplier):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (BATCH, h, w, cin))
    k = jax.random.normal(keys[1], (3, 3, cin, cout)) * 0.05
    g = jax.random.normal(keys[2], (BATCH, h, w, cout))
    layer = conv.Conv3x3(cout, lowering=which, activation=jax.nn.relu)
    params = layer.init(jax.random.PRNGKey(0), x)
    params = {"params": {"kernel": k, "bias": params["params"]["bias"]}}
    if cin == 1:  # The image: no input gradient, as in training.
      fn = jax.jit(lambda p, g, x=x: jax.vjp(lambda p: layer.apply(p, x), p)[1](g))
    else:
      fn = jax.jit(lambda p, g, x: jax.vjp(lambda p, x: layer.apply(p, x), p, x)[1](g))
    args = (params, g) if cin == 1 else (params, g, x)
    times.append(best_seconds(lambda: jax.block_until_ready(fn(*args)), repeats, 3))
  return times


def child(args):
  """Measure one thing in this process and print it as JSON."""
  multiplier = WIDTHS[args.width]
  if args.block_bytes:
    from vgg_jax.kernels import conv  # pylint: disable=g-import-not-at-top
    conv.BLOCK_BYTES = args.block_bytes
  if args.per_layer_child:
    result = per_layer_ms(multiplier, args.lowering, args.repeats)
  elif args.lowering == "torch":
    import torch  # pylint: disable=g-import-not-at-top
    ips, faults = torch_images_per_sec(multiplier, args.repeats, args.steps)
    result = {"ips": ips, "faults": faults, "version": torch.__version__}
  else:
    ips, faults = jax_images_per_sec(multiplier, args.lowering, args.repeats, args.steps)
    result = {"ips": ips, "faults": faults}
  print("RESULT " + json.dumps(result))


def median_result(results):
  """The result with the median images/s of several rounds."""
  return sorted(results, key=lambda r: r["ips"])[len(results) // 2]


def measure(args, width, lowering, *, block_bytes=0, per_layer=False):
  cmd = [sys.executable, os.path.abspath(__file__), "--child", "--width", width,
         "--lowering", lowering, "--repeats", str(args.repeats), "--steps", str(args.steps),
         "--block_bytes", str(block_bytes)] + (["--per_layer_child"] if per_layer else [])
  env = dict(os.environ)
  if args.preload:
    env["LD_PRELOAD"] = args.preload
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  if lowering == "torch" and "No module named 'torch'" in proc.stderr:
    return None
  raise SystemExit(f"{width} {lowering} failed:\n{proc.stderr[-3000:]}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3, help="timed rounds (best is kept)")
  parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
  parser.add_argument("--skip_xla_full", action="store_true",
                      help="skip the slow full-width xla row")
  parser.add_argument("--block_mb", default="",
                      help="also time the blocked lowering with these block sizes (MB), e.g. 4,16")
  parser.add_argument("--per_layer", action="store_true",
                      help="also print per-layer forward+backward ms, onednn and blocked vs PyTorch")
  parser.add_argument("--rounds", type=int, default=1,
                      help="measure every row this many times, alternating; print medians")
  parser.add_argument("--lowerings", default="",
                      help="only these rows besides PyTorch, e.g. auto,blocked")
  parser.add_argument("--preload", default="",
                      help="LD_PRELOAD for every row, e.g. libtcmalloc_minimal.so.4")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--per_layer_child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--width", default="full", help=argparse.SUPPRESS)
  parser.add_argument("--lowering", default="blocked", help=argparse.SUPPRESS)
  parser.add_argument("--block_bytes", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if "/" in args.preload and not os.path.exists(args.preload):
    raise SystemExit(f"--preload {args.preload}: no such file")
  if args.child:
    child(args)
    return

  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks.common import matmul_peak_flops  # pylint: disable=g-import-not-at-top
  from vgg_jax.kernels import conv, onednn  # pylint: disable=g-import-not-at-top
  peak = matmul_peak_flops()["peak"]
  auto = conv.resolve("auto")
  if auto == "onednn":
    auto += f" (blocked for wide layers on images under {conv.ONEDNN_MIN_PIXELS} pixels)"
  print(f"VGG16 at {SIZE}x{SIZE}x1, one FC, batch {BATCH}, SGD+momentum, float32; "
        f"{os.cpu_count()} CPU cores, jax {jax.__version__}; float32 matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s; auto = {auto} here; "
        f"best of {args.repeats} x {args.steps} steps, each row in its own process; "
        f"allocator: {args.preload or 'glibc malloc'}")
  lowerings = ["xla", "im2col", "shifted", "blocked"]
  if onednn.available():
    lowerings.append("onednn")
  else:
    print(f"onednn lowering unavailable: {onednn.unavailable_reason()}")
  # auto is its own row: it mixes lowerings per layer (conv.resolve).
  lowerings.append("auto")
  if args.lowerings:
    lowerings = [l for l in lowerings if l in args.lowerings.split(",")]
  if args.rounds > 1:
    print(f"{args.rounds} rounds, rows alternating; each figure is the median of its rounds")
  print(f"{'width':<8}{'lowering':<26}{'images/s':>10}{'vs torch':>10}{'of peak':>9}"
        f"{'faults/step':>13}")
  extra_blocks = [int(float(mb) * (1 << 20)) for mb in args.block_mb.split(",") if mb]
  ratios = {}
  for label in WIDTHS:
    jobs = [("torch", "torch", 0)]
    for lowering in lowerings:
      if not (lowering == "xla" and label == "full" and args.skip_xla_full):
        jobs.append((lowering, lowering, 0))
    jobs += [(f"blocked, {b / (1 << 20):g} MB blocks", "blocked", b) for b in extra_blocks]
    # Machine noise drifts over minutes; alternating the rows over several
    # rounds and taking medians keeps it out of the ratios.
    results = {name: [] for name, _, _ in jobs}
    for _ in range(args.rounds):
      for name, lowering, block_bytes in jobs:
        results[name].append(measure(args, label, lowering, block_bytes=block_bytes))
    torch_runs = results.pop("torch")
    torch_result = None if torch_runs[0] is None else median_result(torch_runs)
    torch_ips = torch_result and torch_result["ips"]
    rows = [(name, median_result(r)) for name, r in results.items()]
    if torch_ips:
      rows.append((f"PyTorch {torch_result['version']} eager", torch_result))
      if "auto" in dict(rows):
        ratios[label] = dict(rows)["auto"]["ips"] / torch_ips
    flops = train_flops_per_image(WIDTHS[label])
    for name, result in rows:
      ips = result["ips"]
      ratio = f"{ips / torch_ips:.2f}x" if torch_ips else "-"
      print(f"{label:<8}{name:<26}{ips:>10.1f}{ratio:>10}{ips * flops / peak:>9.0%}"
            f"{result['faults']:>13.0f}", flush=True)
  if args.per_layer:
    columns = [l for l in ("onednn", "blocked") if l in lowerings] + ["torch"]
    for label in WIDTHS:
      times = {c: measure(args, label, c, per_layer=True) for c in columns}
      times = {c: t for c, t in times.items() if t}
      print(f"\nper-layer forward+backward ms, {label} width (conv + bias + ReLU, batch {BATCH})")
      print(f"{'layer':<22}" + "".join(f"{c:>9}" for c in times)
            + ("   oneDNN kernel (fwd / bwd data / bwd weights)" if "onednn" in times else ""))
      for i, (h, w, cin, cout) in enumerate(conv_shapes(WIDTHS[label])):
        kernels = ""
        if "onednn" in times:
          kernels = "   " + " / ".join(  # The image needs no input gradient.
              "-" if kind == "backward_data" and cin == 1 else
              onednn.implementation((BATCH, h, w, cin), cout, kind)
              for kind in ("forward", "backward_data", "backward_weights"))
        print(f"{f'{h}x{w} {cin}->{cout}':<22}"
              + "".join(f"{t[i] * 1e3:>9.1f}" for t in times.values()) + kernels)
      print(f"{'sum':<22}" + "".join(f"{sum(t) * 1e3:>9.1f}" for t in times.values()))
  if ratios:
    print("goal: auto >= 1.0x PyTorch at both widths; measured "
          + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))


if __name__ == "__main__":
  main()
