"""Weight import and freezing, in process: torchvision, Keras .h5, .pth and
.safetensors files made here from our own random VGGs, every way a weights
file can fail to fit (one line each), and frozen layers that do not move.

Keras's and PyTorch's own VGG16 logits, and a fine-tune then predict and
visualize from the command line: tests/e2e/test_transfer.py.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from vgg_jax import config_lib, finetune, models, optim, pretrained, training


def _vgg(name="vgg16", num_outputs=1000, **overrides):
  config = config_lib.base_config().model
  config.name = name
  for k, v in overrides.items():
    config[k] = v
  return models.create_model(config, num_outputs)


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
  params = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
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
    state = training.create_train_state(jax.random.PRNGKey(0), model, tx, (32, 32, 1))
    before = jax.tree.map(np.asarray, state.params)
    step = jax.jit(lambda s, b: training.train_step(
        s, b, head=models.get_head("category"), preprocess=training.make_preprocess((0.5,), (0.5,)),
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


# ------------------------------------------------------- weights files


def _weights_fixture():
  """A random narrow VGG11 in torchvision's layout, and the model it fits."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vgg_jax import config_lib, models  # pylint: disable=g-import-not-at-top

  def model_config(width=1 / 16, name="vgg11"):
    c = config_lib.base_config().model
    c.name, c.width_multiplier, c.classifier_sizes = name, width, (32, 32)
    return c

  def shapes(c):
    model = models.create_model(c, 10)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))["params"]

  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.random(s.shape, np.float32), shapes(model_config()))
  return pretrained.to_torchvision(params, "vgg11"), model_config, shapes


def _replace(state, **changes):
  state = dict(state)
  for key, value in changes.items():
    key = key.replace("__", ".")
    if value is None:
      del state[key]
    else:
      state[key] = value
  return state


WEIGHTS_FAULTS = {
    # name: (torchvision state -> state or raw safetensors header, model changes, message)
    "header_is_a_list": (lambda s: [1, 2], {}, "not a readable safetensors file"),
    "header_entry_is_a_string": (lambda s: {"features.0.weight": "x"}, {},
                                 "not a readable safetensors file"),
    "conv_bias_missing": (lambda s: _replace(s, features__0__bias=None), {},
                          "has features.0.weight but no features.0.bias"),
    "fc_bias_missing": (lambda s: _replace(s, classifier__0__bias=None), {},
                        "has classifier.0.weight but no classifier.0.bias"),
    "conv_weight_is_2d": (lambda s: _replace(s, features__3__weight=np.zeros((8, 3), np.float32)),
                          {}, "features.3.weight has shape (8, 3)"),
    "conv_of_another_shape": (
        lambda s: _replace(s, features__3__weight=np.zeros((7, 4, 3, 3), np.float32)), {},
        "features.3.weight has shape (7, 4, 3, 3)"),
    "fc1_takes_no_square_map": (
        lambda s: _replace(s, classifier__0__weight=np.zeros((32, 37), np.float32)), {},
        "classifier.0.weight takes 37 inputs"),
    "model_narrower_than_the_file": (lambda s: s, {"width": 1 / 32},
                                     "conv1_1/kernel has shape (3, 3, 3, 4), the model needs "
                                     "(3, 3, 3, 2)"),
    "model_wider_than_the_file": (lambda s: s, {"width": 1 / 8}, "the model needs (3, 3, 3, 8)"),
    "another_vgg": (lambda s: s, {"name": "vgg16"}, "has 8 conv layers"),
}


@pytest.mark.parametrize("fault", sorted(WEIGHTS_FAULTS))
def test_a_weights_file_that_does_not_fit_is_one_line(fault, tmp_path):
  import struct  # pylint: disable=g-import-not-at-top
  from vgg_jax import finetune  # pylint: disable=g-import-not-at-top
  state, model_config, shapes = _weights_fixture()
  make, changes, expected = WEIGHTS_FAULTS[fault]
  content = make(state)
  path = tmp_path / f"{fault}.safetensors"
  if isinstance(content, dict) and all(isinstance(v, np.ndarray) for v in content.values()):
    pretrained.write_safetensors(str(path), content)
  else:  # A raw header.
    header = json.dumps(content).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)
  config = model_config(**changes)
  config.pretrained = str(path)
  with pytest.raises(pretrained.WeightsError) as e:
    finetune.load_pretrained(config, shapes(config), 3)
  assert "\n" not in str(e.value) and str(path) in str(e.value) and expected in str(e.value)


def test_the_unbroken_weights_file_loads(tmp_path):
  from vgg_jax import finetune  # pylint: disable=g-import-not-at-top
  state, model_config, shapes = _weights_fixture()
  path = tmp_path / "ok.safetensors"
  pretrained.write_safetensors(str(path), state)
  config = model_config()
  config.pretrained = str(path)
  layers, preprocessing = finetune.load_pretrained(config, shapes(config), 3)
  assert preprocessing["name"] == "torch" and "conv4_2" in layers


def test_a_bf16_safetensors_file_loads_as_its_float32_values(tmp_path):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  state, _, _ = _weights_fixture()
  path = tmp_path / "bf16.safetensors"
  save_file({k: np.ascontiguousarray(v, ml_dtypes.bfloat16) for k, v in state.items()},
            str(path))
  read = pretrained.read_safetensors(str(path))
  assert sorted(read) == sorted(state)
  for key, value in state.items():
    assert read[key].dtype == np.float32
    np.testing.assert_array_equal(read[key], np.asarray(value, ml_dtypes.bfloat16).astype(np.float32))
  assert any(not np.array_equal(read[k], state[k]) for k in state)  # bf16 did round something.


@pytest.mark.parametrize("content,expected", [
    (b"\x00" * 4, "not a readable safetensors file"),  # Shorter than its own header length.
    (np.uint64(2**62).tobytes(), "not a readable safetensors file"),  # A header length past the end.
])
def test_a_truncated_safetensors_file_is_one_line(content, expected, tmp_path):
  path = tmp_path / "w.safetensors"
  path.write_bytes(content)
  with pytest.raises(pretrained.WeightsError, match=expected):
    pretrained.load(str(path), "vgg11")


def test_a_pth_holding_a_list_is_one_line(tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "w.pth"
  torch.save([1, 2], path)
  with pytest.raises(pretrained.WeightsError, match="holds a list, not a state_dict"):
    pretrained.load(str(path), "vgg11")
