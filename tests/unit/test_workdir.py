"""A workdir's lock: one process per workdir (or per sweep shard), reentrant
within a process.

A busy workdir on the command line, and a killed holder that does not block:
tests/e2e/test_bad_input.py.
"""

import fcntl
import time

import pytest

from vgg_jax.training import workdir as workdir_lib


def test_sweep_shards_lock_separately_and_the_lock_is_reentrant(tmp_path):
  with workdir_lib.locked(str(tmp_path)):
    with workdir_lib.locked(str(tmp_path)):  # A nested call in the same process.
      pass
    with workdir_lib.locked(str(tmp_path), name=workdir_lib.LOCK_FILE + "-shard0of2"):
      pass
  # Another holder: flock locks belong to an open file, so a second open of
  # the lock file (here, in this process) holds it against locked().
  with open(tmp_path / workdir_lib.LOCK_FILE, "a+") as holder:
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.truncate(0)  # As a holder does: its own line only.
    holder.write("pid 12345 on elsewhere since 2026-01-01T00:00:00+00:00\n")
    holder.flush()
    with pytest.raises(workdir_lib.WorkdirBusyError, match="in use by pid 12345 on elsewhere"):
      with workdir_lib.locked(str(tmp_path)):
        pass
    start = time.time()
    with workdir_lib.locked(str(tmp_path), name=workdir_lib.LOCK_FILE + "-shard1of2"):
      assert time.time() - start < 5
