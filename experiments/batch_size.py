"""GD vs SGD: full-batch gradient descent against mini-batches of 16 to 4096.

    python -m experiments.batch_size --workdir=/tmp/vgg_jax/exp/batch_size --mode=quick

Same model and optimizer (plain SGD) for every batch size; the learning rate
is tuned per batch size on a small grid, picking the rate that reaches the
target validation accuracy in the fewest steps. Every run trains alone
(sweep_vmap_size=1) so its train_seconds is its own wall-clock time, compile
and evals excluded. Each batch size gets at least `min_epochs` epochs and
`min_steps` steps, so full-batch GD is not cut off after a handful of steps.
"""

import math

import ml_collections
import numpy as np

from experiments import common
from vgg_jax import report

NAME = "batch_size"
FULL = -1  # vgg_jax's own batch_size for full batch (every training example per step).


def get_config(mode: str):
  config = ml_collections.ConfigDict()
  train = common.train_config(mode)
  train.model.hidden_sizes = (256, 256)
  train.dataset.num_train_examples = {"smoke": -1, "quick": 16384, "full": -1}[mode]
  train.sweep_vmap_size = 1  # Honest per-run wall-clock time.
  config.train = train
  config.batch_sizes = {"smoke": (16, 256, FULL),
                        "quick": (16, 64, 256, 1024, 4096, FULL),
                        "full": (16, 64, 256, 1024, 4096, 16384, FULL)}[mode]
  config.learning_rates = {"smoke": (0.1, 1.0), "quick": (0.03, 0.1, 0.3, 1.0),
                           "full": (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)}[mode]
  config.seeds = {"smoke": (0,), "quick": (0,), "full": (0, 1, 2)}[mode]
  config.min_epochs = {"smoke": 2, "quick": 15, "full": 30}[mode]
  config.min_steps = {"smoke": 30, "quick": 300, "full": 2000}[mode]
  config.evals_per_run = {"smoke": 4, "quick": 40, "full": 60}[mode]
  config.target_accuracy = {"smoke": 0.7, "quick": 0.8, "full": 0.85}[mode]
  return config


