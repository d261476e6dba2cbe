"""The optimizer lineage: SGD, Momentum, NAG, Adagrad, RMSProp, AdaDelta, Adam, Nadam.

    vgg-jax optimizers --workdir=/tmp/vgg_jax/exp/optimizers --mode=quick

(a) Networks: an MLP and a narrow VGG on Fashion-MNIST. Each optimizer gets
its own log-spaced learning-rate grid (centred on its usual rate) and its own
program; the grid x seeds train together under vmap. The best rate is picked
on validation accuracy; test accuracy is only reported.

(b) 2-D surfaces (surfaces.py): Beale's function, the Rosenbrock valley and
the saddle x^2 - y^2, every optimizer from the same start.
"""

import logging
import math
from typing import Dict, Tuple

import ml_collections
import numpy as np

from . import common, surfaces
from vgg_jax import report

NAME = "optimizers"
LINEAGE = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "nadam")
# Each optimizer's usual learning rate: the middle of its grid.
CENTRES = {"sgd": 0.1, "momentum": 0.01, "nesterov": 0.01, "adagrad": 0.03, "rmsprop": 1e-3,
           "adadelta": 1.0, "adam": 1e-3, "nadam": 1e-3}
LABELS = {"sgd": "SGD", "momentum": "Momentum", "nesterov": "NAG", "adagrad": "Adagrad",
          "rmsprop": "RMSProp", "adadelta": "AdaDelta", "adam": "Adam", "nadam": "Nadam"}


def get_config(mode: str):
  config = ml_collections.ConfigDict()
  mlp = common.train_config(mode)
  mlp.model.hidden_sizes = (256, 256)
  mlp.dataset.num_train_examples = {"smoke": -1, "quick": 10000, "full": -1}[mode]
  mlp.num_epochs = {"smoke": 2, "quick": 10, "full": 30}[mode]
  # Quick mode budgets in steps (10 and 4 epochs of its Fashion-MNIST subsets),
  # so a small dataset (digits: 10 steps an epoch) trains as long as a big one.
  mlp.num_train_steps = {"smoke": -1, "quick": 780, "full": -1}[mode]
  vgg = common.train_config(mode)
  vgg.dataset.image_size = 32
  vgg.model.name = "vgg11"
  vgg.model.width_multiplier = {"smoke": 0.0625, "quick": 0.0625, "full": 0.125}[mode]
  vgg.model.classifier_sizes = (64,) if mode != "full" else (128,)
  vgg.model.kernel_init = "he_normal"
  vgg.dataset.num_train_examples = {"smoke": -1, "quick": 4000, "full": -1}[mode]
  vgg.num_epochs = {"smoke": 1, "quick": 4, "full": 15}[mode]
  vgg.num_train_steps = {"smoke": -1, "quick": 124, "full": -1}[mode]
  vgg.eval_batch_size = 500
  for train in (mlp, vgg):  # Choices and curves use validation; test is scored at the end.
    train.test_every_eval = False
  config.mlp, config.vgg = mlp, vgg
  config.optimizers = ("sgd", "momentum", "adam") if mode == "smoke" else LINEAGE
  config.surface_optimizers = config.optimizers
  # Grid: centre x these factors (5 log-spaced points, two decades).
  config.lr_factors = (0.3, 3.0) if mode == "smoke" else (0.1, 0.316, 1.0, 3.16, 10.0)
  config.seeds = common.seeds(mode)
  config.vgg_seeds = {"smoke": (0,), "quick": (0, 1, 2), "full": (0, 1, 2, 3, 4)}[mode]
  config.evals_per_run = {"smoke": 2, "quick": 20, "full": 40}[mode]
  # A VGG eval (validation + test) costs about 100 training steps here: fewer of them.
  config.vgg_evals_per_run = {"smoke": 2, "quick": 4, "full": 20}[mode]
  config.target_accuracy = {"smoke": 0.5, "quick": 0.83, "full": 0.88}[mode]
  config.vgg_target_accuracy = {"smoke": 0.3, "quick": 0.75, "full": 0.9}[mode]
  config.surface_steps = {"smoke": 40, "quick": 400, "full": 1000}[mode]
  config.surface_lrs = tuple(float(x) for x in np.logspace(-4, 0, 9))
  return config


# -------------------------------------------------------------- networks


def _runs(config, seeds):
  return [{"optimizer.name": name, "optimizer.learning_rate": CENTRES[name] * f, "seed": s}
          for name in config.optimizers for f in config.lr_factors for s in seeds]


def _network_stats(rows, target):
  """Per optimizer: the best rate on validation, its curves and test numbers."""
  stats = {}
  for (name,), group in report.group_by(rows, "optimizer.name").items():

    def to_target(cand):
      hits = [next((r for r in sorted(cand["rows"], key=lambda r: r["step"])
                    if r["run_id"] == i and r["split"] == "validation"
                    and r["accuracy"] >= target), None) for i in cand["ids"]]
      nan = (math.nan,) * 2
      return {"diverged": sum(report.diverged_at(cand["rows"], i) is not None
                              for i in cand["ids"]),
              "steps": report.mean_std(h["step"] for h in hits) if all(hits) else nan,
              "seconds": report.mean_std(h["train_seconds"] for h in hits) if all(hits) else nan}

    stats[name] = common.best_on_validation(
        group, extra=to_target,
        score=lambda c: -1.0 if c["diverged"] else common.validation_accuracy(c))
  return stats


