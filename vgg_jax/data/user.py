"""Your own dataset, without editing vgg_jax.

`dataset.name` names a loader in one of three ways:

  "mypkg.mydata:load"      a function in an importable module (the current
                           directory is tried too)
  "path/to/mydata.py:load" a function in a Python file
  "mydata"                 a name given to ``vgg_jax.data.register("mydata", load)``,
                           for example in a config file

The loader takes no arguments (or one: the dataset ConfigDict) and returns

  {"train": (x, y), "test": (x, y), "class_names": [...]}

where "test" and "class_names" are optional; without "test",
dataset.test_fraction of train is held out, as for digits. A tuple
(train, test) or (train, test, class_names) works too.
  x: uint8 images [n, height, width, channels] (or [n, height, width]), or
     float features of any shape [n, ...], which stay float;
  y: integer labels 0..k-1, shape [n]. Every class must appear in train
     (labels 1..k, or raw ids, are one-line errors saying so), and every
     test label too, unless the dict says "num_classes": k (or gives
     class_names) for classes that really have no training examples.

Everything after loading is the same as for the built-in datasets: class
subsets, the validation carve, normalization computed from train (per
channel: the last axis), sweeps and the experiments.
"""

import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import io
import json
import os
import sys
from typing import Callable, Dict, Tuple

import ml_collections
import numpy as np

from vgg_jax.errors import ConfigError, DataError, Interrupted

Split = Tuple[np.ndarray, np.ndarray]

_REGISTRY: Dict[str, Callable] = {}
_CACHE: Dict[str, "UserData"] = {}


@dataclasses.dataclass(frozen=True)
class UserData:
  splits: Dict[str, Split]  # train, and test if the loader gave one.
  class_names: Tuple[str, ...]  # The loader's, else "0", "1", ...

  @property
  def shape(self) -> Tuple[int, ...]:
    return tuple(self.splits["train"][0].shape[1:])

  @property
  def is_image(self) -> bool:
    """uint8 [h, w, c] or float [h, w, c] with 1 or 3 channels: crops, flips, VGG."""
    return len(self.shape) == 3


def register(name: str, loader: Callable) -> None:
  """Makes `dataset.name=name` load with `loader` in this process."""
  from vgg_jax import data  # pylint: disable=g-import-not-at-top
  if not isinstance(name, str) or not name or ":" in name or name in data.DATASETS:
    raise ConfigError("register(name)", name, "a new name without ':' that is not a built-in "
                      "dataset (" + ", ".join(data.DATASETS) + ")")
  if not callable(loader):
    raise ConfigError(f"register({name!r}, loader)", loader, "a function returning the arrays")
  _REGISTRY[name] = loader
  for key in [k for k in _CACHE if k.split("\0")[0] == name]:
    del _CACHE[key]


def is_user(name: str) -> bool:
  return isinstance(name, str) and (":" in name or name in _REGISTRY)


def _resolve(name: str) -> Callable:
  if name in _REGISTRY:
    return _REGISTRY[name]
  where, _, attr = name.rpartition(":")
  if not where or not attr:
    raise ConfigError("dataset.name", name, "module:function or path/to/file.py:function")
  if where.endswith(".py"):
    path = os.path.abspath(os.path.expanduser(where))
    if not os.path.isfile(path):
      raise DataError(f"dataset.name={name}: no file {path}")
    spec = importlib.util.spec_from_file_location(
        "vgg_jax_user_data_" + str(abs(hash(path))), path)
    module = importlib.util.module_from_spec(spec)
    try:
      with _contained(name, "importing it"):
        spec.loader.exec_module(module)
    except (DataError, Interrupted):
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"dataset.name={name}: {path} failed to import: {_first_line(e)}") from e
  else:
    try:
      with _contained(name, "importing it"):
        module = _import(where)
    except (DataError, Interrupted):
      raise
    except ModuleNotFoundError as e:
      raise DataError(f"dataset.name={name}: no module {e.name!r} (on sys.path or in "
                      f"{os.getcwd()}); or give a file: path/to/file.py:{attr}") from e
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"dataset.name={name}: module {where} failed to import: "
                      f"{_first_line(e)}") from e
  loader = getattr(module, attr, None)
  if not callable(loader):
    raise DataError(f"dataset.name={name}: {where} has no function {attr!r}")
  return loader


