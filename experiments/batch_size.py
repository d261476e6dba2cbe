"""GD vs SGD: full-batch gradient descent against mini-batches of 16 to 4096.

    vgg-jax batch-size --workdir=/tmp/vgg_jax/exp/batch_size --mode=quick

Same model and optimizer (plain SGD) for every batch size. Two phases:

- tune: the first seed at every (batch size, learning rate) of the grid;
  each batch size keeps the rate that reaches the target validation accuracy
  (target_fraction of the best any tune run reached, so the target is as
  hard on any dataset) in the fewest steps (Shallue et al. 2019 tune per
  batch size too);
- seeds: the other seeds at each batch size's chosen rate, so every
  steps-to-target has a seed spread.

Every run trains alone (sweep_vmap_size=1), so its train_seconds is its own
wall-clock time, compile and evals excluded. Each batch size gets at least
`min_epochs` epochs and `min_steps` steps, so full-batch GD is not cut off
after a handful of steps. The reading classifies each doubling of the batch
by its scaling efficiency (how much of the ideal halving of steps it got):
perfect scaling, diminishing returns, or maximal data parallelism, and gives
the batch sizes where one regime ends and the next begins.
"""

import logging
import math
from typing import Dict, List

import ml_collections
import numpy as np

from . import common
from vgg_jax import report

NAME = "batch_size"
FULL = -1  # vgg_jax's own batch_size for full batch (every training example per step).
# A batch-size step with scaling efficiency e (steps fall by factor^e when
# the batch grows by factor; 1 is perfect) counts as perfect scaling from
# PERFECT up, as maximal data parallelism (no speed-up) below FLAT.
PERFECT, FLAT = 0.8, 0.2


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
  config.learning_rates = {"smoke": (0.1, 1.0), "quick": (0.01, 0.03, 0.1, 0.3, 1.0),
                           "full": (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)}[mode]
  config.seeds = {"smoke": (0, 1), "quick": (0, 1, 2), "full": (0, 1, 2, 3, 4)}[mode]
  config.min_epochs = {"smoke": 2, "quick": 3, "full": 10}[mode]
  config.min_steps = {"smoke": 30, "quick": 240, "full": 2000}[mode]
  config.evals_per_run = {"smoke": 4, "quick": 60, "full": 100}[mode]
  # The target is this fraction of the best validation accuracy any tune run
  # reached, so it is equally hard on any dataset (a fixed 83% that takes
  # Fashion-MNIST hundreds of steps, digits reaches at the first eval);
  # target_accuracy > 0 sets it directly instead.
  config.target_fraction = {"smoke": 0.9, "quick": 0.97, "full": 0.98}[mode]
  config.target_accuracy = 0.0
  return config


