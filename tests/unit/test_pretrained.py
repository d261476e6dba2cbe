"""ImageNet weight import, freezing, cached features, predict and visualize.

Every weights file here is made by the test: Keras builds VGG16 offline with
random weights (KERAS_BACKEND=jax, in a subprocess so the backend choice
cannot clash with this process), and our own random VGG16 is written in
torchvision's layout.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, run_cli, tiny_config
from vgg_jax import config_lib, finetune, models, optim, pretrained, train

HELPER = os.path.join(REPO, "tests", "helpers", "keras_vgg_reference.py")


def _vgg(name="vgg16", num_outputs=1000, **overrides):
  config = config_lib.base_config().model
  config.name = name
  for k, v in overrides.items():
    config[k] = v
  return models.create_model(config, num_outputs)


def _logits(model, params, images, preprocessing):
  x = (images / 255.0 - np.asarray(preprocessing["mean"])) / np.asarray(preprocessing["std"])
  return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(
      params, jnp.asarray(x, jnp.float32)))


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
  out = tmp_path_factory.mktemp("keras")
  env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, HELPER, str(out)], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out


@pytest.mark.parametrize("filename", ["legacy.h5", "k3.weights.h5"])
def test_keras_vgg16_logits_match_and_survive_torchvision_round_trip(keras_files, filename):
  ref = np.load(keras_files / "reference.npz")
  params, preprocessing = pretrained.load(str(keras_files / filename), "vgg16")
  assert preprocessing["name"] == "caffe"
  model = _vgg()
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


class _Evil:
  def __reduce__(self):
    return (os.system, ("echo pwned",))


def test_torch_file_needing_pickle_code_is_refused(tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "evil.pth"
  torch.save({"features.0.weight": _Evil()}, path)
  with pytest.raises(pretrained.WeightsError, match="weights_only=True"):
    pretrained.load(str(path), "vgg16")


def _small_state():
  """Our own random VGG11, conv layers only, in torchvision layout."""
  model = _vgg("vgg11", 10, classifier_sizes=(16,))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
  return model, jax.tree.map(np.asarray, params)


def test_safetensors_round_trip_and_bad_files(tmp_path):
  _, params = _small_state()
  convs = {k: v for k, v in params.items() if k.startswith("conv")}
  path = str(tmp_path / "w.safetensors")
  pretrained.write_safetensors(path, pretrained.to_torchvision(convs, "vgg11"))
  loaded, prep = pretrained.load(path, "vgg11")
  assert prep["name"] == "torch" and set(loaded) == set(convs)
  np.testing.assert_array_equal(loaded["conv3_2"]["kernel"], convs["conv3_2"]["kernel"])
  # A VGG11 file is not a VGG16.
  with pytest.raises(pretrained.WeightsError, match=r"has 8 conv layers .*; vgg16 needs 13"):
    pretrained.load(path, "vgg16")
  # Missing file: where to get one.
  with pytest.raises(pretrained.WeightsError, match="does not exist.*keras.applications"):
    pretrained.load(str(tmp_path / "nope.h5"), "vgg16")
  (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 5)
  with pytest.raises(pretrained.WeightsError, match="junk.safetensors"):
    pretrained.load(str(tmp_path / "junk.safetensors"), "vgg11")


def test_h5_with_missing_or_misshaped_layers_is_refused(tmp_path):
  import h5py  # pylint: disable=g-import-not-at-top
  _, params = _small_state()

  def write(path, layers):
    with h5py.File(path, "w") as f:
      f.attrs["layer_names"] = [n.encode() for n, _ in layers]
      for name, (kernel, bias) in layers:
        g = f.create_group(name)
        g.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
        g[f"{name}/kernel:0"] = kernel
        g[f"{name}/bias:0"] = bias

  convs = [(f"block_{k}", (v["kernel"][:, :, ::-1], v["bias"])) for k, v in params.items()
           if k.startswith("conv")]
  write(tmp_path / "missing.h5", convs[:-1])
  with pytest.raises(pretrained.WeightsError, match="has 7 conv layers; vgg11 needs 8"):
    pretrained.load(str(tmp_path / "missing.h5"), "vgg11")
  bad = list(convs)
  bad[2] = (bad[2][0], (bad[2][1][0][:, :, :, :5], bad[2][1][1][:5]))
  write(tmp_path / "misshaped.h5", bad)
  imported, _ = pretrained.load(str(tmp_path / "misshaped.h5"), "vgg11")
  with pytest.raises(pretrained.WeightsError, match="conv3_1/kernel has shape"):
    pretrained.check_shapes(imported, params, "misshaped.h5")


def test_frozen_layers_do_not_change():
  config = tiny_config()
  config.model.name = "vgg11"
  config.model.width_multiplier = 0.0625
  config.model.classifier_sizes = (16,)
  model = models.create_model(config.model, 3)
  for freeze, moving in (("conv", {"fc1", "head"}), ("all_but_head", {"head"})):
    config.optimizer.weight_decay = 0.1  # Would move frozen weights if not masked.
    tx, lr_multiplier = optim.create_optimizer(config.optimizer, 10, finetune.frozen_fn(freeze))
    state = train.create_train_state(jax.random.PRNGKey(0), model, tx, (32, 32, 1))
    before = jax.tree.map(np.asarray, state.params)
    step = jax.jit(lambda s, b: train.train_step(
        s, b, head=models.get_head("category"), preprocess=train.make_preprocess((0.5,), (0.5,)),
        lr_multiplier=lr_multiplier))
    rng = np.random.default_rng(0)
    for _ in range(3):
      batch = {"image": rng.integers(0, 255, (8, 32, 32, 1), dtype=np.uint8),
               "label": rng.integers(0, 3, (8,)).astype(np.int32)}
      state, _ = step(state, batch)
    for layer in before:
      same = all(np.array_equal(before[layer][k], np.asarray(state.params[layer][k]))
                 for k in before[layer])
      assert same == (layer not in moving), (freeze, layer)


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
  model = _vgg("vgg16", 2, classifier_sizes=(256,))
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

  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  env.pop("XLA_FLAGS", None)
  images = [str(stand_in / "folder" / "test" / "sneaker" / "0.png"),
            str(stand_in / "folder" / "test" / "boot" / "0.png")]
  pred = subprocess.run([sys.executable, "-m", "vgg_jax.predict", f"--workdir={workdir}", *images],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert pred.returncode == 0, pred.stderr[-3000:]
  lines = pred.stdout.strip().splitlines()
  assert len(lines) == 2
  for line, path in zip(lines, images):
    name, prob = line.split(": ")[1].split()
    assert line.startswith(path) and name in ("sneaker", "boot") and 0.5 <= float(prob) <= 1.0

  look = subprocess.run([sys.executable, "-m", "vgg_jax.visualize", f"--workdir={workdir}",
                         f"--image={images[0]}", f"--out={tmp_path / 'look'}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert look.returncode == 0, look.stderr[-3000:]
  for png in ("filters.png", "feature_maps.png"):
    assert (tmp_path / "look" / png).read_bytes()[:4] == b"\x89PNG"


def test_freeze_without_weights_and_bad_weights_are_one_line(stand_in, tmp_path):
  args = [a for a in _stand_in_args(stand_in) if "pretrained" not in a]
  proc = run_cli(args, workdir=tmp_path / "a")
  assert proc.returncode == 2 and " model.pretrained=" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
  proc = run_cli(args + [f"--config.model.pretrained={tmp_path / 'missing.h5'}"],
                 workdir=tmp_path / "b")
  assert proc.returncode == 2 and "missing.h5 does not exist" in proc.stderr.strip().splitlines()[-1]
