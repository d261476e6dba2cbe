"""What every vgg_jax command line shares: one-line failures and quiet logging.

Bad input (a flag, a config override, a config file that does not load)
prints one line on stderr, ``<prog>: message``, and exits with code 2.
"""

import logging as std_logging
import os
import pathlib
import re
import signal
import sys

from absl import flags
from absl import logging

FLAGS = flags.FLAGS


def fail(message: str, code: int = 2, prog: str = "vgg_jax"):
  print(f"{prog}: {message}", file=sys.stderr)
  sys.exit(code)


def exit_code(error: BaseException, default: int = 2) -> int:
  """A UserError's exit code: 130 for an interrupted loader, else `default`."""
  return getattr(error, "exit_code", default)


INTERRUPTED = 130  # The shell's code for a process ended by Ctrl-C (128 + SIGINT).


def exit_on_ctrl_c(prog: str = "vgg_jax") -> None:
  """Until training installs its graceful handler (preemption.guard: a
  checkpoint, then exit 75), Ctrl-C ends the command at once with one line
  and exit 130. A KeyboardInterrupt raised at start-up could land in a
  garbage-collection callback, where Python swallows it and the run went on,
  or print a traceback. Exiting at once is as safe as the SIGKILL every run
  survives: every file is written atomically, and a rerun resumes."""

  def handler(signum, frame):
    del signum, frame
    os.write(2, f"{prog}: interrupted (Ctrl-C); rerun the same command to continue\n".encode())
    compile_cache = sys.modules.get("vgg_jax.compile_cache")  # Never import in a handler.
    if compile_cache is not None:
      compile_cache.remove_private_directory()
    os._exit(INTERRUPTED)  # pylint: disable=protected-access

  signal.signal(signal.SIGINT, handler)


def run_app(main, doc: str, config_doc: str = "") -> None:
  """absl's app.run with this module's parser: one-line errors, --config by
  name, and a --help that shows the command's own flags (`doc` heads it)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=lambda argv: parse_flags(argv, doc, config_doc))


HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "-?")


def parse_flags(argv, doc: str = "", config_doc: str = ""):
  """absl's parser, but a bad flag or override is one line and exit code 2."""
  if any(a in HELP_FLAGS for a in argv[1:]):
    print(command_help(doc or (sys.modules["__main__"].__doc__ or ""), config_doc))
    sys.exit(0)
  argv = _resolve_config(argv)
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


def _resolve_config(argv):
  """--config=NAME[:variant] for a config file flag: a built-in config by name
  (config_lib.config_path); paths pass through."""
  if "config" not in FLAGS or not isinstance(FLAGS["config"].parser,
                                             _config_file_parser()):
    return argv
  from vgg_jax import config_lib, errors  # pylint: disable=g-import-not-at-top

  def resolve(value):
    try:
      return config_lib.config_path(value)
    except errors.UserError as e:
      fail(str(e))

  out = list(argv)
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      out[i] = "--config=" + resolve(arg[len("--config="):])
    elif arg == "--config" and i + 1 < len(argv):
      out[i + 1] = resolve(argv[i + 1])
  return out


def _config_file_parser():
  from ml_collections.config_flags import config_flags  # pylint: disable=g-import-not-at-top
  return config_flags.ConfigFileFlagParser


def command_help(doc: str, config_doc: str = "") -> str:
  """`doc`, then the command's own flags (absl's --help lists only a main
  module's, so an experiment showed none), then where config keys live
  (`config_doc`, or config_lib's schema)."""
  from vgg_jax import config_lib  # pylint: disable=g-import-not-at-top
  lines = [doc.strip(), "", "flags:"]
  by_module = FLAGS.flags_by_module_dict()
  seen = set()
  for module in by_module:
    if module.startswith("absl"):
      continue
    for flag in by_module[module]:
      if flag.name in seen:
        continue
      seen.add(flag.name)
      lines.append(f"  --{flag.name}: {_flag_help(flag)}")
  schema = pathlib.Path(config_lib.__file__)
  lines += [""] + ([config_doc] if config_doc else [f"Config keys: every --config.KEY, its default and what it means, is in "
            f"{schema} (vgg_jax.config_lib). Built-in configs, by name: "
            f"{', '.join(config_lib.builtin_configs())} (in {config_lib.configs_dir()})."]) + [
            "More: vgg-jax --help lists every command; README.md and docs/."]
  return "\n".join(lines)


def _flag_help(flag) -> str:
  text = " ".join(flag.help.split())
  if flag.default is None:
    required = any("other than None" in str(getattr(v, "message", ""))
                   for v in getattr(flag, "validators", []))
    return text + (" (required)" if required else "")
  if flag.name == "config":  # An experiment's whole settings dict.
    return text
  default = repr(flag.default) if isinstance(flag.default, str) else str(flag.default)
  return f"{text} (default: {default if len(default) < 60 else default[:57] + '...'})"


def _config_args(argv):
  return [a for a in argv[1:] if re.match(r"--\w*config=", a)]


def setup_logging(*names: str):
  """Progress lines of the named loggers on stderr; other libraries' INFO only
  with --verbosity."""
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  progress_to_stderr(*names)


def progress_to_stderr(*names: str) -> None:
  """The named loggers' (default: vgg_jax's) INFO lines on stderr, timestamped."""
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


def define_cluster_flags() -> None:
  """--sweep_shard and the multi-process flags, for vgg_jax.main and the
  experiments. Defaults come from JAX's own environment variables, so a
  launcher can set either; on TPU pods and SLURM, --multihost finds them all."""
  flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS", ""),
                      "host:port of process 0, for multi-process runs.")
  flags.DEFINE_integer("num_processes", int(os.environ.get("JAX_NUM_PROCESSES", "0")),
                       "Number of processes in a multi-process run.")
  flags.DEFINE_integer("process_id", int(os.environ.get("JAX_PROCESS_ID", "-1")),
                       "This process's index in a multi-process run.")
  flags.DEFINE_string("sweep_shard", "0/1", "For a sweep: run i of every n runs (i/n), so n "
                      "workers (a SLURM job array, say) split the list and share the workdir.")
  flags.DEFINE_float("peer_timeout", 60.0, "Multi-process runs: seconds without a heartbeat "
                     "from another process before this one stops with a clear error (0: off).")
  flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() and let it find "
                    "the cluster (TPU pods, SLURM).")


def initialize_cluster() -> None:
  """jax.distributed from the cluster flags (a no-op for one process)."""
  from vgg_jax import parallel  # pylint: disable=g-import-not-at-top
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id, auto=FLAGS.multihost,
                                  peer_timeout_s=FLAGS.peer_timeout)
