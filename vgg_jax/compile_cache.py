"""Programs compiled once per process, not once per run.

A sweep group trained one model at a time, an experiment's many runs and a
rerun of the same config each build their programs anew: new jitted
functions (new closures) whose HLO is the previous run's, byte for byte.
jax.jit's in-memory cache keys on the Python function, so every run compiled
again: a sweep of 8 MLPs trained one at a time spent 4.9 of its 10.3 s
compiling 38 programs. JAX's persistent compilation cache keys on the HLO
(and the compile options and devices) instead, so each distinct program
compiles once and later runs load the executable (benchmarks/sweep_vmap.py,
"wall" column).

    compile_cache.enable()  # Before the first compile: main.py and experiments call it.

By default the cache lives in a private temporary directory, removed at
exit. Nothing outlives the process, so a process killed mid-write cannot
leave a truncated entry for later runs (JAX would warn at every read of it,
and recompile). VGG_JAX_COMPILATION_CACHE=<dir> keeps it in <dir> across
processes (a resumed or repeated run then skips compiling too; JAX's
caveats apply: the directory is trusted code); VGG_JAX_COMPILATION_CACHE=0
turns it off. A cache directory set for JAX itself (JAX_COMPILATION_CACHE_DIR)
is left alone.

A cached executable is the executable the compile produced, so results are
bit for bit those of compiling anew (tests/test_compile_cache.py).
"""

import atexit
import os
import shutil
import tempfile
from typing import Optional

import jax
from jax.experimental.compilation_cache import compilation_cache

ENV = "VGG_JAX_COMPILATION_CACHE"
# Programs that compile faster than this are not worth an entry (tiny jnp ops).
MIN_COMPILE_SECONDS = 0.05


_private = []  # The temporary directory enable() made, removed at exit.


def remove_private_directory() -> None:
  """Removes the private cache directory now (an exit that skips atexit)."""
  for directory in _private:
    shutil.rmtree(directory, ignore_errors=True)


def enable(directory: Optional[str] = None) -> Optional[str]:
  """Turns the cache on (see the module docstring); returns its directory,
  or None where it is off. Idempotent."""
  if jax.config.jax_compilation_cache_dir:  # Set by the user, or by an earlier call.
    return jax.config.jax_compilation_cache_dir
  directory = directory or os.environ.get(ENV, "")
  if directory == "0":
    return None
  if not directory:
    directory = tempfile.mkdtemp(prefix="vgg_jax_xla_")
    _private.append(directory)
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  compilation_cache.set_cache_dir(directory)
  # Compiles before this call may have settled the cache as unused; ask again.
  compilation_cache.reset_cache()
  return directory