def _import(module_name: str):
  try:
    return importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if os.getcwd() in sys.path or not (e.name and module_name.startswith(e.name)):
      raise
  sys.path.append(os.getcwd())  # `vgg_jax` console scripts do not put it there.
  return importlib.import_module(module_name)


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def _takes_config(loader: Callable) -> bool:
  try:
    return bool(inspect.signature(loader).parameters)
  except (TypeError, ValueError):  # A builtin without a signature: call it bare.
    return False


@contextlib.contextmanager
def _contained(name: str, doing: str):
  """Runs user code (a loader module's import, or the loader) so that what
  ends a program does not end vgg_jax silently or confusingly: sys.exit
  (argparse's too) and Ctrl-C become one line naming the loader. The code
  sees sys.argv as [its module] (vgg_jax's own flags are not for it, and an
  argparse at import took them for its own); what it prints on stderr is
  held, and passed on unless it exits."""
  argv, held = sys.argv, io.StringIO()
  sys.argv = [name.rpartition(":")[0]]
  exited = None
  try:
    with contextlib.redirect_stderr(held):
      yield
  except SystemExit as e:
    exited = e
  except KeyboardInterrupt:
    raise Interrupted(f"dataset.name={name}: interrupted (Ctrl-C) while {doing}") from None
  finally:
    sys.argv = argv
    if exited is None and held.getvalue():
      sys.stderr.write(held.getvalue())
  if exited is not None:
    said = [line.strip() for line in held.getvalue().splitlines() if line.strip()]
    raise DataError(f"dataset.name={name}: the loader exited (SystemExit({exited.code!r})) "
                    f"while {doing}" + (f", saying: {said[-1][:200]}" if said else "")
                    + "; a loader must return its data, not exit or parse the command line")


def _call(name: str, loader: Callable, config: ml_collections.ConfigDict):
  try:
    with _contained(name, "loading"):
      return loader(config) if _takes_config(loader) else loader()
  except (ConfigError, DataError, Interrupted):
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"dataset.name={name}: the loader raised {_first_line(e)}") from e


def _check_split(name: str, split: str, value) -> Split:
  what = f"dataset.name={name}: {split}"
  if not isinstance(value, (tuple, list)) or len(value) != 2:
    raise DataError(f"{what} must be a pair (x, y) of arrays, got {type(value).__name__}")
  x, y = np.asarray(value[0]), np.asarray(value[1])
  if x.ndim < 2:
    raise DataError(f"{what} x has shape {x.shape}; want [n, ...] with at least one feature")
  if x.dtype == np.uint8:
    if x.ndim == 3:
      x = x[..., None]  # [n, h, w] greyscale.
    if x.ndim != 4:
      raise DataError(f"{what} x is uint8 of shape {x.shape}; uint8 means images "
                      "[n, height, width(, channels)]: give other data as float32")
  elif np.issubdtype(x.dtype, np.floating) or x.dtype == np.bool_ or np.issubdtype(
      x.dtype, np.integer):
    bad = ~np.isfinite(x) if np.issubdtype(x.dtype, np.floating) else np.zeros(x.shape, bool)
    if bad.any():
      first = np.argwhere(bad)[0]
      raise DataError(f"{what} x has {int(bad.sum())} non-finite values (first at index "
                      f"{tuple(int(i) for i in first)})")
    big = np.abs(x.astype(np.float64)) > np.finfo(np.float32).max
    if big.any():  # Finite, but past what float32 (the model's dtype) holds.
      first = tuple(int(i) for i in np.argwhere(big)[0])
      raise DataError(f"{what} x has {int(big.sum())} values beyond float32's range (e.g. "
                      f"{float(x[first]):.3g} at index {first}); scale the features")
    x = x.astype(np.float32)
  else:
    raise DataError(f"{what} x has dtype {x.dtype}; want uint8 images or float features")
  if y.ndim != 1 or len(y) != len(x):
    raise DataError(f"{what} y has shape {y.shape}; want [{len(x)}] labels, one per x")
  if len(y) == 0:
    raise DataError(f"{what} is empty")
  if not np.issubdtype(y.dtype, np.integer):
    if not (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)):
      raise DataError(f"{what} y has dtype {y.dtype}; want integer class ids 0..k-1")
  if y.min() < 0:
    raise DataError(f"{what} y has a negative label {int(y.min())}; want class ids 0..k-1")
  if y.max() >= 2**31:  # int32 would wrap it around.
    raise DataError(f"{what} y has label {int(y.max())}; want class ids 0..k-1 (map raw ids "
                    "with np.unique(y, return_inverse=True)[1])")
  return x, y.astype(np.int32)


