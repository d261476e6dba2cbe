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


class Interrupted(UserError):
  """Ctrl-C (KeyboardInterrupt) while user code ran: exit 130, one line."""
  exit_code = 130


class DivergedError(UserError):
  """Training produced a non-finite loss or gradient."""


def is_disk_full(error: BaseException) -> bool:
  """Whether `error` (or what caused it) is a full disk or an exceeded quota.

  Python raises OSError(ENOSPC); TensorFlow's file writers and TensorStore
  (orbax's checkpoint writer) wrap it in their own types, with the OS text.
  """
  import errno  # pylint: disable=g-import-not-at-top
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def disk_full_message(workdir: str) -> str:
  """One line for a run stopped by a full disk: where, and what is kept."""
  import os  # pylint: disable=g-import-not-at-top
  steps = []
  for root, dirs, _ in os.walk(os.path.join(workdir, "checkpoints")):
    steps += [(int(d), os.path.join(root, d)) for d in dirs if d.isdigit()]
    dirs[:] = [d for d in dirs if not d.isdigit() and "tmp" not in d]  # A sweep group's.
  kept = (f"the newest complete checkpoint, step {max(steps)[0]} ({max(steps)[1]}), is intact"
          if steps else "no checkpoint had been completed")
  return (f"no space left on the device of --workdir={workdir}; {kept}; "
          "free some space and rerun the same command to resume")
