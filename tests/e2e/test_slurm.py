"""The SLURM templates (scripts/slurm/), run as SLURM would run them but
without sbatch: SLURM's variables set, `srun` and `scontrol` replaced by
stubs on PATH (srun starts SLURM_NTASKS copies of the command with
SLURM_PROCID set, as it does on a node; scontrol records its arguments).
"""

import json
import os
import random
import socket
import subprocess
import textwrap

import pytest

from conftest import REPO, final_rows, read_csv, run_cli, subprocess_env, write_sweep_config

SRUN = textwrap.dedent('''\
    #!/bin/bash
    # srun's options up to the command, then SLURM_NTASKS copies of it.
    while [[ "$1" == --* ]]; do shift; done
    n=${STUB_NTASKS:-1}
    pids=()
    for ((i = 0; i < n; i++)); do
      SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS=$n SLURM_STEP_NUM_NODES=$n \\
        SLURM_STEP_NODELIST=localhost "$@" &
      pids+=($!)
    done
    code=0
    for pid in "${pids[@]}"; do wait "$pid" || code=$?; done
    exit $code
    ''')
SCONTROL = '#!/bin/bash\necho "$@" >> "$STUB_LOG"\n'


@pytest.fixture
def slurm(tmp_path):
  """(run(script, args, **SLURM variables) -> Popen, the scontrol log)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  log = tmp_path / "scontrol.log"

  def run(script, args, ntasks=1, env=None, **slurm_vars):
    full = subprocess_env(PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_LOG=str(log),
                          STUB_NTASKS=str(ntasks), **(env or {}),
                          **{k: str(v) for k, v in slurm_vars.items()})
    full["PYTHON"] = subprocess.list2cmdline([os.sys.executable])
    return subprocess.Popen(["bash", os.path.join(REPO, "scripts", "slurm", script), *args],
                            cwd=REPO, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)

  return run, log


def _array_task(run, task, args, **env):
  return run("sweep_array.sbatch", args, SLURM_ARRAY_JOB_ID=4242, SLURM_ARRAY_TASK_ID=task,
             SLURM_ARRAY_TASK_MIN=0, SLURM_ARRAY_TASK_COUNT=2, SLURM_JOB_ID=5000 + task,
             env=env)


def test_job_array_shards_share_a_workdir_and_a_preempted_task_is_requeued(slurm, tmp_path):
  run, log = slurm
  config = write_sweep_config(
      tmp_path / "sweep.py", "c.optimizer.name = 'momentum'", "c.num_epochs = 3",
      "c.eval_every_steps = 10", "c.checkpoint_every_steps = 10",
      "c.sweep = sweep.to_config(sweep.product(",
      "    sweep.axis('optimizer.learning_rate', [0.03, 0.1]), sweep.axis('seed', [0, 1])))")
  args = ["vgg_jax.main", f"--config={config}", f"--workdir={tmp_path / 'sharded'}"]
  # Two array tasks at once; task 1 is preempted (SIGTERM, as --signal=TERM@120 sends).
  tasks = [_array_task(run, 0, args),
           _array_task(run, 1, args, VGG_JAX_KILL_AT="sweep_eval:10", VGG_JAX_KILL_SIGNAL="TERM")]
  outs = [t.communicate(timeout=300) for t in tasks]
  assert [t.returncode for t in tasks] == [0, 0], outs
  assert "shard 1/2 preempted" in outs[1][0]
  assert log.read_text().split() == ["requeue", "4242_1"]
  preempted = json.loads((tmp_path / "sharded" / "status.json").read_text())
  assert preempted["status"] == "preempted"
  # SLURM runs the requeued task again: it resumes.
  again = _array_task(run, 1, args)
  out, err = again.communicate(timeout=300)
  assert again.returncode == 0, err[-3000:]
  assert "resumed at step" in err

  whole = run_cli([f"--config={config}"], tmp_path / "whole")
  assert whole.returncode == 0, whole.stderr[-3000:]
  merged = json.loads((tmp_path / "sharded" / "status.json").read_text())
  expected = json.loads((tmp_path / "whole" / "status.json").read_text())
  assert merged["status"] == "done" and set(merged["runs"]) == set(expected["runs"])
  assert len(merged["runs"]) == 4
  for run_id, entry in merged["runs"].items():
    assert entry["status"] == "done" and entry["step"] == expected["runs"][run_id]["step"]
    assert len(entry["params_sha256"]) == 64
    # Each shard wrote only its own runs.
    own = json.loads((tmp_path / "sharded" / "runs" / entry["name"] / "status.json").read_text())
    assert own["shard"] == entry["shard"]
  assert {e["shard"] for e in merged["runs"].values()} == {"0/2", "1/2"}
  sharded = final_rows(read_csv(tmp_path / "sharded" / "results.csv"))
  for run_id, row in final_rows(read_csv(tmp_path / "whole" / "results.csv")).items():
    # Members vmapped with other siblings: equal to float rounding.
    assert float(sharded[run_id]["loss"]) == pytest.approx(float(row["loss"]), rel=1e-5)
    assert float(sharded[run_id]["accuracy"]) == pytest.approx(float(row["accuracy"]), abs=1e-6)
  assert not [p for p in os.listdir(tmp_path / "sharded") if ".tmp" in p]


def _coordinator_job_id():
  """A SLURM_JOB_ID whose port (JAX: 61440 + id % 4096) is free here."""
  for _ in range(50):
    port = random.randrange(61440, 65536)
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
      except OSError:
        continue
    return 4096 * 7 + port - 61440
  pytest.skip("no free port in JAX's SLURM range")


def test_multihost_template_runs_one_process_per_task(slurm, tmp_path):
  run, _ = slurm
  config = write_sweep_config(tmp_path / "run.py", "c.num_epochs = 2", "c.batch_size = 32",
                              "c.num_devices = -1")
  job = run("multihost.sbatch", ["vgg_jax.main", f"--config={config}",
                                 f"--workdir={tmp_path / 'run'}"], ntasks=2,
            SLURM_JOB_ID=_coordinator_job_id(), SLURM_JOB_NUM_NODES=2,
            env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  out, err = job.communicate(timeout=300)
  assert job.returncode == 0, err[-3000:]
  assert "process 1 of 2" in err and "4 devices" in err
  status = json.loads((tmp_path / "run" / "status.json").read_text())
  assert status["status"] == "done"
