"""ImageNet weights for the VGG family, from the files users actually have.

    params, preprocessing = pretrained.load("vgg16_weights_tf_dim_ordering_tf_kernels.h5", "vgg16")

Formats:
  - Keras .h5: the keras.applications files (legacy HDF5 with `layer_names`,
    layers named block{s}_conv{i}, fc1, fc2, predictions) and Keras 3
    `save_weights` files (`*.weights.h5`: layers/<name>/vars/<i>, in layer
    order);
  - PyTorch/torchvision state_dicts: `.pth`/`.pt` (read with
    torch.load(weights_only=True): a file that would need pickle code to load
    is refused) or `.safetensors` (read here, no torch needed), with
    torchvision's keys (features.<n>.weight, classifier.<0|3|6>.weight).

The result is vgg_jax's own parameter tree (conv{s}_{i}, fc1, fc2, head)
plus the preprocessing the weights expect, as (mean, std) on RGB pixels in
[0, 1]. Keras weights were trained on Caffe's BGR, mean-subtracted 0-255
input: the import flips conv1_1's input channels so the model takes RGB, and
mean = ImageNet BGR means / 255 (reordered to RGB), std = 1/255. torchvision
weights take RGB in [0, 1] normalized by ImageNet's mean and std. Nothing is
downloaded: the path is a config value (`model.pretrained`).
"""

import os
import re
from typing import Dict, List, Tuple

import numpy as np

from vgg_jax.errors import UserError
from vgg_jax.models.vgg import VGG_STAGES

Params = Dict[str, Dict[str, np.ndarray]]

# Preprocessing, as (mean, std) per RGB channel on pixels scaled to [0, 1].
CAFFE = {"name": "caffe", "mean": (123.68 / 255, 116.779 / 255, 103.939 / 255),
         "std": (1 / 255, 1 / 255, 1 / 255)}
TORCH = {"name": "torch", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}

WHERE = ("get the file from keras.applications (e.g. ~/.keras/models/vgg16_weights_tf_dim_"
         "ordering_tf_kernels.h5) or torchvision (vgg16-397923af.pth) on a machine with "
         "network, and set model.pretrained to its path")


class WeightsError(UserError):
  """A weights file is missing, unreadable or does not fit the model."""


def conv_names(name: str) -> List[str]:
  return [f"conv{s}_{i}" for s, stage in enumerate(VGG_STAGES[name], start=1)
          for i in range(1, len(stage) + 1)]


def load(path: str, name: str = "vgg16") -> Tuple[Params, dict]:
  """(params, preprocessing) from a Keras .h5 or torchvision .pth/.safetensors file."""
  if name not in VGG_STAGES:
    raise WeightsError(f"pretrained weights are for {', '.join(VGG_STAGES)}, not {name}")
  if not os.path.exists(path):
    raise WeightsError(f"weights file {path} does not exist; {WHERE}")
  try:
    if path.endswith(".h5"):
      return from_keras(_read_keras_h5(path), name, path), dict(CAFFE)
    if path.endswith((".pth", ".pt")):
      return from_torchvision(_read_torch(path), name, path), dict(TORCH)
    if path.endswith(".safetensors"):
      return from_torchvision(read_safetensors(path), name, path), dict(TORCH)
  except (KeyError, ValueError, IndexError, TypeError, AttributeError) as e:
    # The checks below name the common faults; this is the net under them.
    raise WeightsError(f"{path} does not fit {name} ({type(e).__name__}: {e})") from None
  raise WeightsError(f"{path}: unknown weights format; expected .h5 (Keras), .pth/.pt or "
                     ".safetensors (torchvision)")


# ------------------------------------------------------------------ Keras


