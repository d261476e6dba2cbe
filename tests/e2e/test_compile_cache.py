"""The compile cache: one compile per distinct program, results bit for bit
those of compiling anew, nothing left on disk by default."""

import json
import os
import subprocess
import sys

from conftest import REPO

# A sweep of two seeds trained one model at a time: the second run builds the
# first one's programs again (new jitted functions, the same HLO).
SCRIPT = r"""
import csv, json, os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import conftest  # 8 fake devices, cheap compiles: as the suite runs.
import jax
from vgg_jax import compile_cache, sweep
compile_cache.MIN_COMPILE_SECONDS = 0.0  # The suite's compiles are all fast.
hits = []
jax.monitoring.register_event_listener(
    lambda event, **_: hits.append(1) if event == "/jax/compilation_cache/cache_hits" else None)
directory = compile_cache.enable()
config = conftest.tiny_config()
config.sweep = sweep.to_config(sweep.axis("seed", [0, 1]))
config.sweep_vmap_size = 1
sweep.run_sweep(config, sys.argv[2])
with open(os.path.join(sys.argv[2], "results.csv"), newline="") as f:
  rows = [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in csv.DictReader(f)]
print(json.dumps({"dir": directory, "hits": len(hits), "rows": rows}))
"""


def _run(tmp_path, name, cache_env=None):
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env.pop("VGG_JAX_COMPILATION_CACHE", None)
  if cache_env is not None:
    env["VGG_JAX_COMPILATION_CACHE"] = cache_env
  out = subprocess.run([sys.executable, "-c", SCRIPT, REPO, str(tmp_path / name)], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_runs_of_one_sweep_share_compiles_bit_for_bit(tmp_path):
  cached = _run(tmp_path, "cached")
  # The second run loaded the first one's programs instead of compiling them.
  assert cached["hits"] >= 2
  # A private directory, gone with the process.
  assert cached["dir"] and not os.path.exists(cached["dir"])
  uncached = _run(tmp_path, "uncached", cache_env="0")
  assert uncached["dir"] is None and uncached["hits"] == 0
  # Every row (loss, accuracy per eval, both runs) equal to compiling anew.
  assert len(cached["rows"]) == len(uncached["rows"]) > 4
  assert cached["rows"] == uncached["rows"]


def test_a_named_cache_directory_persists_across_processes(tmp_path):
  directory = tmp_path / "xla"
  first = _run(tmp_path, "first", cache_env=str(directory))
  assert first["dir"] == str(directory) and any(directory.iterdir())
  second = _run(tmp_path, "second", cache_env=str(directory))
  # Every program of the second process came from the first one's entries.
  assert second["hits"] > first["hits"]
  assert second["rows"] == first["rows"]
