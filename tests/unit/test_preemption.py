"""Graceful preemption (SIGTERM, SIGINT) and one process per workdir.

Signals come from VGG_JAX_KILL_AT with VGG_JAX_KILL_SIGNAL (vgg_jax/faults.py)
at a named point of the loop: mid-step (right after a chunk is dispatched),
mid-eval (between two eval splits) and mid-checkpoint (while orbax writes in
the background), so each test knows where the signal landed.
"""

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, run_cli, write_sweep_config
from test_reliability import (MEMORY_ARGS, _env, _rows, _status,  # pylint: disable=unused-import
                              memory_reference, sweep_results)
from vgg_jax import preemption
from vgg_jax.training import workdir as workdir_lib


def _cli(args, workdir, **env):
  cmd = [sys.executable, "-m", "vgg_jax.main", *args, f"--workdir={workdir}"]
  return subprocess.run(cmd, cwd=REPO, env=_env(**env), capture_output=True, text=True,
                        timeout=300)


@pytest.mark.parametrize("sig", ["TERM", "INT"])
@pytest.mark.parametrize("point", ["step:40", "eval:64", "checkpoint:96"])
def test_signal_checkpoints_exits_75_and_resumes_bit_for_bit(sig, point, memory_reference,
                                                             tmp_path):
  rows, status = memory_reference
  stopped = _cli(MEMORY_ARGS, tmp_path, VGG_JAX_KILL_AT=point, VGG_JAX_KILL_SIGNAL=sig)
  assert stopped.returncode == preemption.EXIT_CODE, stopped.stderr[-2000:]
  assert "Traceback" not in stopped.stderr
  last = stopped.stderr.strip().splitlines()[-1]
  assert last.startswith(f"vgg_jax: stopped by SIG{sig} at step "), last
  at = _status(tmp_path)
  assert at["status"] == "preempted"
  assert f"at step {at['step']};" in last
  # The checkpoint was written at the step it stopped at, with its pending rows.
  assert str(at["step"]) in os.listdir(tmp_path / "checkpoints")
  rerun = _cli(MEMORY_ARGS, tmp_path)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert f"resumed from checkpoint at step {at['step']}" in rerun.stderr
  got = _rows(tmp_path)
  assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in rows]
  assert got == rows
  final = _status(tmp_path)
  assert final["status"] == "done" and final["params_sha256"] == status["params_sha256"]


def test_a_second_signal_does_not_stop_the_save_and_a_third_stops_at_once():
  # The third signal goes at once to the handler from before the guard (in a
  # run, Python's own: KeyboardInterrupt). A recording handler stands in for
  # it: whether a KeyboardInterrupt raised inside a signal handler reaches
  # pytest.raises depended on the state of the test process (it did not,
  # twice, in full-suite runs, and always did alone).
  send = functools.partial(signal.pthread_kill, threading.get_ident())
  calls = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
  try:
    with preemption.guard() as g:
      send(signal.SIGTERM)
      send(signal.SIGINT)
      assert g.requested and g.signal_name == "SIGTERM" and g.count == 2 and not calls
      send(signal.SIGINT)
      assert calls == [signal.SIGINT] and g.count == 3
      assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # Uninstalled at the third.
  finally:
    signal.signal(signal.SIGINT, previous)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sweep_signal_resumes_to_the_same_results(tmp_path):
  config = write_sweep_config(
      tmp_path / "sweep_config.py", "c.optimizer.name = 'momentum'", "c.batch_size = 32",
      "c.num_epochs = 6", "c.checkpoint_every_steps = 1000",
      "c.sweep = sweep.to_config(sweep.product(",
      "    sweep.axis('model.hidden_sizes', [[16], [32]]),",
      "    sweep.axis('optimizer.learning_rate', [0.1, 0.3])))")
  args = [f"--config={config}"]
  ref = tmp_path / "ref"
  assert run_cli(args, workdir=ref).returncode == 0
  stopped = _cli(args, tmp_path / "s", VGG_JAX_KILL_AT="sweep_eval:100",
                 VGG_JAX_KILL_SIGNAL="TERM")
  assert stopped.returncode == preemption.EXIT_CODE, stopped.stderr[-2000:]
  assert "Traceback" not in stopped.stderr
  status = _status(tmp_path / "s")
  assert status["status"] == "preempted"
  assert {r["status"] for r in status["runs"].values()} >= {"preempted"}
  rerun = _cli(args, tmp_path / "s")
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert "resumed at step" in rerun.stderr
  assert sweep_results(tmp_path / "s") == sweep_results(ref)
  assert _status(tmp_path / "s")["status"] == "done"


def _hold_lock(workdir):
  """A process that holds workdir's lock until killed."""
  code = ("import sys, time; from vgg_jax.training import workdir as w\n"
          "with w.locked(sys.argv[1]):\n  print('held', flush=True); time.sleep(600)\n")
  holder = subprocess.Popen([sys.executable, "-c", code, str(workdir)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  return holder


def test_a_busy_workdir_is_refused_in_one_line_and_a_killed_holder_does_not_block(tmp_path):
  args = ["--config=configs/default.py", "--config.num_epochs=1"]
  holder = _hold_lock(tmp_path)
  try:
    busy = _cli(args, tmp_path)
    assert busy.returncode == 2
    lines = busy.stderr.strip().splitlines()
    assert len(lines) == 1 and f"in use by pid {holder.pid} on " in lines[0], busy.stderr
    assert sorted(os.listdir(tmp_path)) == [workdir_lib.LOCK_FILE]  # Nothing written.
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  rerun = _cli(args, tmp_path)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  with open(tmp_path / workdir_lib.LOCK_FILE) as f:
    assert f.read().startswith("pid ")


def test_sweep_shards_lock_separately_and_the_lock_is_reentrant(tmp_path):
  with workdir_lib.locked(str(tmp_path)):
    with workdir_lib.locked(str(tmp_path)):  # A nested call in the same process.
      pass
    with workdir_lib.locked(str(tmp_path), name=workdir_lib.LOCK_FILE + "-shard0of2"):
      pass
  holder = _hold_lock(tmp_path)
  try:
    with pytest.raises(workdir_lib.WorkdirBusyError, match="in use by pid"):
      with workdir_lib.locked(str(tmp_path)):
        pass
    start = time.time()
    with workdir_lib.locked(str(tmp_path), name=workdir_lib.LOCK_FILE + "-shard1of2"):
      assert time.time() - start < 5
  finally:
    holder.kill()
    holder.wait()


@pytest.mark.parametrize("workdir", ["", "file", "deep"])
def test_an_unusable_workdir_is_one_line(workdir, tmp_path):
  if workdir == "file":
    (tmp_path / "file").write_text("x")
    workdir = str(tmp_path / "file")
  elif workdir == "deep":
    workdir = str(tmp_path / ("x" * 300))  # A name longer than the filesystem allows.
  proc = _cli(["--config=configs/default.py", "--config.num_epochs=1"], workdir)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("vgg_jax: "), proc.stderr
  assert "Traceback" not in proc.stderr
  json.dumps(lines)  # Plain text.