def _budget(config, bs: int, n: int) -> Dict:
  """A batch size's epochs and eval interval (the engine resolves FULL itself;
  the budget needs the size here)."""
  size = n if bs == FULL else bs
  epochs = max(config.min_epochs, math.ceil(config.min_steps * size / n))
  steps = epochs * (n // size)
  return {"batch_size": bs, "num_epochs": epochs,
          "eval_every_steps": max(1, steps // config.evals_per_run)}


def train(exp: common.Experiment):
  config = exp.config
  n = common.num_train(config.train)
  first, others = config.seeds[0], config.seeds[1:]
  sizes = _sizes_for(config.batch_sizes, n)
  runs = [{**_budget(config, bs, n), "optimizer.learning_rate": lr, "seed": first}
          for bs in sizes for lr in config.learning_rates]
  exp.sweep("tune", config.train, runs)
  if others:
    tune_rows = exp.rows("tune")
    chosen = {s["bs_config"]: s["lr"] for s in _choices(tune_rows, n, target(config, tune_rows))}
    runs = [{**_budget(config, bs, n), "optimizer.learning_rate": chosen[bs], "seed": s}
            for bs in sizes for s in others]
    exp.sweep("seeds", config.train, runs)
  analyze(exp, n)


def _sizes_for(batch_sizes, n: int) -> List[int]:
  """The batch sizes of at most half the training set, and FULL (a dataset of
  your own, or digits, can be smaller than the grid's largest batches; a step
  up of under 2x to full batch would read seed noise as a scaling regime)."""
  kept = [bs for bs in batch_sizes if bs == FULL or 2 * bs <= n]
  if len(kept) < len(batch_sizes):
    logging.getLogger("experiments").warning(
        "%s: batch sizes %s are over half the %d training examples: left out (full batch "
        "covers them)", NAME, [bs for bs in batch_sizes if bs not in kept], n)
  return kept


def _to_target(rows, run_id, target):
  """(step, epoch, train seconds) of the first eval at or above target, else None."""
  for r in sorted((r for r in rows if r["run_id"] == run_id and r["split"] == "validation"),
                  key=lambda r: r["step"]):
    if r["accuracy"] >= target:
      return r["step"], r["epoch"], r["train_seconds"]
  return None


def _to_target_stats(rows, ids, bs, target) -> Dict:
  hits = [_to_target(rows, i, target) for i in ids]
  reached = bool(hits) and all(hits)
  nan = (math.nan,) * 2
  return {"bs": bs, "reached": reached,
          **{k: report.mean_std(h[n] for h in hits) if reached else nan
             for n, k in enumerate(("steps", "epochs", "seconds"))}}


def _fewest_steps(cand):
  """Fewest steps to the target; if no rate reaches it, the best final validation."""
  return (1, -cand["steps"][0]) if cand["reached"] else (0, common.validation_accuracy(cand))


def target(config, tune_rows) -> float:
  """The target validation accuracy: set, or target_fraction of the best any
  tune run reached at any eval."""
  if config.target_accuracy > 0:
    return config.target_accuracy
  best = max((r["accuracy"] for r in tune_rows if r["split"] == "validation"
              and isinstance(r["accuracy"], (int, float)) and math.isfinite(r["accuracy"])),
             default=math.nan)
  return round(config.target_fraction * best, 4)


def _choices(rows, num_train: int, target: float) -> List[Dict]:
  """Per batch size (ascending), the best learning rate in `rows` (the tune
  phase's), as a best_on_validation candidate with to-target stats."""
  choices = []
  for (bs,), group in report.group_by(rows, "batch_size").items():
    size = num_train if bs == FULL else bs
    best = common.best_on_validation(
        group, score=_fewest_steps,
        extra=lambda c, size=size: _to_target_stats(c["rows"], c["ids"], size, target))
    choices.append({**best, "bs_config": bs, "lrs": sorted({r["optimizer.learning_rate"]
                                                            for r in group})})
  return sorted(choices, key=lambda c: c["bs"])


def _seed_stats(choice: Dict, rows: List[report.Row], target: float) -> Dict:
  """The chosen rate's runs over every seed (both phases): to-target and final accuracies."""
  mine = [r for r in rows if r["batch_size"] == choice["bs_config"]
          and r["optimizer.learning_rate"] == choice["lr"]]
  ids = sorted({r["run_id"] for r in mine})
  val, test = report.final_rows(mine, "validation"), report.final_rows(mine, "test")
  return {**choice, **_to_target_stats(mine, ids, choice["bs"], target), "ids": ids, "rows": mine,
          "seeds": len(ids),
          "val_acc": report.mean_std(val[i]["accuracy"] for i in ids if i in val),
          "test_acc": report.mean_std(test[i]["accuracy"] for i in ids if i in test)}


def regimes(stats: List[Dict]) -> List[Dict]:
  """Each step between consecutive batch sizes that reached the target: its
  scaling efficiency (log of the steps' fall over log of the batch's growth)
  and regime."""
  reached = [s for s in stats if s["reached"]]
  out = []
  for a, b in zip(reached, reached[1:]):
    efficiency = math.log(a["steps"][0] / b["steps"][0]) / math.log(b["bs"] / a["bs"])
    regime = ("perfect scaling" if efficiency >= PERFECT else
              "maximal data parallelism" if efficiency <= FLAT else "diminishing returns")
    out.append({"from": a["bs"], "to": b["bs"], "efficiency": efficiency, "regime": regime})
  return out


def analyze(exp: common.Experiment, num_train: int = 0):
  rows = exp.write_results()
  for r in rows:  # Run ids count per phase; the analysis needs them unique.
    r["run_id"] = f"{r['phase']}/{r['run_id']}"
  num_train = num_train or common.num_train(exp.config.train)
  tune_rows = [r for r in rows if r["phase"] == "tune"]
  goal = target(exp.config, tune_rows)
  stats = [_seed_stats(c, rows, goal) for c in _choices(tune_rows, num_train, goal)]
  steps = regimes(stats)
  _plot_curves(exp, stats, num_train)
  _plot_scaling(exp, stats, steps, goal)
  table = [[_name(s["bs"], num_train), s["lr"] if s["lr"] not in (s["lrs"][0], s["lrs"][-1])
            or len(s["lrs"]) == 1 else f"{s['lr']} (grid edge)", s["seeds"],
            report.pm(*s["steps"]) if s["reached"] else "not reached",
            report.pm(*s["epochs"]), report.pm(*s["seconds"]),
            report.pm(*s["val_acc"]), report.pm(*s["test_acc"])] for s in stats]
  headers = ["batch size", f"best lr (seed {exp.config.seeds[0]})", "seeds", "steps to target",
             "epochs to target", "seconds to target", "final validation acc", "test acc"]
  regime_headers = ["batch sizes", "steps fell by", "scaling efficiency", "regime"]
  regime_table = [[f"{_name(g['from'], num_train)} -> {_name(g['to'], num_train)}",
                   f"{(g['to'] / g['from']) ** g['efficiency']:.2f}x of {g['to'] / g['from']:.0f}x",
                   f"{g['efficiency']:.2f}", g["regime"]] for g in steps]
  summary = report.Report("Batch size: GD vs mini-batch SGD (summary)")
  summary.text(f"Target: {goal:.1%} validation accuracy ({_target_source(exp.config)}).")
  summary.table(headers, table)
  summary.table(regime_headers, regime_table)
  summary.write(exp.path("summary.md"))

  cfg = exp.config
  rep = report.Report("Batch size: GD vs mini-batch SGD")
  rep.text(f"Plain SGD on an MLP {tuple(cfg.train.model.hidden_sizes)}, batch sizes "
           f"{', '.join(_name(s['bs'], num_train) for s in stats)}; learning rates "
           f"{tuple(cfg.learning_rates)} per batch size, tuned on seed {cfg.seeds[0]} by "
           f"steps to {goal:.1%} validation accuracy ({_target_source(cfg)}), then every "
           f"batch size's chosen rate "
           f"ran with seeds {tuple(cfg.seeds)}: tables give mean ± std over them. Each batch "
           f"size trains at least {cfg.min_epochs} epochs and {cfg.min_steps} steps, with "
           f"about {cfg.evals_per_run} evals, so steps to target are exact to one eval "
           "interval. Seconds are each run's own training time (runs trained one at a time; "
           "compile and evals excluded).")
  exp.what_was_run(rep, common.dataset_note(cfg.train))
  rep.heading("Result")
  rep.image("loss_curves.png", "Validation loss at each batch size's best learning rate, "
            "against epochs, steps and wall-clock seconds (mean over seeds).")
  rep.image("steps_to_target.png", "Steps and seconds to the target validation accuracy, "
            "mean and seed std, with the regimes read off the steps.")
  rep.table(headers, table)
  rep.text(f"Scaling efficiency of each step up in batch size: 1 means steps fell as much "
           f"as the batch grew (perfect scaling), 0 that they did not fall. At or above "
           f"{PERFECT} counts as perfect scaling, at or below {FLAT} as maximal data "
           "parallelism, in between as diminishing returns.")
  rep.table(regime_headers, regime_table)
  exp.finish_report(rep, reading(verdicts(stats, steps, num_train), num_train, goal))


def _target_source(cfg) -> str:
  if cfg.target_accuracy > 0:
    return "set by target_accuracy"
  return f"{cfg.target_fraction:.0%} of the best any tune run reached"


def _name(bs, num_train):
  return f"GD ({bs})" if bs == num_train else str(bs)


def _plot_curves(exp, stats, num_train):
  plt = report.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  colors = report.colors(len(stats), "viridis")
  for s, color in zip(stats, colors):
    for ax, x in zip(axes, ("epoch", "step", "train_seconds")):
      curves = [report.curve(s["rows"], i, "validation", x=x) for i in s["ids"]]
      length = min(len(c[0]) for c in curves)  # A diverged seed's curve ends early.
      xs = np.mean([c[0][:length] for c in curves], axis=0)
      ys = np.mean([c[1][:length] for c in curves], axis=0)
      report.plot_curves(ax, [(f"batch {_name(s['bs'], num_train)}, lr {report.fmt(s['lr'])}",
                               xs, ys, color)])
  for ax, label in zip(axes, ("epochs", "steps", "training wall-clock seconds")):
    ax.set_xlabel(label)
    ax.set_ylabel("validation loss")
    ax.set_yscale("log")
    ax.set_xscale("log")
  axes[0].set_title("per epoch (same data seen)")
  axes[1].set_title("per step (same number of updates)")
  axes[2].set_title("per second (what you wait for)")
  axes[2].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  report.save(fig, exp.path("loss_curves.png"))


_REGIME_COLORS = {"perfect scaling": "tab:green", "diminishing returns": "tab:orange",
                  "maximal data parallelism": "tab:red"}


def _plot_scaling(exp, stats, steps, target):
  plt = report.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  reached = [s for s in stats if s["reached"]]
  if reached:
    bss = np.array([s["bs"] for s in reached], float)
    for ax, key in zip(axes, ("steps", "seconds")):
      ax.errorbar(bss, [s[key][0] for s in reached], yerr=[s[key][1] for s in reached],
                  fmt="o-", capsize=3, label="measured (mean ± seed std)")
    axes[0].plot(bss, reached[0]["steps"][0] * bss[0] / bss, "k:",
                 label="perfect scaling (steps ∝ 1/batch)")
    for g in steps:
      axes[0].axvspan(g["from"], g["to"], color=_REGIME_COLORS[g["regime"]], alpha=0.15,
                      label=g["regime"])
  for ax, ylabel in zip(axes, ("steps to target", "seconds to target")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
  handles, labels = axes[0].get_legend_handles_labels()
  unique = dict(zip(labels, handles))
  axes[0].legend(unique.values(), unique.keys(), fontsize=7)
  fig.suptitle(f"to {target:.1%} validation accuracy (best learning rate per batch size)")
  report.save(fig, exp.path("steps_to_target.png"))


SEQUENCE = ("perfect scaling", "diminishing returns", "maximal data parallelism")


def verdicts(stats: List[Dict], steps: List[Dict], num_train: int) -> Dict:
  """What the runs show, from the per-batch-size stats and `regimes` alone:
  which sizes missed the target, the step speed-up from the smallest to the
  largest size that reached it, the regimes as spans and whether they come
  in Shallue et al.'s order, the fastest mini-batch size in seconds, and
  whether full-batch GD loses to it in wall-clock time."""
  reached = [s for s in stats if s["reached"]]
  gd = next((s for s in stats if s["bs"] == num_train), None)
  minis = [s for s in reached if s["bs"] != num_train]
  spans = []
  for g in steps:
    if spans and spans[-1][0] == g["regime"]:
      spans[-1][2] = g["to"]
    else:
      spans.append([g["regime"], g["from"], g["to"]])
  ranks = [SEQUENCE.index(g["regime"]) for g in steps]
  return {
      "missed": [s["bs"] for s in stats if not s["reached"]],
      "ends": (reached[0], reached[-1]) if len(reached) >= 2 else None,
      "spans": spans, "first_step": steps[0] if steps else None,
      "in_order": all(b >= a for a, b in zip(ranks, ranks[1:])),
      "perfect": any(g["regime"] == SEQUENCE[0] for g in steps),
      "gd": gd, "fastest": min(minis, key=lambda s: s["seconds"][0]) if minis else None,
      "gd_loses": bool(gd is not None and minis and (not gd["reached"] or gd["seconds"][0] > min(
          s["seconds"][0] for s in minis))),
  }


def _regime_text(v: Dict, num_train: int) -> str:
  if not v["spans"]:
    return "Fewer than two batch sizes reached the target, so no scaling regime can be read."
  parts = [f"{regime} from batch {_name(a, num_train)} to {_name(b, num_train)}"
           for regime, a, b in v["spans"]]
  missing = ""
  if not v["perfect"]:
    first = v["first_step"]
    missing = (f"No step up scaled perfectly (efficiency {PERFECT} or more); the first, batch "
               f"{_name(first['from'], num_train)} to {_name(first['to'], num_train)}, got "
               f"{first['efficiency']:.2f}, so the perfect-scaling regime, if any, lies below "
               "the grid's smallest batch. ")
  order = ("That is Shallue et al.'s order (regimes only move from perfect scaling towards "
           "maximal data parallelism as the batch grows). " if v["in_order"] else
           "That is not Shallue et al.'s monotone order: a larger batch scaled better than "
           "a smaller one somewhere, which at one eval interval's resolution and this seed "
           "spread can be noise. ")
  return ("Read off the steps to target: " + "; ".join(parts) + ". " + order + missing).strip()


def reading(v: Dict, num_train: int, target: float) -> str:
  """The report's reading: words over `verdicts`."""
  text = []
  if v["missed"]:
    text.append(f"Batch size(s) {', '.join(_name(b, num_train) for b in v['missed'])} did not "
                f"reach {target:.1%} validation accuracy on every seed within the budget.")
  if v["ends"]:
    first, last = v["ends"]
    speedup = first["steps"][0] / last["steps"][0]
    text.append(f"Steps to {target:.1%}: {report.pm(*first['steps'])} at batch "
                f"{_name(first['bs'], num_train)} and {report.pm(*last['steps'])} at batch "
                f"{_name(last['bs'], num_train)}, {speedup:.1f}x fewer for "
                f"{last['bs'] / first['bs']:.0f}x the batch.")
  text.append(_regime_text(v, num_train))
  gd, fastest = v["gd"], v["fastest"]
  if fastest and gd is not None:
    text.append(f"In wall-clock time the fastest mini-batch size ({fastest['bs']}) reached the "
                f"target in {report.pm(*fastest['seconds'])} s; " + (
                    f"full-batch GD took {report.pm(*gd['seconds'])} s "
                    f"({gd['seconds'][0] / fastest['seconds'][0]:.1f}x longer)."
                    if gd["reached"] else
                    f"full-batch GD did not reach it within its budget "
                    f"({report.fmt(gd['val_acc'][0])} final validation accuracy)."))
  text.append("The seed deck's point is that many quick noisy steps beat a few exact ones. "
              "This run " + ("agrees: GD loses to mini-batch SGD in wall-clock time."
                             if v["gd_loses"] else
                             "does not show GD losing in wall-clock time."))
  return " ".join(text)


def run():
  common.run(NAME, get_config, train)


if __name__ == "__main__":
  run()
