"""What every vgg_jax command line shares: one-line failures and quiet logging.

Bad input (a flag, a config override, a config file that does not load)
prints one line on stderr, ``<prog>: message``, and exits with code 2.
"""

import logging as std_logging
import re
import sys

from absl import flags
from absl import logging

FLAGS = flags.FLAGS


def fail(message: str, code: int = 2, prog: str = "vgg_jax"):
  print(f"{prog}: {message}", file=sys.stderr)
  sys.exit(code)


def parse_flags(argv):
  """absl's parser, but a bad flag or override is one line and exit code 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if "Traceback (most recent call last):" in lines:  # config_flags embeds get_config's.
      fail(f"cannot load {' '.join(_config_args(argv)) or 'the config'}: {lines[-1]}")
    fail(f"flag error: {e}")
  except (AttributeError, KeyError) as e:  # config_flags: an override names no key.
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    hint = re.search(r'Did you mean "([\w.]+)"', str(e))
    fail(f"flag error: unknown config key in {' '.join(overrides)}"
         + (f' (did you mean "{hint.group(1)}"?)' if hint else ""))
  except Exception as e:  # pylint: disable=broad-except
    # A config file that does not compile, or whose get_config raises.
    message = str(e).strip().splitlines()[0] if str(e).strip() else ""
    fail(f"cannot load {' '.join(_config_args(argv)) or 'the config'}: {type(e).__name__}"
         + (f": {message}" if message else ""))


def _config_args(argv):
  return [a for a in argv[1:] if re.match(r"--\w*config=", a)]


def setup_logging(*names: str):
  """Progress lines of the named loggers on stderr; other libraries' INFO only
  with --verbosity."""
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  handler = std_logging.StreamHandler(sys.stderr)
  handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  for name in names or ("vgg_jax",):
    project_logger = std_logging.getLogger(name)
    project_logger.addHandler(handler)
    project_logger.setLevel(std_logging.INFO)
    project_logger.propagate = False


def load_config_flag(name: str = "config"):
  """FLAGS.<name>, with a config file that fails to load as one line."""
  try:
    config = getattr(FLAGS, name)
    config.keys()  # A failed load surfaces here, not at parse time.
  except OSError as e:  # config_flags defers a failed load to the first access.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    fail(f"cannot load --{name}={FLAGS[name].serialize().split('=', 1)[-1]}: {lines[-1]}")
  return config