def _check_labels(name: str, splits, explicit: int) -> None:
  """Class ids are 0..k-1, each one in train (unless the loader gave
  num_classes or class_names), and every test label is a train label."""
  ids = np.unique(splits["train"][1])
  k = len(ids)
  if not explicit and (ids[0] != 0 or ids[-1] != k - 1):
    if ids[0] == 1 and ids[-1] == k:
      found = f"train labels run 1..{k}; did you mean 0..{k - 1}? (subtract 1)"
    else:
      found = (f"train has {k} distinct labels from {ids[0]} to {ids[-1]}, not 0..{k - 1}: "
               f"map them to 0..{k - 1} (np.unique(y, return_inverse=True)[1])")
    raise DataError(f"dataset.name={name}: {found}; or return num_classes (or class_names) "
                    "if some classes really have no training examples")
  if explicit and ids[-1] >= explicit:
    raise DataError(f"dataset.name={name}: label {ids[-1]} but num_classes={explicit}; want "
                    f"labels 0..{explicit - 1}")
  if "test" in splits:
    unseen = sorted(set(np.unique(splits["test"][1]).tolist()) - set(ids.tolist()))
    if unseen:
      shown = ", ".join(map(str, unseen[:5])) + (", ..." if len(unseen) > 5 else "")
      raise DataError(f"dataset.name={name}: test has labels ({shown}) that train does not; "
                      "a class must have training examples")


def _check(name: str, out) -> UserData:
  names, num_classes = None, None
  if isinstance(out, dict):
    unknown = set(out) - {"train", "test", "class_names", "num_classes"}
    if "train" not in out or unknown:
      raise DataError(f"dataset.name={name}: the loader's dict has keys {sorted(out)}; want "
                      "train, and optionally test, class_names and num_classes")
    parts = {s: out[s] for s in ("train", "test") if s in out}
    names = out.get("class_names")
    num_classes = out.get("num_classes")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
      raise DataError(f"dataset.name={name}: num_classes={num_classes!r}; want an integer >= 2")
  elif isinstance(out, (tuple, list)) and len(out) in (2, 3) and isinstance(out[0], (tuple,
                                                                                       list)):
    parts = {"train": out[0], "test": out[1]}
    names = out[2] if len(out) == 3 else None
  else:
    raise DataError(f"dataset.name={name}: the loader returned {type(out).__name__}; want a "
                    "dict {'train': (x, y), 'test': (x, y), 'class_names': [...]}")
  splits = {s: _check_split(name, s, v) for s, v in parts.items()}
  if "test" in splits:
    (xt, _), (xs, _) = splits["train"], splits["test"]
    if xt.shape[1:] != xs.shape[1:] or xt.dtype != xs.dtype:
      raise DataError(f"dataset.name={name}: test x is {xs.dtype}{list(xs.shape[1:])} but train "
                      f"x is {xt.dtype}{list(xt.shape[1:])}; they must match")
  top = max(max(int(y.max()) for _, y in splits.values()) + 1, num_classes or 0)
  if names is not None:
    names = tuple(str(n) for n in names)
    if len(names) < top:
      raise DataError(f"dataset.name={name}: {len(names)} class_names for labels up to "
                      f"{top - 1}; give one name per class")
  _check_labels(name, splits, num_classes or (len(names) if names is not None else 0))
  if max(top, len(names or ())) < 2:
    raise DataError(f"dataset.name={name}: every label is 0; want at least 2 classes")
  return UserData(splits, names or tuple(str(i) for i in range(top)))


def _key(name: str, loader: Callable, config: ml_collections.ConfigDict) -> str:
  if not _takes_config(loader):
    return name
  return name + "\0" + json.dumps(config.to_dict(), sort_keys=True, default=str)


def load(config: ml_collections.ConfigDict) -> UserData:
  """The checked arrays of config.name's loader, loaded once per process."""
  name = config.name
  loader = _resolve(name)
  key = _key(name, loader, config)
  if key not in _CACHE:
    _CACHE[key] = _check(name, _call(name, loader, config))
  return _CACHE[key]
