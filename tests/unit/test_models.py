"""Models and heads: exact parameter counts, output shapes, dtypes, input limits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgg_jax import config_lib, models
from vgg_jax.models import VGG, VGG_STAGES


def count_params(module, shape):
  """Parameter count from abstract shapes only: nothing is allocated."""
  init = functools.partial(module.init, train=False)
  variables = jax.eval_shape(init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(shape, jnp.float32))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


# Reference counts: the paper's networks at 224x224x3 with 1000 classes
# (torchvision's vgg11/13/16/19 have the same numbers).
@pytest.mark.parametrize("name,expected", [("vgg11", 132_863_336), ("vgg13", 133_047_848),
                                           ("vgg16", 138_357_544), ("vgg19", 143_667_240)])
def test_vgg_param_counts_at_imagenet_shape(name, expected):
  model = VGG(stages=VGG_STAGES[name], num_outputs=1000)
  assert count_params(model, (1, 224, 224, 3)) == expected


def test_mlp_param_count_and_layer_names():
  model = models.MLP(hidden_sizes=(256, 128), num_outputs=10)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1)), train=False)
  assert set(variables["params"]) == {"hidden_0", "hidden_1", "output"}
  expected = 64 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
  assert count_params(model, (1, 8, 8, 1)) == expected


@pytest.mark.parametrize("head,outputs", [("value", 10), ("binary", 1), ("category", 10)])
@pytest.mark.parametrize("model_name", ["mlp", "vgg11"])
def test_output_shape_per_head(head, outputs, model_name):
  cfg = config_lib.base_config().model
  cfg.name, cfg.width_multiplier, cfg.classifier_sizes = model_name, 1 / 32, (8,)
  model = models.create_model(cfg, models.get_head(head).num_outputs(10))
  x = jnp.zeros((3, 32, 32, 3))
  # Compiled: a VGG's custom convolutions op by op took 4 s a case.
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), x)
  out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  assert out.shape == (3, outputs)
  labels = jnp.array([0, 1, 0])
  assert models.get_head(head).loss(out, labels).shape == (3,)


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_vgg16_small_inputs_reach_a_1x1_map(shape):
  model = VGG(stages=VGG_STAGES["vgg16"], num_outputs=10, classifier_sizes=(16,),
              width_multiplier=1 / 16)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                             jax.ShapeDtypeStruct((2,) + shape, jnp.float32))
  # Five pools take 28 or 32 down to 1x1, so fc1 sees exactly 512/16 features.
  assert variables["params"]["fc1"]["kernel"].shape == (32, 16)


def test_vgg_rejects_too_small_input():
  model = VGG(stages=VGG_STAGES["vgg16"], num_outputs=10, classifier_sizes=(), width_multiplier=0.05)
  with pytest.raises(ValueError, match="too small"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)), train=False)


def test_bfloat16_compute_keeps_float32_params():
  cfg = config_lib.base_config().model
  model = models.create_model(cfg, 10, dtype="bfloat16")
  x = jnp.ones((2, 8, 8, 1))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert model.apply(variables, x, train=False).dtype == jnp.bfloat16


def test_vgg_batch_norm_collects_stats_and_dropout_is_functional():
  model = VGG(stages=((4,), (8,)), num_outputs=3, classifier_sizes=(8,), batch_norm=True,
              dropout_rate=0.5)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), x)
  assert "batch_stats" in variables and "bias" not in variables["params"]["conv1_1"]
  run = jax.jit(lambda key: model.apply(variables, x, train=True, rngs={"dropout": key},
                                        mutable=["batch_stats"]))
  (out_a, stats), (out_b, _), (out_c, _) = run(jax.random.PRNGKey(5)), run(
      jax.random.PRNGKey(5)), run(jax.random.PRNGKey(6))
  np.testing.assert_array_equal(out_a, out_b)  # Same key, same masks: no hidden state.
  assert not np.allclose(out_a, out_c)
  assert not np.allclose(stats["batch_stats"]["bn1_1"]["mean"],
                         variables["batch_stats"]["bn1_1"]["mean"])


@pytest.mark.parametrize("init,expected_std", [
    ("classic_uniform", 1 / np.sqrt(3 * 400)), ("glorot_uniform", np.sqrt(2 / (400 + 300))),
    ("he_normal", np.sqrt(2 / 400)), ("lecun_normal", np.sqrt(1 / 400))])
def test_kernel_inits_have_their_variance(init, expected_std):
  kernel = models.components.kernel_init(init)(jax.random.PRNGKey(0), (400, 300))
  assert np.std(np.asarray(kernel)) == pytest.approx(expected_std, rel=0.05)
  if init == "classic_uniform":
    assert np.abs(kernel).max() <= 1 / np.sqrt(400)


def test_heads_losses_are_the_textbook_formulas():
  logits = jnp.array([[2.0, -1.0], [0.5, 0.5]])
  labels = jnp.array([0, 1])
  ce = models.get_head("category").loss(logits, labels)
  np.testing.assert_allclose(ce, -jax.nn.log_softmax(logits)[jnp.arange(2), labels], rtol=1e-6)
  mse = models.get_head("value").loss(logits, labels)
  np.testing.assert_allclose(mse, [((2 - 1) ** 2 + 1) / 2, (0.25 + 0.25) / 2], rtol=1e-6)
  bce = models.get_head("binary").loss(logits[:, :1], labels)
  p = jax.nn.sigmoid(logits[:, 0])
  np.testing.assert_allclose(bce, [-np.log(1 - p[0]), -np.log(p[1])], rtol=1e-5)
