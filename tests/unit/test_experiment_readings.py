"""Each experiment's verdicts, as pure functions of synthetic statistics, and
the words the reports put over them: batch_size's regimes and GD vs SGD,
dropout's choice on validation weighed against seed noise, learning_rate's
too small / too large, the optimizers' inclusions and "when unsure, Adam",
vanishing_gradient's depth and gradient ratios; Welch's t; the 2-D surfaces.

What the experiment commands write: tests/e2e/test_experiments.py."""

import pytest


def test_batch_size_regimes_follow_the_scaling_efficiency():
  """Shallue et al.'s three regimes, read off steps to target per batch size."""
  from experiments import batch_size
  steps = {16: 1600, 32: 800, 64: 560, 128: 500, 256: 490}  # 1.0, 0.51, 0.16, 0.03.
  stats = [{"bs": bs, "reached": True, "steps": (s, 0.0), "seconds": (s / 100, 0.0)}
           for bs, s in steps.items()]
  stats.append({"bs": 512, "reached": False, "steps": (float("nan"),) * 2})
  found = batch_size.regimes(stats)
  assert [(g["from"], g["to"]) for g in found] == [(16, 32), (32, 64), (64, 128), (128, 256)]
  assert [g["regime"] for g in found] == ["perfect scaling", "diminishing returns",
                                          "maximal data parallelism", "maximal data parallelism"]
  assert found[0]["efficiency"] == pytest.approx(1.0)
  v = batch_size.verdicts(stats, found, num_train=10_000)
  assert v["in_order"] and v["perfect"] and v["missed"] == [512]
  assert v["spans"] == [["perfect scaling", 16, 32], ["diminishing returns", 32, 64],
                        ["maximal data parallelism", 64, 256]]
  text = batch_size._regime_text(v, num_train=10_000)
  assert "perfect scaling from batch 16 to 32" in text
  assert "maximal data parallelism from batch 64 to 256" in text
  assert "Shallue et al.'s order" in text and "not Shallue" not in text
  assert "No step up scaled perfectly" not in text
  text = batch_size._regime_text(batch_size.verdicts(stats, found[1:], 10_000), num_train=10_000)
  assert "No step up scaled perfectly" in text and "batch 32 to 64, got 0.51" in text
  # Batches over half a small dataset are left out; full batch stays.
  sizes = (16, 1024, 4096, batch_size.FULL)
  assert batch_size._sizes_for(sizes, 1294) == [16, batch_size.FULL]
  assert batch_size._sizes_for(sizes, 2048) == [16, 1024, batch_size.FULL]


def test_welch_t_weighs_a_difference_against_seed_spread():
  from vgg_jax import report
  assert report.welch_t([1, 2, 3], [4, 5, 6]) == pytest.approx(3 / (2 / 3) ** 0.5)
  assert report.welch_t([4, 5, 6], [1, 2, 3]) == pytest.approx(-3 / (2 / 3) ** 0.5)
  assert report.welch_t([0.5, 0.5], [0.5, 0.5]) == 0.0
  assert report.welch_t([0.5, 0.5], [0.6, 0.6]) == float("inf")
  assert report.welch_t([0.5], [0.6, 0.7]) != report.welch_t([0.5], [0.6, 0.7])  # NaN.


def test_dropout_reading_picks_on_validation_and_weighs_seed_noise():
  from experiments import dropout

  def stats(label, val, tests, loss_gap):
    mean = sum(tests) / len(tests)
    return {"label": label, "val_acc": (val, 0.0), "test_acc": (mean, 0.001),
            "test_accs": tests, "train_acc": (1.0, 0.0), "gap": (1.0 - mean, 0.0),
            "loss_gap": (loss_gap, 0.0), "test_loss": (loss_gap, 0.0),
            "best_test_loss": (0.5, 0.0)}

  base = stats("dropout 0", 0.83, [0.830, 0.832, 0.831], 1.3)
  # Best on test but not on validation: must not be the one compared.
  lucky = stats("dropout 0.2", 0.80, [0.860, 0.861, 0.862], 1.2)
  real = stats("dropout 0.5", 0.84, [0.838, 0.839, 0.840], 0.7)
  for s in (base, lucky, real):
    s["t"] = dropout.report.welch_t(base["test_accs"], s["test_accs"])
  v = dropout.verdicts([base, lucky, real])
  assert v["best"] is real and v["narrowest"] is real  # Never chosen on test.
  assert v["noise"] == "beyond" and v["agrees"] == "both" and v["narrows"]
  text = dropout.reading(v)
  assert "best on validation, dropout 0.5," in text
  assert "beyond seed noise (2 or more)" in text and "agrees on both counts" in text
  noisy = stats("dropout 0.5", 0.84, [0.825, 0.845, 0.834], 0.7)
  noisy["t"] = dropout.report.welch_t(base["test_accs"], noisy["test_accs"])
  v = dropout.verdicts([base, noisy])
  assert v["noise"] == "within" and v["agrees"] == "gap only"
  text = dropout.reading(v)
  assert "not beyond seed noise" in text and "agrees on both counts" not in text
  assert dropout.reading(dropout.verdicts([base])).startswith("Only one dropout setting")