def _plot_networks(exp, per_model: Dict[str, Dict], path):
  plt = report.pyplot()
  fig, axes = plt.subplots(len(per_model), 2, figsize=(13, 4.2 * len(per_model)),
                           squeeze=False)
  for row, (model, stats) in zip(axes, per_model.items()):
    colors = report.colors(len(stats), "tab10")
    for (name, s), color in zip(stats.items(), colors):
      for ax, metric in zip(row, ("loss", "accuracy")):
        curves = [report.curve(s["rows"], i, "validation", y=metric) for i in s["ids"]]
        xs, ys = curves[0][0], np.mean([c[1] for c in curves], axis=0)
        report.plot_curves(ax, [(f"{LABELS[name]} (lr {report.fmt(s['lr'])})", xs, ys, color)])
        ax.set_xlabel("step")
        ax.set_ylabel(f"validation {metric}")
        ax.set_title(f"{model}: validation {metric} at each optimizer's best rate")
    row[0].set_yscale("log")
    row[1].legend(fontsize=7, loc="lower right")
  report.save(fig, path)


# ------------------------------------------------------------ experiment


def prepare(config: ml_collections.ConfigDict) -> None:
  """Leaves the VGG out where the data are features rather than images."""
  from vgg_jax import data  # pylint: disable=g-import-not-at-top
  if "vgg" in config and not data.is_image(config.vgg.dataset):
    logging.getLogger("experiments.optimizers").warning("%s gives features, not images: the VGG part is left out",
                    config.vgg.dataset.name)
    del config["vgg"]


def _budget(train_config) -> str:
  if train_config.num_train_steps > 0:
    return f"{train_config.num_train_steps} steps of batch {train_config.batch_size}"
  return f"{train_config.num_epochs} epochs of batch {train_config.batch_size}"


def _networks(config) -> Tuple[str, ...]:
  return tuple(m for m in ("mlp", "vgg") if m in config)


def train(exp: common.Experiment):
  config = exp.config
  budgets = {"mlp": (config.seeds, config.evals_per_run),
             "vgg": (config.vgg_seeds, config.vgg_evals_per_run)}
  for model in _networks(config):
    seeds, evals = budgets[model]
    train_config = config[model]
    train_config.eval_every_steps = common.eval_every(train_config, evals)
    if train_config.sweep_vmap_size == -1:
      # One program per optimizer, its rates x seeds vmapped: on CPU the engine
      # would train the MLP's 15 runs per optimizer one by one, each compiled
      # anew, which took a third of the quick run (3.3 of 10.5 min).
      train_config.sweep_vmap_size = len(config.lr_factors) * len(seeds)
    exp.sweep(model, train_config, _runs(config, seeds))
  analyze(exp)


def analyze(exp: common.Experiment):
  config = exp.config
  exp.write_results()
  targets = {"mlp": config.target_accuracy, "vgg": config.vgg_target_accuracy}
  per_model = {model: _network_stats(exp.rows(model), targets[model])
               for model in _networks(config)}
  titles = {"mlp": f"MLP {tuple(config.mlp.model.hidden_sizes)}"}
  if "vgg" in config:
    titles["vgg"] = f"{config.vgg.model.name} x{config.vgg.model.width_multiplier:g} width"
  _plot_networks(exp, {titles[m]: s for m, s in per_model.items()},
                 exp.path("learning_curves.png"))
  surface_results = surfaces.results(config)
  surfaces.plot(surface_results, LABELS, exp.path("surfaces.png"), exp.path("surfaces.gif"),
                frames=min(60, config.surface_steps))

  headers = ["model", "optimizer", "best lr", "test accuracy", "steps to target",
             "group seconds to target", "diverged (best lr)"]
  table = []
  for model, stats in per_model.items():
    for name in config.optimizers:
      s = stats[name]
      table.append([titles[model], LABELS[name],
                    report.fmt(s["lr"]) + (" (grid edge)" if s["edge"] else ""),
                    report.pm(*s["test_acc"]),
                    report.fmt(s["steps"][0]) if not math.isnan(s["steps"][0]) else "not reached",
                    report.fmt(s["seconds"][0]), s["diverged"]])

  summary = report.Report("Optimizers: the lineage from SGD to Nadam (summary)")
  summary.text(f"Target validation accuracy: MLP {config.target_accuracy:.0%}" +
               (f", VGG {config.vgg_target_accuracy:.0%}." if "vgg" in config else "."))
  summary.table(headers, table)
  summary.write(exp.path("summary.md"))

  rep = report.Report("Optimizers: the lineage from SGD to Nadam")
  rep.text(f"Each optimizer trains with its own grid of {len(config.lr_factors)} learning "
           f"rates (its usual rate x {tuple(config.lr_factors)}), "
           f"{len(config.seeds)} seed(s) for the MLP" +
           (f" and {len(config.vgg_seeds)} for the VGG; " if "vgg" in config else "; ") +
           f"{_budget(config.mlp)} for the MLP" +
           (f", {_budget(config.vgg)} for the VGG; " if "vgg" in config else "; ") +
           "the best rate is the one with the highest mean final validation accuracy. A "
           "group's seconds are the training time of its whole vmapped grid (same model and "
           "grid size for every optimizer, so they compare).")
  exp.what_was_run(rep, f"MLP: {common.dataset_note(config.mlp)}; " + (
      f"VGG: {common.dataset_note(config.vgg)}, at {config.vgg.dataset.image_size}x"
      f"{config.vgg.dataset.image_size}" if "vgg" in config else
      "no VGG: the data are features, not images"))
  rep.heading("(a) Networks")
  rep.image("learning_curves.png", "Validation curves at each optimizer's best learning rate.")
  rep.table(headers, table)
  rep.heading("(b) 2-D surfaces")
  rep.image("surfaces.png", "Paths of the eight optimizers on Beale's function, the "
            "Rosenbrock valley and the saddle x^2 - y^2 (animated: surfaces.gif).")
  rep.image("surfaces.gif", "The same paths, animated.")
  rep.table(surfaces.HEADERS, surfaces.table(surface_results, LABELS))
  exp.finish_report(rep, reading(verdicts(per_model), titles))


