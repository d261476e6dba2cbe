"""Transfer learning as the deck tells it, offline: ImageNet-layout VGG16 weights
that give Keras's and PyTorch's logits, then a weights file, a two-class image
folder, fine-tuning on cached features, and predict and visualize on the run's
workdir.

Every weights file is made here: Keras builds VGG16 offline with random
weights (KERAS_BACKEND=jax, in a subprocess so the backend choice cannot
clash with this process), and our own random VGG16 is written in
torchvision's layout.

Weight import, freezing and bad weights files, in process:
tests/unit/test_pretrained.py.
"""

import glob
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import (REPO, assert_one_line, built_once, in_a_mount_namespace, run_cli,
                      subprocess_env, tiny_config)
from vgg_jax import config_lib, data, finetune, inference, models, pretrained, sweep, training
from vgg_jax.errors import ConfigError
from vgg_jax.training import program as program_lib, steps

HELPER = os.path.join(REPO, "tests", "helpers", "keras_vgg_reference.py")


def _logits(model, params, images, preprocessing):
  x = (images / 255.0 - np.asarray(preprocessing["mean"])) / np.asarray(preprocessing["std"])
  return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(
      params, jnp.asarray(x, jnp.float32)))


def _vgg16():
  config = config_lib.base_config().model
  config.name = "vgg16"
  return models.create_model(config, 1000)


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
  def build(out):
    proc = subprocess.run([sys.executable, HELPER, str(out)],
                          env=subprocess_env(KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

  return built_once(tmp_path_factory, "keras_files", build)


@pytest.mark.parametrize("filename", ["legacy.h5", "k3.weights.h5"])
def test_keras_vgg16_logits_match_and_survive_torchvision_round_trip(keras_files, filename):
  ref = np.load(keras_files / "reference.npz")
  params, preprocessing = pretrained.load(str(keras_files / filename), "vgg16")
  assert preprocessing["name"] == "caffe"
  model = _vgg16()
  ours = _logits(model, params, ref["images"], preprocessing)
  scale = np.abs(ref["logits"]).max()
  np.testing.assert_allclose(ours, ref["logits"], atol=1e-4 * max(scale, 1.0))
  # Keras -> torchvision layout -> back: the same numbers, bit for bit.
  back = pretrained.from_torchvision(pretrained.to_torchvision(params, "vgg16"), "vgg16")
  for layer in params:
    for key in params[layer]:
      np.testing.assert_array_equal(back[layer][key], params[layer][key])
  np.testing.assert_allclose(_logits(model, back, ref["images"], preprocessing), ours, rtol=0,
                             atol=0)


def test_torch_forward_matches(keras_files, tmp_path):
  torch = pytest.importorskip("torch")
  ref = np.load(keras_files / "reference.npz")
  params, preprocessing = pretrained.load(str(keras_files / "legacy.h5"), "vgg16")
  state = pretrained.to_torchvision(params, "vgg16")
  nn = torch.nn
  layers, channels = [], 3
  for stage in models.VGG_STAGES["vgg16"]:
    for width in stage:
      layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
      channels = width
    layers.append(nn.MaxPool2d(2))
  net = nn.Module()
  net.features = nn.Sequential(*layers)
  net.classifier = nn.Sequential(nn.Linear(25088, 4096), nn.ReLU(), nn.Dropout(),
                                 nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
                                 nn.Linear(4096, 1000))
  net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
  net.eval()
  x = (ref["images"] / 255.0 - np.asarray(preprocessing["mean"])) / np.asarray(preprocessing["std"])
  with torch.no_grad():
    t = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))
    out = net.classifier(torch.flatten(net.features(t), 1)).numpy()
  np.testing.assert_allclose(out, ref["logits"], atol=1e-4 * max(np.abs(out).max(), 1.0))
  # And the .pth path: torch.save'd state_dict, read back with weights_only.
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()},
             tmp_path / "vgg16.pth")
  loaded, prep = pretrained.load(str(tmp_path / "vgg16.pth"), "vgg16")
  assert prep["name"] == "torch"
  np.testing.assert_array_equal(loaded["fc1"]["kernel"], params["fc1"]["kernel"])


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
  """A sneaker/boot-like two-class image folder at 28x28 and a VGG16 weights file."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("stand_in")
  rng = np.random.default_rng(0)
  for split, n in (("train", 60), ("test", 20)):
    for c, name in enumerate(("sneaker", "boot")):
      os.makedirs(root / "folder" / split / name)
      for i in range(n):
        img = rng.integers(0, 60, (28, 28), dtype=np.uint8)
        img[14 * c:14 * c + 14] += 150  # Top half bright for one class, bottom for the other.
        Image.fromarray(img).save(root / "folder" / split / name / f"{i}.png")
  config = config_lib.base_config().model
  config.name, config.classifier_sizes = "vgg16", (256,)
  model = models.create_model(config, 2)
  params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
  convs = {k: v for k, v in jax.tree.map(np.asarray, params).items()
           if k.startswith("conv")}
  pretrained.write_safetensors(str(root / "vgg16.safetensors"),
                               pretrained.to_torchvision(convs, "vgg16"))
  return root


def _stand_in_args(root):
  return ["--config=configs/cats_vs_dogs.py:stand_in", f"--config.dataset.path={root / 'folder'}",
          f"--config.model.pretrained={root / 'vgg16.safetensors'}", "--config.num_epochs=3",
          "--config.batch_size=16", "--config.eval_batch_size=64"]


def test_stand_in_fine_tune_predict_and_look(stand_in, tmp_path):
  workdir = tmp_path / "run"
  proc = run_cli(_stand_in_args(stand_in), workdir=workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "cached (512,) features" in proc.stderr or "features" in proc.stderr
  assert (workdir / finetune.FEATURES_FILE).exists()
  assert "test_accuracy=" in proc.stdout

  images = [str(stand_in / "folder" / "test" / "sneaker" / "0.png"),
            str(stand_in / "folder" / "test" / "boot" / "0.png")]
  pred = run_cli([f"--workdir={workdir}", *images], module="vgg_jax.predict")
  assert pred.returncode == 0, pred.stderr[-3000:]
  lines = pred.stdout.strip().splitlines()
  assert len(lines) == 2
  for line, path in zip(lines, images):
    name, prob = line.split(": ")[1].split()
    assert line.startswith(path) and name in ("sneaker", "boot") and 0.5 <= float(prob) <= 1.0

  look = run_cli([f"--workdir={workdir}", f"--image={images[0]}", f"--out={tmp_path / 'look'}"],
                 module="vgg_jax.visualize")
  assert look.returncode == 0, look.stderr[-3000:]
  for png in ("filters.png", "feature_maps.png"):
    assert (tmp_path / "look" / png).read_bytes()[:4] == b"\x89PNG"
  # Where the pictures cannot go: one line each, never a traceback.
  (tmp_path / "a_file").write_text("x")
  for args, expected in (([f"--out={tmp_path / 'a_file'}"], "is a file; give a directory"),
                         ([f"--out={tmp_path / 'look'}", "--channels=-1"], "channels")):
    bad = run_cli([f"--workdir={workdir}", f"--image={images[0]}", *args],
                  module="vgg_jax.visualize")
    assert_one_line(bad, expected)
  script = ('mount --bind -o ro "$FULL" "$FULL" || exit 99\n'
            f'"$PY" -m vgg_jax.visualize --workdir={workdir} --image={images[0]} '
            '--out="$FULL/look" 2> "$OUT/err"; echo $? > "$OUT/rc"')
  ro_dir = tmp_path / "ro"
  ro_dir.mkdir()
  proc = in_a_mount_namespace(script, ro_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert_one_line(subprocess.CompletedProcess([], int((ro_dir / "rc").read_text()), "",
                                              (ro_dir / "err").read_text()),
                  "cannot write in --out=", after_logs=True)


# ------------------------------- sweeps from weights, frozen, on cached features


def _group_states(workdir):
  """{group tag: the stacked state of its newest checkpoint} as raw arrays."""
  out = {}
  for group in sorted(glob.glob(os.path.join(workdir, "checkpoints", "group-*"))):
    step = max(int(d) for d in os.listdir(group) if d.isdigit())
    with ocp.StandardCheckpointer() as ckptr:
      out[os.path.basename(group)] = ckptr.restore(os.path.join(group, str(step), "state"))
  return out


@pytest.fixture(scope="module")
def conv_weights(tmp_path_factory):
  """A VGG11's conv layers (random, ours) as a torchvision .safetensors file."""
  cfg = config_lib.base_config().model
  cfg.name, cfg.classifier_sizes = "vgg11", (8,)
  model = models.create_model(cfg, 2)
  params = model.init(jax.random.PRNGKey(7), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
  convs = {k: v for k, v in jax.tree.map(np.asarray, params).items() if k.startswith("conv")}
  path = str(tmp_path_factory.mktemp("weights") / "vgg11.safetensors")
  pretrained.write_safetensors(path, pretrained.to_torchvision(convs, "vgg11"))
  return path, convs


def _finetune_config(weights):
  config = tiny_config()
  config.dataset.synthetic.image_shape = (32, 32, 3)
  config.dataset.synthetic.num_train = 64
  config.dataset.synthetic.num_test = 32
  config.dataset.synthetic.num_classes = 2
  config.batch_size = 16
  config.num_epochs = 1
  config.model.name = "vgg11"
  config.model.classifier_sizes = (8,)
  config.model.pretrained = weights
  config.model.pretrained_layers = "conv"
  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.05
  return config


def test_sweep_with_frozen_conv_keeps_pretrained_layers_bit_identical(conv_weights, tmp_path):
  path, convs = conv_weights
  config = _finetune_config(path)
  config.model.freeze = "conv"
  config.sweep_vmap_size = 4  # One vmapped program of four (auto runs a VGG one by one on CPU).
  config.sweep = sweep.to_config(sweep.product(sweep.axis("seed", [0, 1]),
                                               sweep.axis("optimizer.learning_rate", [0.05, 0.2])))
  results = sweep.run_sweep(config, str(tmp_path))
  assert len(results) == 4
  [state] = _group_states(str(tmp_path)).values()
  params = state["params"]
  for layer, arrays in convs.items():
    for name, value in arrays.items():
      stacked = np.asarray(params[layer][name])
      assert stacked.shape == (4,) + value.shape
      for j in range(4):
        np.testing.assert_array_equal(stacked[j], value)  # Frozen: exactly the file's.
  fc = np.asarray(params["fc1"]["kernel"])
  assert not np.array_equal(fc[0], fc[1])  # Trained, and per seed.


def test_sweep_with_pretrained_weights_starts_every_member_from_them(conv_weights, tmp_path):
  path, convs = conv_weights
  config = _finetune_config(path)
  config.num_train_steps = 1
  config.optimizer.learning_rate = 1e-30  # One step that moves nothing measurable.
  config.sweep_vmap_size = 2
  config.sweep = sweep.to_config(sweep.axis("seed", [0, 1]))
  sweep.run_sweep(config, str(tmp_path))
  [state] = _group_states(str(tmp_path)).values()
  np.testing.assert_allclose(np.asarray(state["params"]["conv1_1"]["kernel"])[1],
                             convs["conv1_1"]["kernel"], atol=1e-12)


def test_cached_features_train_with_the_configured_activation(conv_weights, tmp_path):
  """The classifier on cached features is the VGG's own classifier: a run's
  restored whole network gives the logits that the trained classifier gave."""
  path, _ = conv_weights
  config = _finetune_config(path)
  config.model.freeze = "conv"
  config.model.cache_features = True
  config.dataset.pipeline = "memory"
  config.model.activation = "tanh"
  training.train_and_evaluate(config, str(tmp_path))
  dataset = data.load(config.dataset)
  program = program_lib.build(config, dataset.info, 4)
  assert program.model.activation == "tanh"
  model, variables, info, _ = inference.restore_for_inference(str(tmp_path))
  images = dataset.splits["test"][0][:8]
  whole = model.apply(variables, steps.make_preprocess(info["mean"], info["std"])(images),
                      train=False)
  features = model.apply(variables, steps.make_preprocess(info["mean"], info["std"])(images),
                         train=False, cut="conv")
  head = {k: variables["params"][k] for k in ("fc1", "head")}
  trained = program.model.apply({"params": head}, features, train=False)
  np.testing.assert_allclose(np.asarray(whole), np.asarray(trained), rtol=1e-5, atol=1e-5)


def test_cached_features_over_seeds_with_random_frozen_layers_is_a_config_error(conv_weights,
                                                                                 tmp_path):
  path, _ = conv_weights
  config = _finetune_config(path)
  config.model.freeze = "all_but_head"  # fc1 is frozen but not in the conv-only file.
  config.model.cache_features = True
  config.dataset.pipeline = "memory"
  config.sweep_vmap_size = 2  # One program for both seeds: one base, one set of features.
  config.sweep = sweep.to_config(sweep.axis("seed", [0, 1]))
  with pytest.raises(ConfigError, match="sweep over seeds"):
    sweep.run_sweep(config, str(tmp_path))
