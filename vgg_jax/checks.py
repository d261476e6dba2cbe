"""The config checks each registry uses on its own keys (optim, models,
kernels, finetune, data), each failing as one ConfigError that names the
key, the bad value and what is allowed.

`section` is the ConfigDict the key is looked up in; `prefix` is where that
section sits in the whole config ("dataset." for config.dataset), so the
error names the key as the user writes it.
"""

import math
from typing import Iterable

from vgg_jax.errors import ConfigError


def get(section, key: str, prefix: str = ""):
  node = section
  for part in key.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError):
      raise ConfigError(prefix + key, "<missing>", "a config with every key of "
                        "vgg_jax.config_lib.base_config() (start get_config from it)") from None
  return node


def choice(section, key: str, allowed: Iterable[str], prefix: str = ""):
  value = get(section, key, prefix)
  if value not in allowed:
    raise ConfigError(prefix + key, value, "one of " + ", ".join(allowed))


def number(section, key: str, low=None, high=None, *, low_open=False, high_open=False,
           integer=False, extra: Iterable = (), prefix: str = ""):
  """Checks low <=/< value <=/< high; values in `extra` are also allowed."""
  value = get(section, key, prefix)
  if value in tuple(extra):
    return
  name = prefix + key
  lo = "" if low is None else f"{low} {'<' if low_open else '<='} "
  hi = "" if high is None else f" {'<' if high_open else '<='} {high}"
  allowed = f"{'an integer' if integer else 'a number'} with {lo}{name}{hi}"
  if extra:
    allowed += " (or " + ", ".join(str(e) for e in extra) + ")"
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (not integer or float(value).is_integer())
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  if not ok:
    raise ConfigError(name, value, allowed)


def positive_ints(section, key: str, allow_empty: bool, prefix: str = ""):
  value = tuple(get(section, key, prefix))
  if not value and not allow_empty:
    raise ConfigError(prefix + key, value, "a non-empty tuple of positive integers")
  if any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in value):
    raise ConfigError(prefix + key, value, "a tuple of positive integers")
