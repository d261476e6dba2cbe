"""Sweeps from the command line: the documented digits sweep, its shards, and a
sweep on a dataset that the config file registers.

Sweeps in process: tests/unit/test_sweep.py. Resume: test_resume.py.
"""

import json
import re
import textwrap

from conftest import final_rows, read_csv, run_cli


def test_digits_sweep_in_sequential_shards_and_its_progress(tmp_path):
  """Shards 0/2 then 1/2 into one workdir: the second adds to the first's
  record (it used to leave only its own runs). Concurrent shards, and their
  equality with the unsharded sweep: tests/e2e/test_slurm.py."""
  fast = ["--config=configs/sweep_digits.py", "--config.num_epochs=1"]
  for i in range(2):
    proc = run_cli(fast + [f"--sweep_shard={i}/2"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "12 runs trained" in proc.stdout
  # The progress line: group, runs done, best (and which) and median accuracy, diverged, ETA.
  last = [l for l in proc.stderr.splitlines() if "sweep group 1/1 step 20/20" in l][-1]
  assert re.search(r"runs 12/12 done \| validation acc best 0\.\d+ \(learning_rate=[\d.]+,"
                   r"seed=\d\) median 0\.\d+ \| \d+ diverged \| [\d.]+ steps/s \| ETA ", last), last
  merged = json.loads((tmp_path / "status.json").read_text())
  assert merged["status"] == "done" and len(merged["runs"]) == 24
  assert {r["shard"] for r in merged["runs"].values()} == {"0/2", "1/2"}
  assert all(r["status"] in ("done", "diverged") and len(r["params_sha256"]) == 64
             for r in merged["runs"].values())
  final = final_rows(read_csv(tmp_path / "results.csv"))
  keys = lambda r: (r["optimizer.learning_rate"], r["seed"])
  assert set(final) == set(merged["runs"]) and len({keys(r) for r in final.values()}) == 24


def test_sweep_on_a_dataset_registered_in_the_config_file(loader_file, tmp_path):
  cfg = tmp_path / "sweep_mine.py"
  cfg.write_text(textwrap.dedent(f'''
      import importlib.util
      from vgg_jax import data, sweep
      from vgg_jax.config_lib import base_config

      spec = importlib.util.spec_from_file_location("mine", {str(loader_file)!r})
      mine = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(mine)
      data.register("mine", mine.images)

      def get_config():
        c = base_config()
        c.dataset.name = "mine"
        c.dataset.validation_fraction = 0.1
        c.dataset.crop_padding = 1
        c.model.hidden_sizes = (16,)
        c.num_epochs = 2
        c.sweep = sweep.to_config(sweep.product(
            sweep.axis("optimizer.learning_rate", [0.01, 0.1])))
        return c
  '''))
  proc = run_cli([f"--config={cfg}"], tmp_path / "sweep")
  assert proc.returncode == 0, proc.stderr
  status = json.loads((tmp_path / "sweep" / "status.json").read_text())
  assert status["status"] == "done" and len(status["runs"]) == 2, status
  assert all(r["status"] == "done" for r in status["runs"].values()), status
