"""Step size too small, right and too large: plain SGD over a wide learning-rate range.

    vgg-jax learning-rate --workdir=/tmp/vgg_jax/exp/learning_rate --mode=quick

One vmapped sweep (every learning rate x seed is one model of the same
program). A run whose loss turns non-finite is frozen and marked diverged;
the plots end its line at the divergence with an x instead of drawing NaN.
"""

import math
from typing import Dict

import ml_collections
import numpy as np

from . import common
from vgg_jax import report

NAME = "learning_rate"


def get_config(mode: str):
  config = ml_collections.ConfigDict()
  train = common.train_config(mode)
  train.model.hidden_sizes = (256, 256)
  train.dataset.num_train_examples = {"smoke": -1, "quick": 10000, "full": -1}[mode]
  train.num_epochs = {"smoke": 3, "quick": 10, "full": 20}[mode]
  config.train = train
  config.learning_rates = {
      "smoke": (0.01, 1.0, 300.0),
      "quick": (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
      "full": tuple(float(x) for x in np.logspace(-5, 2, 15)),
  }[mode]
  config.seeds = common.seeds(mode)
  config.evals_per_run = {"smoke": 3, "quick": 20, "full": 40}[mode]
  return config


def train(exp: common.Experiment):
  config = exp.config
  train_config = config.train
  train_config.eval_every_steps = common.eval_every(train_config, config.evals_per_run)
  runs = [{"optimizer.learning_rate": lr, "seed": s}
          for lr in config.learning_rates for s in config.seeds]
  exp.sweep("sgd", train_config, runs)
  analyze(exp)


def statistics(rows):
  """One dict per learning rate, ascending: its seeds, which diverged (and
  when), and the final numbers of the ones that did not."""
  lrs = sorted({r["optimizer.learning_rate"] for r in rows})
  by_lr = report.group_by(rows, "optimizer.learning_rate")
  stats = []
  for lr in lrs:
    lr_rows = by_lr[(lr,)]
    ids = sorted({r["run_id"] for r in lr_rows})
    diverged = {i: report.diverged_at(lr_rows, i) for i in ids}
    alive = [i for i in ids if diverged[i] is None]
    final_train = report.final_rows(lr_rows, "train")
    final_val = report.final_rows(lr_rows, "validation")
    final_test = report.final_rows(lr_rows, "test")
    stats.append({
        "lr": lr, "ids": ids, "alive": alive, "diverged": diverged,
        "train_loss": report.mean_std(final_train[i]["loss"] for i in alive),
        "val_loss": report.mean_std(final_val[i]["loss"] for i in alive),
        "test_acc": report.mean_std(final_test[i]["accuracy"] for i in alive),
    })
  return stats


def _plot_curves(exp, rows, stats):
  plt = report.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  colors = report.colors(len(stats), "plasma")
  for ax, split in zip(axes, ("train", "validation")):
    marks, finite = [], []
    for s, color in zip(stats, colors):
      ids = s["alive"] or s["ids"]
      curves = [report.curve(rows, i, split) for i in ids]
      xs = curves[0][0]
      ys = np.mean([c[1] for c in curves], axis=0)
      label = f"lr={report.fmt(s['lr'])}"
      if s["alive"]:
        if len(s["alive"]) < len(s["ids"]):
          label += f" ({len(s['ids']) - len(s['alive'])} of {len(s['ids'])} seeds diverged)"
        report.plot_curves(ax, [(label, xs, ys, color)])
        finite += list(ys[np.isfinite(ys)])
        continue
      first = min(s["diverged"].values())
      keep = (xs < first) & np.isfinite(ys)
      ax.plot(xs[keep], ys[keep], color=color, linestyle="--",
              label=label + f" (diverged by step {first})")
      marks.append((xs[keep][-1] if keep.any() else first, ys[keep][-1] if keep.any() else None,
                    color))
    if finite:
      low, high = min(finite) * 0.8, max(finite) * 2.0
      ax.set_ylim(low, high)
      for x, y, color in marks:  # At the top edge when nothing finite came before.
        ax.plot([x], [min(y, high) if y is not None else high], marker="x", markersize=11,
                mew=2.5, color="red", markeredgecolor=color, clip_on=False)
    ax.set_title(f"{split} loss (mean over seeds)"
                 + (": running mean of minibatches" if split == "train" else ""))
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    if any(y > 0 for y in finite):  # Every run diverged at once: nothing to put on a log axis.
      ax.set_yscale("log")
  axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  report.save(fig, exp.path("loss_curves.png"))


def _plot_final(exp, stats):
  plt = report.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  xs = [s["lr"] for s in stats if s["alive"]]
  ys = [s["val_loss"][0] for s in stats if s["alive"]]
  ax.plot(xs, ys, "o-", label="final validation loss")
  for s in stats:
    if not s["alive"]:
      ax.axvline(s["lr"], color="red", alpha=0.3)
  ax.plot([], [], color="red", alpha=0.3, label="diverged (all seeds)")
  ax.set_xscale("log")
  if any(np.isfinite(y) and y > 0 for y in ys):
    ax.set_yscale("log")
  ax.set_xlabel("learning rate")
  ax.set_ylabel("final validation loss")
  ax.legend()
  report.save(fig, exp.path("final_loss_vs_lr.png"))


def analyze(exp: common.Experiment):
  rows = exp.write_results()
  stats = statistics(rows)
  _plot_curves(exp, rows, stats)
  _plot_final(exp, stats)
  headers = ["learning rate", "final train loss", "final validation loss", "test accuracy",
             "diverged seeds"]
  table = [[s["lr"], report.pm(*s["train_loss"]), report.pm(*s["val_loss"]),
            report.pm(*s["test_acc"]),
            f"{len(s['ids']) - len(s['alive'])} of {len(s['ids'])}"] for s in stats]
  summary = report.Report("Learning rate: too small, right, too large (summary)")
  summary.table(headers, table)
  summary.write(exp.path("summary.md"))

  rep = report.Report("Learning rate: too small, right, too large")
  rep.text("Plain SGD (constant step) on an MLP "
           f"{tuple(exp.config.train.model.hidden_sizes)} over {len(stats)} learning rates, "
           f"{len(exp.config.seeds)} seed(s) each, all trained as one vmapped program.")
  exp.what_was_run(rep, common.dataset_note(exp.config.train))
  rep.heading("Result")
  rep.image("loss_curves.png", "Loss curves per learning rate. A diverged run's line ends "
            "with a red x at its last finite point.")
  rep.image("final_loss_vs_lr.png", "Final validation loss against learning rate.")
  rep.table(headers, table)
  exp.finish_report(rep, reading(verdicts(stats)))


def verdicts(stats) -> Dict:
  """What the grid shows, from `statistics` alone: the rate with the lowest
  final validation loss among those that never diverged, how much worse the
  smallest rate is, which rates diverged, and whether that is the deck's
  picture (too small crawls, too large diverges)."""
  alive = [s for s in stats if s["alive"] and math.isfinite(s["val_loss"][0])]
  if not alive:
    return {"best": None}
  best = min(alive, key=lambda s: s["val_loss"][0])
  smallest = stats[0]
  diverged = [s for s in stats if not s["alive"]]
  too_small = smallest is not best and bool(smallest["alive"])
  return {
      "best": best, "smallest": smallest, "diverged": diverged, "num_rates": len(stats),
      "too_small_ratio": (smallest["val_loss"][0] / max(best["val_loss"][0], 1e-12)
                          if too_small else None),
      "agrees": smallest is not best and bool(diverged),
  }


def reading(v: Dict) -> str:
  """The report's reading: words over `verdicts`."""
  best = v["best"]
  if best is None:
    return "Every learning rate diverged: the grid is too high for this setup."
  text = [f"The lowest final validation loss, {report.fmt(best['val_loss'][0])}, came at "
          f"learning rate {report.fmt(best['lr'])} (test accuracy "
          f"{report.pm(*best['test_acc'])})."]
  if v["too_small_ratio"] is not None:
    text.append(f"Too small: at {report.fmt(v['smallest']['lr'])} the loss after the same "
                f"number of steps is {v['too_small_ratio']:.3g}x higher; the steps are too "
                "short to get anywhere.")
  if v["diverged"]:
    text.append(f"Too large: from {report.fmt(v['diverged'][0]['lr'])} up, "
                f"{len(v['diverged'])} of {v['num_rates']} rates diverged (the loss became "
                "non-finite and the run was stopped and marked).")
  else:
    text.append("No rate in this grid diverged; extend the grid upward to see the blow-up.")
  text.append("This " + ("agrees with" if v["agrees"] else "does not fully show")
              + " the seed's picture of the step size (too small crawls, too large "
              "overshoots and diverges) and with LeCun et al., *Efficient BackProp* (1998), "
              "where a step beyond about twice the optimal one makes gradient descent "
              "diverge.")
  return " ".join(text)


def run():
  common.run(NAME, get_config, train)


if __name__ == "__main__":
  run()
