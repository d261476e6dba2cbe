"""Conv lowerings: same outputs, gradients and parameter tree as XLA's conv."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgg_jax import config_lib, models
from vgg_jax.kernels import conv, onednn, pooling

# onednn joins where it can be built (test_onednn.py requires it in CI).
LOWERINGS = ("im2col", "shifted", "blocked") + (("onednn",) if onednn.available() else ())


def pool(x, lowering):
  return pooling.max_pool(x, (2, 2), strides=(2, 2), padding="SAME", lowering=lowering)


@pytest.mark.parametrize("lowering", LOWERINGS)
# 4x4 and below take the blocked lowering's valid-taps path.
@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 7, 5, 4), (2, 4, 4, 3), (3, 2, 3, 4),
                                   (2, 1, 1, 3)])
def test_conv_outputs_and_gradients_match_xla(lowering, shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, shape[-1], 6)) * 0.3
  loss = lambda lw: lambda x, k: jnp.sum(jnp.sin(conv.conv3x3(x, k, lw)))
  # The lowering compiled, as training runs it (eager it took 5x as long);
  # eager against compiled: test_jit_gradient_equals_eager_through_batch_norm_and_pool.
  np.testing.assert_allclose(jax.jit(functools.partial(conv.conv3x3, lowering=lowering))(x, k),
                             conv.conv3x3(x, k, "xla"), rtol=1e-5, atol=1e-5)
  got = jax.jit(jax.grad(loss(lowering), argnums=(0, 1)))(x, k)
  want = jax.grad(loss("xla"), argnums=(0, 1))(x, k)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 5, 3)])
def test_reshape_pool_matches_reduce_window(shape):
  x = jax.random.normal(jax.random.PRNGKey(2), shape)
  np.testing.assert_array_equal(pool(x, "im2col"), pool(x, "xla"))
  g = jax.grad(lambda x: jnp.sum(pool(x, "im2col") ** 2))(x)
  w = jax.grad(lambda x: jnp.sum(pool(x, "xla") ** 2))(x)
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

  # Compiled, as training runs it (eager, the im2col VGG took 14 s).
  apply = {lw: jax.jit(functools.partial(net.apply, train=False)) for lw, net in nets.items()}
  np.testing.assert_allclose(apply[lowering](params, x), apply["xla"](params, x),
                             rtol=1e-4, atol=1e-5)
  got = jax.jit(jax.grad(functools.partial(loss, lowering)))(params)
  want = jax.jit(jax.grad(functools.partial(loss, "xla")))(params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def _reference_conv_layer(x, k, b, relu):
  y = conv.conv3x3(x, k, "xla") + b
  return jax.nn.relu(y) if relu else y


@pytest.mark.parametrize("cin,cout,size", [(3, 5, (6, 5)), (5, 3, (6, 5)), (4, 4, (6, 5)),
                                           (1, 6, (6, 5)), (4, 4, (4, 3)), (5, 3, (2, 2))])
@pytest.mark.parametrize("relu", [True, False])
def test_blocked_conv_over_several_blocks_matches_xla(monkeypatch, cin, cout, size, relu):
  """Seven images in blocks of 3 (so the batch is also zero-padded to 9),
  with bias and the fused ReLU: outputs and all three gradients, for each
  method: "in" (cin < cout), "out", and "valid" (4x3 and 2x2 images)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (7,) + size + (cin,))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, cin, cout)) * 0.4
  b = jnp.linspace(-0.5, 0.5, cout)
  monkeypatch.setattr(conv, "BLOCK_BYTES", 1)
  monkeypatch.setattr(conv, "ROWS_PER_WEIGHT_ROW", 0)
  monkeypatch.setattr(conv, "block_size", lambda shape, cout: 3)
  layer = lambda x, k, b: conv.blocked_conv(x, k, b, relu=relu)
  np.testing.assert_allclose(jax.jit(layer)(x, k, b), _reference_conv_layer(x, k, b, relu),
                             rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, k, b: jnp.sum(jnp.sin(3 * f(x, k, b)))
  got = jax.jit(jax.grad(loss(layer), argnums=(0, 1, 2)))(x, k, b)
  want = jax.grad(loss(lambda x, k, b: _reference_conv_layer(x, k, b, relu)),
                  argnums=(0, 1, 2))(x, k, b)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_block_size_prefers_divisors_and_caps_at_the_batch(monkeypatch):
  monkeypatch.setattr(conv, "ROWS_PER_WEIGHT_ROW", 0)
  per_image = 5 * 5 * 9 * 8 * 4  # 5x5 images, min(cin, cout) = 8.
  monkeypatch.setattr(conv, "BLOCK_BYTES", 5 * per_image)
  assert conv.block_size((12, 5, 5, 8), 16) == 4    # The largest divisor of 12 under 5.
  assert conv.block_size((13, 5, 5, 8), 16) == 5    # Prime: pad to 15 rather than 13 blocks.
  assert conv.block_size((3, 5, 5, 8), 16) == 3     # Never more than the batch.
  monkeypatch.setattr(conv, "BLOCK_BYTES", 1)
  assert conv.block_size((3, 5, 5, 8), 16) == 1
  monkeypatch.setattr(conv, "ROWS_PER_WEIGHT_ROW", 4)  # 4 * 16 rows / 25 per image.
  assert conv.block_size((12, 5, 5, 8), 16) == 3
  # 2x2 images take the valid-taps method: 16 tap pixels per image, no floor.
  monkeypatch.setattr(conv, "BLOCK_BYTES", 4 * 16 * 8 * 4)
  assert conv._method((8, 2, 2, 8), 8) == "valid"  # pylint: disable=protected-access
  assert conv.block_size((8, 2, 2, 8), 8) == 4


def test_blocked_conv_under_vmap_matches_xla():
  """Sweeps vmap the model over hyperparameters: the custom VJP must batch."""
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 6, 6, 2))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 2, 4))
  b = jnp.zeros((3, 4))

  def loss(layer):
    return lambda x, k, b: jnp.sum(jnp.tanh(jax.vmap(layer)(x, k, b)))

  blocked = lambda x, k, b: conv.blocked_conv(x, k, b, relu=True)
  reference = lambda x, k, b: _reference_conv_layer(x, k, b, True)
  got = jax.jit(jax.grad(loss(blocked), argnums=(0, 1)))(x, k, b)
  want = jax.grad(loss(reference), argnums=(0, 1))(x, k, b)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_blocked_bfloat16_vgg_stays_close_to_float32():
  cfg = config_lib.base_config().model
  cfg.name, cfg.width_multiplier, cfg.classifier_sizes, cfg.dropout_rate = "vgg11", 1 / 16, (8,), 0
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 32, 32, 1))
  cfg.conv_lowering = "blocked"
  net32 = models.create_model(cfg, 5)
  params = net32.init(jax.random.PRNGKey(0), x, train=False)
  net16 = models.create_model(cfg, 5, dtype="bfloat16")
  # Compiled, as training runs it (eager, this test took 30 s).
  grads = jax.jit(jax.grad(
      lambda p: jnp.sum(net16.apply(p, x, train=False).astype(jnp.float32))))(params)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  apply16 = jax.jit(functools.partial(net16.apply, train=False))
  np.testing.assert_allclose(apply16(params, x).astype(jnp.float32),
                             net32.apply(params, x, train=False), rtol=0.1, atol=0.1)


