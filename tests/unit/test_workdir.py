"""A workdir's lock: one process per workdir (or per sweep shard), reentrant
within a process.

A busy workdir on the command line, and a killed holder that does not block:
tests/e2e/test_bad_input.py.
"""

import errno
import fcntl
import os
import time

import pytest

from vgg_jax.errors import UserError
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


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.EIO])
def test_a_filesystem_without_locks_is_one_line_not_busy(tmp_path, monkeypatch, code):
  """NFS without a lock daemon fails flock with ENOLCK: that is not "busy"
  (the workdir could then never start), and the message names the opt-out."""
  def no_locks(f, operation):
    raise OSError(code, os.strerror(code))

  monkeypatch.setattr(fcntl, "flock", no_locks)
  (tmp_path / workdir_lib.LOCK_FILE).write_text("pid 1 on a-long-gone-host since 2020\n")
  with pytest.raises(UserError) as caught:
    with workdir_lib.locked(str(tmp_path)):
      pass
  message = str(caught.value)
  assert not isinstance(caught.value, workdir_lib.WorkdirBusyError)
  assert "does not support file locks" in message and workdir_lib.NO_LOCK_ENV in message
  assert "a-long-gone-host" not in message and "\n" not in message
  with pytest.raises(UserError, match="does not support file locks"):
    with workdir_lib.merge_lock(str(tmp_path)):
      pass
  monkeypatch.setenv(workdir_lib.NO_LOCK_ENV, "1")  # The documented opt-out.
  with workdir_lib.locked(str(tmp_path)), workdir_lib.merge_lock(str(tmp_path)):
    pass


@pytest.mark.parametrize("code", [errno.EWOULDBLOCK, errno.EAGAIN])
def test_only_ewouldblock_and_eagain_mean_busy(tmp_path, monkeypatch, code):
  def held(f, operation):
    raise OSError(code, os.strerror(code))

  monkeypatch.setattr(fcntl, "flock", held)
  with pytest.raises(workdir_lib.WorkdirBusyError, match="in use by another process"):
    with workdir_lib.locked(str(tmp_path)):
      pass
