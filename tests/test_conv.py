"""Conv lowerings: same outputs, gradients and parameter tree as XLA's conv."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgg_jax import config_lib, models
from vgg_jax.models import conv

LOWERINGS = ("im2col", "shifted")


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 7, 5, 4)])
def test_conv_outputs_and_gradients_match_xla(lowering, shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, shape[-1], 6)) * 0.3
  loss = lambda lw: lambda x, k: jnp.sum(jnp.sin(conv.conv3x3(x, k, lw)))
  np.testing.assert_allclose(conv.conv3x3(x, k, lowering), conv.conv3x3(x, k, "xla"),
                             rtol=1e-5, atol=1e-5)
  got = jax.grad(loss(lowering), argnums=(0, 1))(x, k)
  want = jax.grad(loss("xla"), argnums=(0, 1))(x, k)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 5, 3)])
def test_reshape_pool_matches_reduce_window(shape):
  x = jax.random.normal(jax.random.PRNGKey(2), shape)
  np.testing.assert_array_equal(conv.max_pool2x2(x, "im2col"), conv.max_pool2x2(x, "xla"))
  g = jax.grad(lambda x: jnp.sum(conv.max_pool2x2(x, "im2col") ** 2))(x)
  w = jax.grad(lambda x: jnp.sum(conv.max_pool2x2(x, "xla") ** 2))(x)
  np.testing.assert_allclose(g, w, rtol=1e-6)


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_vgg_lowerings_share_params_outputs_and_gradients(lowering):
  cfg = config_lib.base_config().model
  cfg.name, cfg.width_multiplier, cfg.classifier_sizes, cfg.dropout_rate = "vgg11", 1 / 16, (8,), 0
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 28, 28, 1))
  nets = {}
  for lw in ("xla", lowering):
    cfg.conv_lowering = lw
    nets[lw] = models.create_model(cfg, 5)
  params = nets["xla"].init(jax.random.PRNGKey(0), x, train=False)
  same_tree = nets[lowering].init(jax.random.PRNGKey(0), x, train=False)
  assert jax.tree.structure(params) == jax.tree.structure(same_tree)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(same_tree)):
    np.testing.assert_array_equal(a, b)  # Same names, shapes and initial values.

  def loss(lw, p):
    return jnp.sum(nets[lw].apply(p, x, train=False) ** 2)

  np.testing.assert_allclose(nets[lowering].apply(params, x, train=False),
                             nets["xla"].apply(params, x, train=False), rtol=1e-4, atol=1e-5)
  got = jax.grad(functools.partial(loss, lowering))(params)
  want = jax.grad(functools.partial(loss, "xla"))(params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_auto_is_the_default_and_picks_by_backend():
  assert config_lib.base_config().model.conv_lowering == "auto"
  expected = "im2col" if jax.default_backend() == "cpu" else "xla"
  assert conv.resolve("auto") == expected
  assert conv.resolve("shifted") == "shifted"
