"""Errors a user can fix: they print as one line and exit with code 2.

Anything raised as a ``UserError`` means "your input is wrong", never "the
code is broken"; ``vgg_jax.main`` turns it into a single stderr line.
"""


class UserError(Exception):
  """Bad input from the user: a config value, a missing file, bad data."""


class ConfigError(UserError, ValueError):
  """A config value is invalid. The message names key, value and what is allowed."""

  def __init__(self, key: str, value, allowed: str):
    self.key, self.value, self.allowed = key, value, allowed
    super().__init__(f"config error: {key}={value!r} is invalid; allowed: {allowed}")


class DataError(UserError):
  """A dataset cannot be found or read."""


class DivergedError(UserError):
  """Training produced a non-finite loss or gradient."""
