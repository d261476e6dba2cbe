"""The optimizer lineup, schedules, clipping, weight decay and injected rates."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vgg_jax import config_lib, data, models, optim, training

# A rate per optimizer that takes a visible step on the tiny problem.
RATES = {"sgd": 0.1, "momentum": 0.1, "nesterov": 0.1, "adagrad": 0.1, "rmsprop": 0.01,
         "adadelta": 1.0, "adam": 0.01, "nadam": 0.01, "adamw": 0.01}


def optimizer_config(**overrides):
  cfg = config_lib.base_config().optimizer
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def tiny_problem(config):
  dataset = data.load(config.dataset)
  model = models.create_model(config.model, dataset.info.num_classes)
  images, labels = dataset.splits["train"]
  batch = {"image": images[:64], "label": labels[:64]}
  preprocess = training.make_preprocess(dataset.info.mean, dataset.info.std)
  return dataset.info, model, batch, preprocess


def test_registry_covers_the_lineage():
  assert set(optim.OPTIMIZERS) == set(RATES)


@pytest.mark.parametrize("name", sorted(RATES))
def test_one_step_of_each_optimizer_lowers_the_loss(name, config):
  dataset, model, batch, preprocess = tiny_problem(config)
  tx, shape = optim.create_optimizer(optimizer_config(name=name, learning_rate=RATES[name]), 10)
  state = training.create_train_state(jax.random.PRNGKey(0), model, tx, dataset.image_shape)
  head = models.get_head("category")
  step = functools.partial(training.train_step, head=head, preprocess=preprocess, lr_multiplier=shape)
  eval_fn = functools.partial(training.eval_step, head=head, preprocess=preprocess)
  mask = np.ones(64, np.float32)
  before = eval_fn(state, batch, mask)["loss"]
  new_state, metrics = jax.jit(step)(state, batch)
  after = eval_fn(new_state, batch, mask)["loss"]
  assert float(metrics["loss"]) == pytest.approx(float(before) / 64, rel=1e-5)
  assert after < before
  assert int(new_state.step) == 1


def test_learning_rate_is_injected_so_changing_it_does_not_recompile():
  params = {"w": jnp.ones(3)}
  tx, _ = optim.create_optimizer(optimizer_config(name="momentum", learning_rate=0.1), 10)
  update = jax.jit(tx.update)
  opt_state = tx.init(params)
  grads = {"w": jnp.ones(3)}
  u1, _ = update(grads, opt_state, params)
  opt_state.hyperparams["learning_rate"] = jnp.asarray(0.5, jnp.float32)
  u2, _ = update(grads, opt_state, params)
  np.testing.assert_allclose(u2["w"], 5 * u1["w"], rtol=1e-6)
  assert update._cache_size() == 1


def test_schedules_have_their_shape():
  total = 100
  warm = optim.schedule_multiplier(optimizer_config(schedule="warmup_cosine", warmup_steps=10), total)
  assert float(warm(0)) == 0.0 and float(warm(10)) == pytest.approx(1.0)
  assert float(warm(total)) == pytest.approx(0.0, abs=1e-6)
  cos = optim.schedule_multiplier(optimizer_config(schedule="cosine"), total)
  assert float(cos(0)) == 1.0 and float(cos(50)) == pytest.approx(0.5, abs=1e-6)
  step = optim.schedule_multiplier(optimizer_config(schedule="step", step_boundaries=(0.5, 0.75),
                                               step_factor=0.1), total)
  assert [float(step(t)) for t in (49, 51, 76)] == pytest.approx([1.0, 0.1, 0.01])
  assert float(optim.schedule_multiplier(optimizer_config(), total)(77)) == 1.0


def test_effective_learning_rate_follows_the_schedule():
  cfg = optimizer_config(name="sgd", learning_rate=0.2, schedule="cosine")
  tx, shape = optim.create_optimizer(cfg, 10)
  params = {"w": jnp.zeros(2)}
  opt_state = tx.init(params)
  grads = {"w": jnp.ones(2)}
  for t in range(6):
    updates, opt_state = tx.update(grads, opt_state, params)
    expected = 0.2 * float(shape(t))
    assert float(optim.learning_rate(opt_state, shape, t)) == pytest.approx(expected)
    np.testing.assert_allclose(updates["w"], -expected, rtol=1e-5)


def test_gradient_clipping_bounds_the_update():
  cfg = optimizer_config(name="sgd", learning_rate=1.0, grad_clip_norm=0.5)
  tx, _ = optim.create_optimizer(cfg, 10)
  params = {"w": jnp.zeros(4)}
  updates, _ = tx.update({"w": jnp.full(4, 10.0)}, tx.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(0.5, rel=1e-5)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_shrinks_params_under_zero_gradient(name):
  cfg = optimizer_config(name=name, learning_rate=0.1, weight_decay=0.5)
  tx, _ = optim.create_optimizer(cfg, 10)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["w"], 1 - 0.1 * 0.5, rtol=1e-6)