def test_auto_is_the_default_and_picks_by_backend():
  assert config_lib.base_config().model.conv_lowering == "auto"
  expected = "xla"
  if jax.default_backend() == "cpu":
    expected = "onednn" if onednn.available() else "blocked"
  assert conv.resolve("auto") == expected
  assert conv.resolve("shifted") == "shifted"


@pytest.mark.parametrize("lowering", ("xla",) + LOWERINGS)
@pytest.mark.parametrize("size", [16, 17])
def test_jit_gradient_equals_eager_through_batch_norm_and_pool(lowering, size):
  """Regression: a -inf-padded reshape pool after a batch normalization got
  wrong gradients under jit on XLA:CPU; every lowering must match eager."""
  x = jax.random.normal(jax.random.PRNGKey(0), (8, size, size, 1))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 1, 4))

  def net(k):
    y = conv.conv3x3(x, k, lowering)
    y = (y - y.mean((0, 1, 2))) / jnp.sqrt(y.var((0, 1, 2)) + 1e-5)
    return jnp.sum(jnp.sin(pool(jax.nn.relu(y), lowering)))

  np.testing.assert_allclose(jax.jit(jax.grad(net))(k), jax.grad(net)(k), rtol=1e-4, atol=1e-4)


def test_pool_gradient_goes_to_the_first_maximum_like_reduce_window():
  """Ties (all-zero windows after ReLU) must not split or lose the gradient."""
  x = jnp.array([[0.0, 0.0, 1.0, 3.0], [0.0, 0.0, 3.0, 2.0]]).reshape(1, 2, 4, 1)
  g = jax.jit(jax.grad(lambda x: jnp.sum(pool(x, "im2col") * jnp.array([2.0, 5.0])
                                                  .reshape(1, 1, 2, 1))))(x)
  w = jax.grad(lambda x: jnp.sum(pool(x, "xla") * jnp.array([2.0, 5.0])
                                 .reshape(1, 1, 2, 1)))(x)
  np.testing.assert_array_equal(g, w)
  assert float(g.sum()) == 7.0