# Each general optimizer and a special case it includes (Choi et al. 2019).
INCLUSIONS = (("adam", "momentum"), ("nadam", "nesterov"), ("adam", "rmsprop"), ("momentum", "sgd"))


def verdicts(per_model: Dict[str, Dict]) -> Dict:
  """What the networks show, from each model's per-optimizer stats alone:
  the best and the spread, how far Adam is behind, whether each general
  optimizer matched the special case it includes (within a std), which best
  rates sit at the grid's edge, and whether "when unsure, Adam" holds."""
  models = {}
  inclusions = []
  for model, stats in per_model.items():
    ranked = sorted(stats.items(), key=lambda kv: -np.nan_to_num(kv[1]["test_acc"][0], nan=-1))
    best_name, best = ranked[0]
    m = {"best_name": best_name, "best": best,
         "spread": best["test_acc"][0] - ranked[-1][1]["test_acc"][0]}
    if "adam" in stats and best_name != "adam":
      adam = stats["adam"]
      m["adam_gap"] = best["test_acc"][0] - adam["test_acc"][0]
      m["adam_within_std"] = m["adam_gap"] <= max(best["test_acc"][1], adam["test_acc"][1])
    models[model] = m
    for general, special in INCLUSIONS:
      if general in stats and special in stats:
        inclusions.append(stats[general]["test_acc"][0] + stats[general]["test_acc"][1]
                          >= stats[special]["test_acc"][0] - stats[special]["test_acc"][1])
  adam_holds = all(
      s.get("adam") is None or (max(v["test_acc"][0] for v in s.values())
                                - s["adam"]["test_acc"][0] <= max(s["adam"]["test_acc"][1], 0.005))
      for s in per_model.values())
  return {"models": models, "inclusions": inclusions, "adam_holds": adam_holds,
          "edges": [(m, n) for m, st in per_model.items() for n, s in st.items() if s["edge"]]}


def reading(v: Dict, titles: Dict[str, str]) -> str:
  """The report's reading: words over `verdicts`."""
  text = []
  for model, m in v["models"].items():
    text.append(f"{titles[model]}: best test accuracy {report.pm(*m['best']['test_acc'])} with "
                f"{LABELS[m['best_name']]}; the spread from best to worst tuned optimizer is "
                f"{m['spread']:.3f}.")
    if "adam_gap" in m:
      text.append(f"Adam is {m['adam_gap']:.3f} behind the best"
                  + (" (within one seed std)." if m["adam_within_std"] else "."))
  if v["edges"]:
    text.append("Best rates at the grid's edge, where a wider grid might do better: "
                + ", ".join(f"{LABELS[n]} ({titles[m]})" for m, n in v["edges"]) + ".")
  ok = v["inclusions"]
  text.append("Choi et al. (2019) show that, tuned, an optimizer never does worse than the "
              "ones it includes as special cases (Adam includes Momentum and RMSProp; Nadam "
              "includes NAG); Schmidt et al. (2021) find that no optimizer dominates and that "
              "Adam is a strong default. Here, the more general optimizer matched its special "
              f"case within a std in {sum(ok)} of {len(ok)} comparisons, which "
              + ("agrees." if all(ok) else "disagrees in the remaining cases "
                 "(with this small a grid and budget, tuning noise can do that).")
              + " The seed's advice, when unsure, Adam, "
              + ("holds: Adam is within one std of the best here." if v["adam_holds"] else
                 "is a safe default here but not the winner everywhere."))
  return " ".join(text)


def run():
  common.run(NAME, get_config, train, prepare=prepare)


if __name__ == "__main__":
  run()
