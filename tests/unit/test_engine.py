"""The one engine: a single run is a sweep of one, and sweeps get what runs have
(checkpoints with mid-group resume, pretrained weights, freezing, cached
features, status), plus full batch and the no-validation sweep."""

import csv
import glob
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import run_cli, tiny_config, write_sweep_config
from vgg_jax import config_lib, data, inference, metrics, models, pretrained, sweep, train
from vgg_jax.errors import ConfigError
from vgg_jax.training import program as program_lib, steps


def _results(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _comparable(rows):
  """results.csv rows without the clock columns, in a fixed order."""
  return sorted(tuple(r[k] for k in ("run_id", "step", "split", "loss", "accuracy", "status"))
                for r in rows)


def _group_states(workdir):
  """{group tag: the stacked state of its newest checkpoint} as raw arrays."""
  out = {}
  for group in sorted(glob.glob(os.path.join(workdir, "checkpoints", "group-*"))):
    step = max(int(d) for d in os.listdir(group) if d.isdigit())
    with ocp.StandardCheckpointer() as ckptr:
      out[os.path.basename(group)] = ckptr.restore(os.path.join(group, str(step), "state"))
  return out


def test_sweep_of_one_equals_the_single_run_bit_for_bit(tmp_path):
  config = tiny_config()
  config.model.dropout_rate = 0.1
  config.optimizer.name = "momentum"
  alone = train.train_and_evaluate(config, str(tmp_path / "alone"))
  config.sweep = sweep.to_config([{"seed": 0}])
  [result] = sweep.run_sweep(config, str(tmp_path / "sweep"))
  status = json.load(open(tmp_path / "sweep" / metrics.STATUS_FILE))
  single = json.load(open(tmp_path / "alone" / metrics.STATUS_FILE))
  assert status["status"] == "done" and status["runs"]["0"]["status"] == "done"
  assert status["runs"]["0"]["params_sha256"] == single["params_sha256"]
  assert result["test_loss"] == alone["loss"] and result["test_accuracy"] == alone["accuracy"]


def test_vmapped_members_record_their_own_fingerprints(tmp_path):
  config = tiny_config()
  config.sweep = sweep.to_config(sweep.axis("seed", [0, 1]))
  sweep.run_sweep(config, str(tmp_path))
  runs = json.load(open(tmp_path / metrics.STATUS_FILE))["runs"]
  assert {r["status"] for r in runs.values()} == {"done"}
  assert runs["0"]["params_sha256"] != runs["1"]["params_sha256"]


def test_sweep_killed_mid_group_resumes_from_its_checkpoint(tmp_path):
  config_file = write_sweep_config(
      tmp_path / "sweep_config.py", "c.model.dropout_rate = 0.2", "c.optimizer.name = 'momentum'",
      "c.batch_size = 32", "c.num_epochs = 4", "c.eval_every_steps = 40",
      "c.checkpoint_every_steps = 50",
      "c.sweep = sweep.to_config(sweep.product(sweep.axis('seed', [0, 1]),",
      "    sweep.axis('optimizer.learning_rate', [0.03, 0.1])))")
  args = [f"--config={config_file}"]
  ref = run_cli(args, workdir=tmp_path / "ref", timeout=600)
  assert ref.returncode == 0, ref.stderr[-2000:]
  killed = run_cli(args, workdir=tmp_path / "killed", env_extra={"VGG_JAX_KILL_AT": "step:130"},
                   timeout=600)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  partial = _results(tmp_path / "killed" / "results.csv")
  assert partial and max(int(r["step"]) for r in partial) >= 120  # Rows past the checkpoint.
  rerun = run_cli(args, workdir=tmp_path / "killed", timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  # Saved at the end of the chunk (epoch end) past each 50 steps: 57, 114.
  assert "resumed at step 114" in rerun.stderr  # Mid-group, not from scratch.
  assert _comparable(_results(tmp_path / "killed" / "results.csv")) == _comparable(
      _results(tmp_path / "ref" / "results.csv"))
  status = json.load(open(tmp_path / "killed" / metrics.STATUS_FILE))
  assert status["status"] == "done" and len(status["runs"]) == 4


def test_sweep_without_validation_and_test_only_at_the_end(tmp_path):
  """Used to die with IndexError: no split to evaluate between the first and last eval."""
  config = tiny_config()
  config.optimizer.name = "sgd"
  config.num_epochs = 3
  config.eval_every_steps = 5
  config.test_every_eval = False
  config.sweep = sweep.to_config(sweep.axis("optimizer.learning_rate", [0.01, 0.1]))
  results = sweep.run_sweep(config, str(tmp_path))
  assert [r["status"] for r in results] == ["done", "done"]
  rows = _results(tmp_path / "results.csv")
  test_steps = {int(r["step"]) for r in rows if r["split"] == "test"}
  train_steps = sorted({int(r["step"]) for r in rows if r["split"] == "train"})
  assert test_steps == {24} and train_steps == [5, 10, 15, 20, 24]
  # Evals land exactly on their interval, mid-epoch too (8 steps per epoch).
  assert all(0 <= float(r["test_accuracy"]) <= 1 for r in results)


def test_full_batch_is_batch_size_minus_one(tmp_path):
  config = tiny_config()
  config.batch_size = -1
  config.num_epochs = 3
  config.optimizer.name = "sgd"
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 3  # One step per epoch: all 256 examples in each.
  rows = metrics.read_metrics(str(tmp_path), "test")
  assert [r["step"] for r in rows] == [1, 2, 3]


# ------------------------------------------------------------ fine-tuning


@pytest.fixture(scope="module")
def conv_weights(tmp_path_factory):
  """A VGG11's conv layers (random, ours) as a torchvision .safetensors file."""
  cfg = config_lib.base_config().model
  cfg.name, cfg.classifier_sizes = "vgg11", (8,)
  model = models.create_model(cfg, 2)
  params = model.init(jax.random.PRNGKey(7), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
  convs = {k: v for k, v in jax.tree.map(np.asarray, params).items() if k.startswith("conv")}
  path = str(tmp_path_factory.mktemp("weights") / "vgg11.safetensors")
  pretrained.write_safetensors(path, pretrained.to_torchvision(convs, "vgg11"))
  return path, convs


def _finetune_config(weights):
  config = tiny_config()
  config.dataset.synthetic.image_shape = (32, 32, 3)
  config.dataset.synthetic.num_train = 64
  config.dataset.synthetic.num_test = 32
  config.dataset.synthetic.num_classes = 2
  config.batch_size = 16
  config.num_epochs = 1
  config.model.name = "vgg11"
  config.model.classifier_sizes = (8,)
  config.model.pretrained = weights
  config.model.pretrained_layers = "conv"
  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.05
  return config


def test_sweep_with_frozen_conv_keeps_pretrained_layers_bit_identical(conv_weights, tmp_path):
  path, convs = conv_weights
  config = _finetune_config(path)
  config.model.freeze = "conv"
  config.sweep_vmap_size = 4  # One vmapped program of four (auto runs a VGG one by one on CPU).
  config.sweep = sweep.to_config(sweep.product(sweep.axis("seed", [0, 1]),
                                               sweep.axis("optimizer.learning_rate", [0.05, 0.2])))
  results = sweep.run_sweep(config, str(tmp_path))
  assert len(results) == 4
  [state] = _group_states(str(tmp_path)).values()
  params = state["params"]
  for layer, arrays in convs.items():
    for name, value in arrays.items():
      stacked = np.asarray(params[layer][name])
      assert stacked.shape == (4,) + value.shape
      for j in range(4):
        np.testing.assert_array_equal(stacked[j], value)  # Frozen: exactly the file's.
  fc = np.asarray(params["fc1"]["kernel"])
  assert not np.array_equal(fc[0], fc[1])  # Trained, and per seed.


def test_sweep_with_pretrained_weights_starts_every_member_from_them(conv_weights, tmp_path):
  path, convs = conv_weights
  config = _finetune_config(path)
  config.num_train_steps = 1
  config.optimizer.learning_rate = 1e-30  # One step that moves nothing measurable.
  config.sweep_vmap_size = 2
  config.sweep = sweep.to_config(sweep.axis("seed", [0, 1]))
  sweep.run_sweep(config, str(tmp_path))
  [state] = _group_states(str(tmp_path)).values()
  np.testing.assert_allclose(np.asarray(state["params"]["conv1_1"]["kernel"])[1],
                             convs["conv1_1"]["kernel"], atol=1e-12)


def test_cached_features_train_with_the_configured_activation(conv_weights, tmp_path):
  """The classifier on cached features is the VGG's own classifier: a run's
  restored whole network gives the logits that the trained classifier gave."""
  path, _ = conv_weights
  config = _finetune_config(path)
  config.model.freeze = "conv"
  config.model.cache_features = True
  config.dataset.pipeline = "memory"
  config.model.activation = "tanh"
  train.train_and_evaluate(config, str(tmp_path))
  dataset = data.load(config.dataset)
  program = program_lib.build(config, dataset.info, 4)
  assert program.model.activation == "tanh"
  model, variables, info, _ = inference.restore_for_inference(str(tmp_path))
  images = dataset.splits["test"][0][:8]
  whole = model.apply(variables, steps.make_preprocess(info["mean"], info["std"])(images),
                      train=False)
  features = model.apply(variables, steps.make_preprocess(info["mean"], info["std"])(images),
                         train=False, cut="conv")
  head = {k: variables["params"][k] for k in ("fc1", "head")}
  trained = program.model.apply({"params": head}, features, train=False)
  np.testing.assert_allclose(np.asarray(whole), np.asarray(trained), rtol=1e-5, atol=1e-5)


def test_cached_features_over_seeds_with_random_frozen_layers_is_a_config_error(conv_weights,
                                                                                 tmp_path):
  path, _ = conv_weights
  config = _finetune_config(path)
  config.model.freeze = "all_but_head"  # fc1 is frozen but not in the conv-only file.
  config.model.cache_features = True
  config.dataset.pipeline = "memory"
  config.sweep_vmap_size = 2  # One program for both seeds: one base, one set of features.
  config.sweep = sweep.to_config(sweep.axis("seed", [0, 1]))
  with pytest.raises(ConfigError, match="sweep over seeds"):
    sweep.run_sweep(config, str(tmp_path))