def _read_keras_h5(path: str) -> List[Tuple[str, List[np.ndarray]]]:
  """[(layer name, [kernel, bias])] for every layer with weights, in model order."""
  import h5py  # pylint: disable=g-import-not-at-top
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise WeightsError(f"cannot read {path} as HDF5: {e}") from None
  with f:
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" in root.attrs:  # keras.applications / Keras 2 / legacy format.
      layers = []
      for layer in root.attrs["layer_names"]:
        layer = layer.decode() if isinstance(layer, bytes) else str(layer)
        names = [n.decode() if isinstance(n, bytes) else str(n)
                 for n in root[layer].attrs.get("weight_names", [])]
        if names:
          layers.append((layer, [np.asarray(root[layer][n]) for n in names]))
      return layers
    if "layers" in root:  # Keras 3 save_weights: layers/<name>/vars/<i>.
      def order(name):  # conv2d, conv2d_1, ..., conv2d_10: creation order.
        match = re.match(r"(.*?)(?:_(\d+))?$", name)
        return (match.group(1), int(match.group(2) or 0))
      layers = []
      for layer in sorted(root["layers"], key=order):
        variables = root["layers"][layer].get("vars", {})
        if len(variables):
          layers.append((layer, [np.asarray(variables[str(i)]) for i in range(len(variables))]))
      return layers
  raise WeightsError(f"{path} is HDF5 but not a Keras weights file (no layer_names, no layers/)")


def from_keras(layers, name: str, path: str = "the weights") -> Params:
  convs = [(n, w) for n, w in layers if w[0].ndim == 4]
  denses = [(n, w) for n, w in layers if w[0].ndim == 2]
  targets = conv_names(name)
  if len(convs) != len(targets):
    raise WeightsError(f"{path} has {len(convs)} conv layers; {name} needs {len(targets)} "
                       "(a different VGG, or not a VGG file)")
  params = {}
  for target, (source, weights) in zip(targets, convs):
    if len(weights) != 2:
      raise WeightsError(f"{path}: layer {source} has {len(weights)} arrays, expected kernel "
                         "and bias")
    params[target] = {"kernel": weights[0], "bias": weights[1]}
  # Caffe's BGR input -> RGB: flip the first kernel's input channels.
  params["conv1_1"]["kernel"] = params["conv1_1"]["kernel"][:, :, ::-1, :]
  for target, (_, weights) in zip(("fc1", "fc2", "head"), denses):
    params[target] = {"kernel": weights[0], "bias": weights[1]}
  return {k: {n: np.ascontiguousarray(a, np.float32) for n, a in v.items()}
          for k, v in params.items()}


# ---------------------------------------------------------- torchvision


def _read_torch(path: str) -> Dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise WeightsError(f"{path}: reading .pth needs PyTorch (pip install torch); or convert "
                       "it to .safetensors, which needs nothing") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # Pickle refused, or corrupt.
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise WeightsError(f"{path}: refused or unreadable as a plain state_dict (loaded with "
                       f"weights_only=True, so no pickled code runs): {first[:200]}") from None
  if isinstance(state, dict) and "state_dict" in state:
    state = state["state_dict"]
  if not isinstance(state, dict):
    raise WeightsError(f"{path} holds a {type(state).__name__}, not a state_dict")
  return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """Every tensor of a .safetensors file as float32, through the safetensors
  package: the file is memory-mapped and each tensor copied once (any float
  type, BF16 included, and integer counters such as BatchNorm's)."""
  from safetensors import SafetensorError, safe_open  # pylint: disable=g-import-not-at-top
  try:
    with safe_open(path, framework="numpy") as f:
      return {key: np.asarray(f.get_tensor(key)).astype(np.float32, copy=False)
              for key in f.keys()}
  except (SafetensorError, ValueError, TypeError, OverflowError) as e:
    raise WeightsError(f"{path} is not a readable safetensors file: "
                       f"{' '.join(str(e).split()) or type(e).__name__}") from None


def write_safetensors(path: str, tensors: Dict[str, np.ndarray]) -> None:
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, path)


def _feature_indices(state) -> List[int]:
  return sorted({int(k.split(".")[1]) for k in state if re.match(r"features\.\d+\.weight$", k)})


