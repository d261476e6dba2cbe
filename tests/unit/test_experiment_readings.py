"""The readings behind each experiment report's verdict: batch_size's regimes,
dropout's choice on validation weighed against seed noise, Welch's t.

What the experiment commands write: tests/e2e/test_experiments.py."""

import pytest


def test_batch_size_regimes_follow_the_scaling_efficiency():
  """Shallue et al.'s three regimes, read off steps to target per batch size."""
  from experiments import batch_size
  steps = {16: 1600, 32: 800, 64: 560, 128: 500, 256: 490}  # 1.0, 0.51, 0.16, 0.03.
  stats = [{"bs": bs, "reached": True, "steps": (s, 0.0)} for bs, s in steps.items()]
  stats.append({"bs": 512, "reached": False, "steps": (float("nan"),) * 2})
  found = batch_size.regimes(stats)
  assert [(g["from"], g["to"]) for g in found] == [(16, 32), (32, 64), (64, 128), (128, 256)]
  assert [g["regime"] for g in found] == ["perfect scaling", "diminishing returns",
                                          "maximal data parallelism", "maximal data parallelism"]
  assert found[0]["efficiency"] == pytest.approx(1.0)
  text = batch_size._regime_text(found, num_train=10_000)
  assert "perfect scaling from batch 16 to 32" in text
  assert "maximal data parallelism from batch 64 to 256" in text
  assert "Shallue et al.'s order" in text and "not Shallue" not in text
  assert "No step up scaled perfectly" not in text
  text = batch_size._regime_text(found[1:], num_train=10_000)
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
  text = dropout._reading([base, lucky, real])
  assert "best on validation, dropout 0.5," in text
  assert "beyond seed noise (2 or more)" in text and "agrees on both counts" in text
  noisy = stats("dropout 0.5", 0.84, [0.825, 0.845, 0.834], 0.7)
  noisy["t"] = dropout.report.welch_t(base["test_accs"], noisy["test_accs"])
  text = dropout._reading([base, noisy])
  assert "not beyond seed noise" in text and "agrees on both counts" not in text