def train(exp: common.Experiment):
  config = exp.config
  n = common.num_train(config.train)
  runs = []
  for bs in config.batch_sizes:
    size = n if bs == FULL else bs  # The engine resolves FULL itself; the budget needs it here.
    epochs = max(config.min_epochs, math.ceil(config.min_steps * size / n))
    steps = epochs * (n // size)
    for lr in config.learning_rates:
      for s in config.seeds:
        runs.append({"batch_size": bs, "num_epochs": epochs,
                     "eval_every_steps": max(1, steps // config.evals_per_run),
                     "optimizer.learning_rate": lr, "seed": s})
  exp.sweep("sgd", config.train, runs)
  analyze(exp, n)


def _to_target(rows, run_id, target):
  """(step, epoch, train seconds) of the first eval at or above target, else None."""
  for r in sorted((r for r in rows if r["run_id"] == run_id and r["split"] == "validation"),
                  key=lambda r: r["step"]):
    if r["accuracy"] >= target:
      return r["step"], r["epoch"], r["train_seconds"]
  return None


def analyze(exp: common.Experiment, num_train: int = 0):
  rows = exp.write_results()
  target = exp.config.target_accuracy
  stats = []
  num_train = num_train or common.num_train(exp.config.train)
  by_size = report.group_by(rows, "batch_size")
  for (bs,), group in sorted(by_size.items(), key=lambda kv: num_train if kv[0][0] == FULL
                             else kv[0][0]):
    bs = num_train if bs == FULL else bs

    def to_target(cand, bs=bs):
      hits = [_to_target(cand["rows"], i, target) for i in cand["ids"]]
      nan = (math.nan,) * 2
      return {"bs": bs, "reached": all(hits),
              **{k: report.mean_std(h[n] for h in hits) if all(hits) else nan
                 for n, k in enumerate(("steps", "epochs", "seconds"))}}

    # Fewest steps to the target; if no rate reaches it, the best final validation.
    stats.append(common.best_on_validation(
        group, extra=to_target,
        score=lambda c: (1, -c["steps"][0]) if c["reached"] else (0, common.validation_accuracy(c))))

  def name(bs):
    return f"GD ({bs})" if bs == num_train else str(bs)

  plt = report.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  colors = report.colors(len(stats), "viridis")
  for s, color in zip(stats, colors):
    for ax, x in zip(axes, ("epoch", "step", "train_seconds")):
      curves = [report.curve(s["rows"], i, "validation", x=x) for i in s["ids"]]
      xs, ys = np.mean([c[0] for c in curves], axis=0), np.mean([c[1] for c in curves], axis=0)
      report.plot_curves(ax, [(f"batch {name(s['bs'])}, lr {report.fmt(s['lr'])}", xs, ys,
                               color)])
  for ax, label in zip(axes, ("epochs", "steps", "training wall-clock seconds")):
    ax.set_xlabel(label)
    ax.set_ylabel("validation loss")
    ax.set_yscale("log")
  for ax in axes:
    ax.set_xscale("log")
  axes[0].set_title("per epoch (same data seen)")
  axes[1].set_title("per step (same number of updates)")
  axes[2].set_title("per second (what you wait for)")
  axes[2].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  report.save(fig, exp.path("loss_curves.png"))

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  reached = [s for s in stats if s["reached"]]
  if reached:
    bss = np.array([s["bs"] for s in reached], float)
    axes[0].plot(bss, [s["steps"][0] for s in reached], "o-", label="measured")
    perfect = reached[0]["steps"][0] * bss[0] / bss
    axes[0].plot(bss, perfect, "k:", label="perfect scaling (steps ∝ 1/batch)")
    axes[1].plot(bss, [s["seconds"][0] for s in reached], "o-")
  for ax, ylabel in zip(axes, ("steps to target", "seconds to target")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
  axes[0].legend()
  fig.suptitle(f"to {target:.0%} validation accuracy (best learning rate per batch size)")
  report.save(fig, exp.path("steps_to_target.png"))

  headers = ["batch size", "best lr", "steps to target", "epochs to target",
             "seconds to target", "final validation acc", "test acc"]
  table = [[name(s["bs"]), s["lr"], report.fmt(s["steps"][0]) if s["reached"] else "not reached",
            report.fmt(s["epochs"][0]), report.fmt(s["seconds"][0]),
            report.pm(*s["val_acc"]), report.pm(*s["test_acc"])] for s in stats]
  summary = report.Report("Batch size: GD vs mini-batch SGD (summary)")
  summary.text(f"Target: {target:.0%} validation accuracy.")
  summary.table(headers, table)
  summary.write(exp.path("summary.md"))

  cfg = exp.config
  rep = report.Report("Batch size: GD vs mini-batch SGD")
  rep.text(f"Plain SGD on an MLP {tuple(cfg.train.model.hidden_sizes)}, batch sizes "
           f"{', '.join(name(s['bs']) for s in stats)}; learning rates "
           f"{tuple(cfg.learning_rates)} per batch size, the best chosen by steps to "
           f"{target:.0%} validation accuracy. Each batch size trains at least "
           f"{cfg.min_epochs} epochs and {cfg.min_steps} steps. Seconds are each run's own "
           "training time (runs trained one at a time; compile and evals excluded).")
  exp.what_was_run(rep, common.dataset_note(cfg.train))
  rep.heading("Result")
  rep.image("loss_curves.png", "Validation loss at each batch size's best learning rate, "
            "against epochs, steps and wall-clock seconds.")
  rep.image("steps_to_target.png", "Steps and seconds to the target validation accuracy.")
  rep.table(headers, table)
  exp.finish_report(rep, _reading(stats, num_train, target))


def _reading(stats, num_train, target) -> str:
  reached = [s for s in stats if s["reached"]]
  gd = next((s for s in stats if s["bs"] == num_train), None)
  minis = [s for s in reached if s["bs"] != num_train]
  text = []
  if len(reached) >= 2:
    steps = [s["steps"][0] for s in reached]
    falls = all(b <= a for a, b in zip(steps, steps[1:]))
    first, last = reached[0], reached[-1]
    speedup = first["steps"][0] / last["steps"][0]
    text.append(f"Steps to {target:.0%}: {report.fmt(first['steps'][0])} at batch "
                f"{first['bs']} and {report.fmt(last['steps'][0])} at batch {last['bs']}, "
                f"{speedup:.1f}x fewer for {last['bs'] / first['bs']:.0f}x the batch: "
                + ("steps fall monotonically with batch size" if falls else
                   "steps do not fall monotonically with batch size")
                + ", with " + ("diminishing returns at the large end." if
                               speedup < last["bs"] / first["bs"] else "no sign of saturation."))
  if minis:
    fastest = min(minis, key=lambda s: s["seconds"][0])
    if gd is not None and gd["reached"]:
      text.append(f"In wall-clock time the fastest mini-batch size ({fastest['bs']}) reached the "
                  f"target in {report.fmt(fastest['seconds'][0])} s; full-batch GD took "
                  f"{report.fmt(gd['seconds'][0])} s "
                  f"({gd['seconds'][0] / fastest['seconds'][0]:.1f}x longer).")
    elif gd is not None:
      text.append(f"In wall-clock time the fastest mini-batch size ({fastest['bs']}) reached the "
                  f"target in {report.fmt(fastest['seconds'][0])} s; full-batch GD did not reach "
                  f"it within its budget ({report.fmt(gd['val_acc'][0])} final validation "
                  "accuracy).")
  gd_loses = gd is not None and minis and (not gd["reached"] or gd["seconds"][0] > min(
      s["seconds"][0] for s in minis))
  text.append("Shallue et al. (2019) find steps-to-target falling about linearly with batch "
              "size and then with diminishing returns; the seed deck's point is that many "
              "quick noisy steps beat a few exact ones. This run "
              + ("agrees: GD loses to mini-batch SGD in wall-clock time." if gd_loses else
                 "does not show GD losing in wall-clock time."))
  return " ".join(text)


if __name__ == "__main__":
  common.define_flags(get_config)
  common.run(NAME, get_config, train)