def from_torchvision(state: Dict[str, np.ndarray], name: str, path: str = "the weights") -> Params:
  """torchvision layout (OIHW convs, CHW-flattened fc1) -> vgg_jax's (HWIO, HWC)."""
  indices = _feature_indices(state)
  targets = conv_names(name)
  if len(indices) != len(targets):
    raise WeightsError(f"{path} has {len(indices)} conv layers (features.*.weight); {name} "
                       f"needs {len(targets)}")
  def arrays(prefix, ndim):  # (weight, bias) of one layer, or a one-line error.
    weight, bias = state.get(f"{prefix}.weight"), state.get(f"{prefix}.bias")
    if bias is None:
      raise WeightsError(f"{path} has {prefix}.weight but no {prefix}.bias")
    if np.ndim(weight) != ndim or np.ndim(bias) != 1 or len(bias) != np.shape(weight)[0]:
      raise WeightsError(f"{path}: {prefix}.weight has shape {tuple(np.shape(weight))} and "
                         f"{prefix}.bias {tuple(np.shape(bias))}; expected a {ndim}-D weight "
                         "and a bias of its first dimension")
    return weight, bias

  params = {}
  for target, n in zip(targets, indices):
    w, b = arrays(f"features.{n}", 4)
    params[target] = {"kernel": w.transpose(2, 3, 1, 0), "bias": b}
  for target, n in (("fc1", 0), ("fc2", 3), ("head", 6)):
    if f"classifier.{n}.weight" not in state:
      continue
    w, b = arrays(f"classifier.{n}", 2)
    if target == "fc1":  # (out, C*H*W) -> (H*W*C, out): our flatten is channels-last.
      channels = params[targets[-1]]["bias"].shape[0]
      side = int(round((w.shape[1] / channels) ** 0.5))
      if side * side * channels != w.shape[1]:
        raise WeightsError(f"{path}: classifier.0.weight takes {w.shape[1]} inputs, not "
                           f"{channels} channels times a square feature map")
      w = w.reshape(w.shape[0], channels, side, side).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
    else:
      w = w.T
    params[target] = {"kernel": w, "bias": b}
  return {k: {n: np.ascontiguousarray(a, np.float32) for n, a in v.items()}
          for k, v in params.items()}


def to_torchvision(params: Params, name: str) -> Dict[str, np.ndarray]:
  """vgg_jax params -> a torchvision-style state_dict (numpy), the inverse of
  from_torchvision."""
  state, n = {}, 0
  for target in conv_names(name):
    state[f"features.{n}.weight"] = params[target]["kernel"].transpose(3, 2, 0, 1)
    state[f"features.{n}.bias"] = params[target]["bias"]
    n += 2  # Conv, ReLU
    if target.endswith(f"_{len(VGG_STAGES[name][int(target[4]) - 1])}"):
      n += 1  # MaxPool closes the stage.
  channels = params[conv_names(name)[-1]]["bias"].shape[0]
  for target, i in (("fc1", 0), ("fc2", 3), ("head", 6)):
    if target not in params:
      continue
    w = np.asarray(params[target]["kernel"])
    if target == "fc1":
      side = int(round((w.shape[0] / channels) ** 0.5))
      w = w.reshape(side, side, channels, -1).transpose(3, 2, 0, 1).reshape(w.shape[1], -1)
    else:
      w = w.T
    state[f"classifier.{i}.weight"] = np.ascontiguousarray(w)
    state[f"classifier.{i}.bias"] = np.asarray(params[target]["bias"])
  return state


# --------------------------------------------------------------- fitting


def check_shapes(params: Params, expected, path: str, only_conv: bool = False) -> None:
  """Every imported layer must exist in the model with the same shapes, and
  every model layer (but the head; with only_conv, every conv layer) must be
  imported."""
  for layer, arrays in params.items():
    if layer not in expected:
      raise WeightsError(f"{path}: layer {layer} has no place in the model")
    for key, array in arrays.items():
      want = tuple(expected[layer][key].shape)
      if tuple(array.shape) != want:
        raise WeightsError(f"{path}: {layer}/{key} has shape {tuple(array.shape)}, the model "
                           f"needs {want} (check model.name, width_multiplier, image_size and "
                           "classifier_sizes)")
  missing = [layer for layer in expected if layer not in params and layer != "head"
             and (layer.startswith("conv") or not only_conv)]
  if missing:
    raise WeightsError(f"{path} lacks layers {', '.join(missing)}")