def test_im2col_training_steps_match_xla_after_updates():
  """Regression: with jax_disable_most_optimizations (as in these tests) the
  reshape pool's backward once compared against a recomputed input and lost
  gradients from the second step on."""
  import functools  # pylint: disable=g-import-not-at-top,redefined-outer-name,reimported
  from vgg_jax import optim, training  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (32, 32, 32, 1)).astype(np.uint8),
           "label": rng.integers(0, 3, 32).astype(np.int32)}
  norms = {}
  for lowering in ("xla", "im2col", "blocked") + (("onednn",) if onednn.available() else ()):
    cfg = config_lib.base_config()
    cfg.model.name, cfg.model.width_multiplier, cfg.model.classifier_sizes = "vgg11", 1 / 32, (8,)
    cfg.model.batch_norm, cfg.model.dropout_rate, cfg.model.conv_lowering = True, 0.0, lowering
    cfg.optimizer.name, cfg.optimizer.learning_rate = "momentum", 0.05
    model = models.create_model(cfg.model, 3)
    tx, shape = optim.create_optimizer(cfg.optimizer, 10)
    state = training.create_train_state(jax.random.PRNGKey(0), model, tx, (32, 32, 1))
    step = jax.jit(functools.partial(training.train_step, head=models.get_head("category"),
                                     preprocess=training.make_preprocess((0.5,), (0.25,)),
                                     lr_multiplier=shape))
    norms[lowering] = []
    for _ in range(4):
      state, m = step(state, batch)
      norms[lowering].append(float(m["grad_norm"]))
  for lowering, got in norms.items():
    np.testing.assert_allclose(got, norms["xla"], rtol=1e-4, err_msg=lowering)


def test_vgg_is_drawn_with_flax_conv_and_max_pool_and_cpu_kernels_swap_in():
  """xla keeps flax's own nn.Conv (followed by the ReLU) and nn.max_pool; the
  CPU lowerings inject kernels with the same call (a 3x3 'SAME' conv only)
  and parameters."""
  import flax.linen as nn
  from vgg_jax import kernels
  from vgg_jax.models import components
  cfg = config_lib.base_config().model
  cfg.name, cfg.width_multiplier, cfg.classifier_sizes = "vgg11", 0.125, (16,)
  cfg.conv_lowering = "xla"
  model = models.create_model(cfg, 3)
  assert model.conv is components.Conv and model.pool is nn.max_pool
  assert issubclass(components.Conv, nn.Conv)
  cfg.conv_lowering = "blocked"
  blocked = models.create_model(cfg, 3)
  assert blocked.conv.func is kernels.Conv3x3 and blocked.pool.func is kernels.max_pool
  assert blocked == models.create_model(cfg, 3)  # Equal modules: compiled once.
  x = jnp.ones((2, 32, 32, 1))
  shapes = lambda m: jax.tree.map(jnp.shape, m.init(jax.random.PRNGKey(0), x, train=False))
  assert shapes(model) == shapes(blocked)
  with pytest.raises(ValueError, match="only 3x3 'SAME'"):
    kernels.Conv3x3(4, kernel_size=(5, 5)).init(jax.random.PRNGKey(0), x)