def test_batch_size_gd_loses_when_a_mini_batch_reaches_the_target_sooner():
  from experiments import batch_size

  def size(bs, reached, steps, seconds):
    return {"bs": bs, "reached": reached, "steps": (steps, 0.0), "seconds": (seconds, 0.1),
            "val_acc": (0.8, 0.0)}

  stats = [size(32, True, 400, 2.0), size(128, True, 150, 1.5), size(1000, True, 40, 6.0)]
  v = batch_size.verdicts(stats, batch_size.regimes(stats), num_train=1000)
  assert v["gd"] is stats[2] and v["fastest"] is stats[1] and v["gd_loses"]
  text = batch_size.reading(v, 1000, 0.8)
  assert "full-batch GD took 6" in text and "(4.0x longer)" in text and "This run agrees" in text
  fast_gd = [size(32, True, 400, 2.0), size(1000, True, 40, 1.0)]
  v = batch_size.verdicts(fast_gd, batch_size.regimes(fast_gd), num_train=1000)
  assert not v["gd_loses"]
  stuck_gd = [size(32, True, 400, 2.0), size(1000, False, float("nan"), float("nan"))]
  v = batch_size.verdicts(stuck_gd, batch_size.regimes(stuck_gd), num_train=1000)
  assert v["gd_loses"] and v["missed"] == [1000] and v["spans"] == []
  assert "did not reach it within its budget" in batch_size.reading(v, 1000, 0.8)


def test_learning_rate_verdicts_too_small_best_and_diverged():
  from experiments import learning_rate
  nan = float("nan")

  def rate(lr, val_loss, alive=True):
    return {"lr": lr, "alive": [0] if alive else [], "val_loss": (val_loss, 0.0),
            "test_acc": (0.9, 0.01)}

  stats = [rate(0.001, 2.0), rate(0.1, 0.4), rate(1.0, 0.5), rate(10.0, nan, alive=False),
           rate(30.0, nan, alive=False)]
  v = learning_rate.verdicts(stats)
  assert v["best"] is stats[1] and v["too_small_ratio"] == 5.0 and v["agrees"]
  assert [s["lr"] for s in v["diverged"]] == [10.0, 30.0]
  text = learning_rate.reading(v)
  assert "5x higher" in text and "from 10 up, 2 of 5 rates diverged" in text
  v = learning_rate.verdicts(stats[:3])
  assert not v["diverged"] and not v["agrees"]
  assert "No rate in this grid diverged" in learning_rate.reading(v)
  v = learning_rate.verdicts(stats[3:])
  assert learning_rate.reading(v).startswith("Every learning rate diverged")


def test_optimizer_verdicts_weigh_inclusions_and_adam():
  from experiments import optimizers

  def opt(acc, std=0.002, edge=False):
    return {"test_acc": (acc, std), "edge": edge}

  per_model = {"mlp": {"sgd": opt(0.80), "momentum": opt(0.85), "rmsprop": opt(0.86),
                       "adam": opt(0.862, edge=True), "nesterov": opt(0.84),
                       "nadam": opt(0.87)}}
  v = optimizers.verdicts(per_model)
  m = v["models"]["mlp"]
  assert m["best_name"] == "nadam" and m["spread"] == pytest.approx(0.07)
  assert m["adam_gap"] == pytest.approx(0.008) and not m["adam_within_std"]
  assert v["inclusions"] == [True, True, True, True] and not v["adam_holds"]
  assert v["edges"] == [("mlp", "adam")]
  text = optimizers.reading(v, {"mlp": "MLP"})
  assert "best test accuracy 0.87 ± 0.002 with Nadam" in text
  assert "in 4 of 4 comparisons, which agrees" in text and "not the winner everywhere" in text
  per_model["mlp"]["adam"] = opt(0.868)
  per_model["mlp"]["momentum"] = opt(0.70)  # Worse than SGD, which it includes.
  v = optimizers.verdicts(per_model)
  assert v["adam_holds"] and v["inclusions"].count(False) == 1
  assert "disagrees in the remaining cases" in optimizers.reading(v, {"mlp": "MLP"})


def test_vanishing_gradient_verdicts_read_depth_and_ratios():
  from experiments import vanishing_gradient as vg

  def cell(acc, norms):
    return {"test_acc": (acc, 0.01), "init_norms": norms}

  cells = {("classic", "sigmoid", 2): cell(0.85, [1.0, 1.0, 1.0]),
           ("classic", "sigmoid", 8): cell(0.11, [1e-4] + [1e-2] * 7 + [1.0]),
           ("classic", "relu", 8): cell(0.70, [0.5] * 9),
           ("modern", "relu", 2): cell(0.90, [1.0] * 3),
           ("modern", "relu", 8): cell(0.91, [1.0] * 9),
           ("modern", "sigmoid", 8): cell(0.30, [0.01] * 9)}
  v = vg.verdicts(cells, (2, 8), ("sigmoid", "relu"), ("classic", "modern"))
  assert v["depth"]["held"] == 8 and v["depth"]["trailing"] == []
  assert v["depth"]["sigmoid_collapses"]
  assert v["ratios"] == (1e-4, 1.0) and v["decays"] and v["sigmoid_worst"]
  assert v["init_holds_relu_back"] and v["glorot_helps"] and v["four_layer_speed"] is None
  cells[("modern", "relu", 8)] = cell(0.60, [1.0] * 9)
  v = vg.verdicts(cells, (2, 8), ("sigmoid", "relu"), ("classic", "modern"))
  assert v["depth"]["held"] is None and v["depth"]["trailing"] == [8]
  assert not v["init_holds_relu_back"]


def test_surfaces_adam_descends_rosenbrock_and_escapes_the_saddle():
  from experiments import surfaces
  fn, start, _, box, _ = surfaces.SURFACES["rosenbrock"]
  paths = surfaces.trajectories(fn, start, box, "adam", [1e-2], 300)
  assert paths.shape == (1, 301, 2)
  assert float(fn(paths[0, -1])) < 0.25 * float(fn(paths[0, 0]))  # 24.2 -> 3.8.
  fn, start, _, box, _ = surfaces.SURFACES["saddle"]
  end = surfaces.trajectories(fn, start, box, "momentum", [0.1], 200)[0, -1]
  assert abs(end[1]) > 1.0  # It left the saddle along y, where x^2 - y^2 falls.
