"""The onednn lowering where it cannot be built or is switched off: auto falls
back to blocked and says why, an explicit onednn is a config error, and a
corrupt cached library is rebuilt. Each in a fresh process, since a process
builds (or gives up on) the library once.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from vgg_jax.kernels import onednn

REQUIRED = os.environ.get("VGG_JAX_REQUIRE_ONEDNN") == "1"
needs_onednn = pytest.mark.skipif(
    not REQUIRED and not onednn.available(),
    reason=f"oneDNN unavailable: {onednn.unavailable_reason() or '-'}")


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                        env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_without_a_compiler_auto_falls_back_and_says_why(tmp_path):
  proc = _run("""
      import jax
      from vgg_jax.kernels import conv, onednn
      print(onednn.available(), conv.resolve("auto"), "|", onednn.unavailable_reason())
      """, {"CXX": str(tmp_path / "no-such-g++"), "VGG_JAX_CACHE": str(tmp_path)})
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("False blocked | no C++ compiler"), proc.stdout


def test_switched_off_by_environment(tmp_path):
  proc = _run("""
      from vgg_jax.kernels import conv, onednn
      print(onednn.available(), conv.resolve("auto"), onednn.unavailable_reason())
      """, {"VGG_JAX_ONEDNN": "0", "VGG_JAX_CACHE": str(tmp_path)})
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "False blocked VGG_JAX_ONEDNN=0"
  assert not list(tmp_path.iterdir())  # Nothing was compiled.


def test_explicit_onednn_that_cannot_run_is_a_config_error(tmp_path):
  proc = _run("""
      from vgg_jax import config_lib, config_validation
      from vgg_jax.errors import ConfigError
      config = config_lib.base_config()
      config.model.name, config.model.conv_lowering = "vgg11", "onednn"
      try:
        config_validation.validate(config)
      except ConfigError as e:
        print("ConfigError:", e)
      """, {"VGG_JAX_ONEDNN": "0", "VGG_JAX_CACHE": str(tmp_path)})
  assert "model.conv_lowering='onednn' is invalid" in proc.stdout, proc.stdout + proc.stderr
  assert "VGG_JAX_ONEDNN=0" in proc.stdout


@needs_onednn
def test_a_corrupt_cached_library_is_rebuilt(tmp_path):
  proc = _run("""
      import jax, jax.numpy as jnp
      from vgg_jax.kernels import onednn
      path = onednn.library_path()
      path.parent.mkdir(parents=True)
      path.write_bytes(b"not a shared library")
      y = onednn.conv(jnp.ones((1, 4, 4, 8)), jnp.ones((3, 3, 8, 8)))
      print(onednn.available(), float(y[0, 1, 1, 0]), path.stat().st_size > 1000)
      """, {"VGG_JAX_CACHE": str(tmp_path)})
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ["True", "72.0", "True"]
