"""The onednn lowering: XLA's outputs and gradients, fast kernels for VGG's
shapes. Its fallback (or clear error) where it cannot be built, in fresh
processes: tests/e2e/test_onednn_fallback.py."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgg_jax import config_lib, config_validation
from vgg_jax.errors import ConfigError
from vgg_jax.kernels import conv, onednn

# CI installs g++ (oneDNN comes from pip) and sets this, so there these tests must
# run; elsewhere they skip when oneDNN cannot be built.
REQUIRED = os.environ.get("VGG_JAX_REQUIRE_ONEDNN") == "1"
needs_onednn = pytest.mark.skipif(
    not REQUIRED and not onednn.available(),
    reason=f"oneDNN unavailable: {onednn.unavailable_reason() or '-'}")


def test_onednn_builds_where_required():
  if not REQUIRED:
    pytest.skip("VGG_JAX_REQUIRE_ONEDNN is not set")
  assert onednn.available(), onednn.unavailable_reason()


def _reference(x, k, b, relu):
  y = conv.conv3x3(x, k, "xla") + b
  return jax.nn.relu(y) if relu else y


@needs_onednn
@pytest.mark.parametrize("relu", [True, False])
# Channel blocks 16 (and AVX-512's), 8, NCHW for the image and odd widths,
# mixed; 1x1 and non-square images.
@pytest.mark.parametrize("shape,cout", [((2, 8, 8, 16), 32), ((2, 6, 6, 8), 8),
                                        ((3, 7, 5, 3), 5), ((2, 6, 6, 1), 16),
                                        ((1, 2, 3, 24), 40), ((2, 1, 1, 16), 16),
                                        ((2, 4, 4, 64), 48)])
def test_outputs_and_all_gradients_match_xla(shape, cout, relu):
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  x = jax.random.normal(keys[0], shape)
  k = jax.random.normal(keys[1], (3, 3, shape[-1], cout)) * 0.2
  b = jax.random.normal(keys[2], (cout,)) * 0.1
  g = jax.random.normal(keys[3], shape[:-1] + (cout,))
  want, want_vjp = jax.vjp(lambda *a: _reference(*a, relu), x, k, b)
  got, got_vjp = jax.jit(lambda *a: jax.vjp(lambda *a: onednn.conv(*a, relu=relu), *a))(x, k, b)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for name, gv, wv in zip(("dx", "dkernel", "dbias"), got_vjp(g), want_vjp(g)):
    np.testing.assert_allclose(gv, wv, rtol=1e-4, atol=1e-4, err_msg=name)


@needs_onednn
def test_kernel_only_gradient_and_no_bias():
  """The image path: no input gradient asked for (none is computed), no bias."""
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 1, 16))
  loss = lambda lw: lambda k: jnp.sum(jnp.sin(conv.conv3x3(x, k, lw)))
  np.testing.assert_allclose(jax.jit(jax.grad(loss("onednn")))(k), jax.grad(loss("xla"))(k),
                             rtol=1e-4, atol=1e-4)


@needs_onednn
def test_vmap_over_kernels_matches_a_loop():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 16))
  ks = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 16, 16))
  batched = jax.jit(jax.vmap(lambda k: onednn.conv(x, k, relu=True)))(ks)
  for i in range(3):
    np.testing.assert_allclose(batched[i], onednn.conv(x, ks[i], relu=True), rtol=1e-6)


def _vgg16_shapes(multiplier, batch=128):
  from vgg_jax.models import VGG_STAGES, vgg as vgg_lib  # pylint: disable=g-import-not-at-top
  shapes, size, cin = [], 32, 1
  for stage in VGG_STAGES["vgg16"]:
    for c in stage:
      cout = vgg_lib.scaled_width(c, multiplier)
      shapes.append(((batch, size, size, cin), cout))
      cin = cout
    size //= 2
  return shapes


@needs_onednn
@pytest.mark.parametrize("multiplier", [1.0, 0.25, 0.125, 1 / 16])
def test_auto_never_runs_onednn_reference_code_on_vgg16(multiplier):
  """oneDNN silently falls back to reference loops (100-1000x slower) for
  layouts its JIT kernels do not take (e.g. 4 -> 8 channels); auto gives those
  layers to the blocked lowering. The benchmark's shapes (full and 1/4 width)
  all get JIT kernels; only the full-width 2x2 layers stay on blocked."""
  for shape, cout in _vgg16_shapes(multiplier):
    lowering = conv.resolve("auto", jnp.float32, shape, cout)
    if multiplier in (1.0, 0.25):
      wide_2x2 = shape[1] == 2 and multiplier == 1.0
      assert lowering == ("blocked" if wide_2x2 else "onednn"), (shape, cout)
    if lowering != "onednn":
      continue
    kinds = ["forward", "backward_weights"] + (["backward_data"] if shape[-1] > 1 else [])
    for kind in kinds:
      impl = onednn.implementation(shape, cout, kind)
      assert impl and not impl.startswith("ref"), (shape, cout, kind, impl)


def test_auto_resolution():
  if jax.default_backend() != "cpu":
    assert conv.resolve("auto") == "xla"
    return
  assert conv.resolve("auto") == ("onednn" if onednn.available() else "blocked")
  assert conv.resolve("auto", jnp.bfloat16) == "blocked"  # oneDNN here is float32 only.
  assert conv.resolve("blocked") == "blocked"
  assert conv.resolve("auto", jnp.float32, (8, 2, 2, 512), 512) == "blocked"  # Mostly padding.
  assert conv.resolve("auto", jnp.float32, (8, 2, 2, 128), 128) == "onednn"


def test_bfloat16_model_on_auto_runs_the_blocked_lowering():
  layer = conv.Conv3x3(16, dtype=jnp.bfloat16, activation=jax.nn.relu)
  x = jnp.ones((2, 4, 4, 8), jnp.bfloat16)
  params = layer.init(jax.random.PRNGKey(0), x)
  assert layer.apply(params, x).dtype == jnp.bfloat16


@needs_onednn
def test_explicit_onednn_with_bfloat16_is_a_config_error():
  config = config_lib.base_config()
  config.model.name, config.model.conv_lowering, config.dtype = "vgg11", "onednn", "bfloat16"
  with pytest.raises(ConfigError, match="float32 only"):
    config_validation.validate(config)
