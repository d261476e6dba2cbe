"""Sigmoid vs ReLU with depth: vanishing gradients, measured layer by layer.

    vgg-jax vanishing-gradient --workdir=/tmp/vgg_jax/exp/vanishing_gradient --mode=quick

MLPs of width 256 with 1 to 16 hidden layers (full: 32), sigmoid and ReLU
(full: tanh too), each with the classic small uniform init (U[-1/sqrt(fan_in),
1/sqrt(fan_in)]) and with the modern one (Glorot for sigmoid/tanh, He for
ReLU). SGD with momentum 0.9 (`optimizer`, `momentum`: plain SGD with
`--config.optimizer=sgd`); each (depth, activation, init) cell is one program
whose learning-rate grid x seeds train together under vmap. Every layer's
weight gradient norm is measured on a fixed batch of 512 training examples at
initialization and at every eval (probes.csv).

The budget matters for the accuracy side of the story: with plain SGD and a
few hundred steps, deep ReLU nets trail shallow ones simply because they have
not finished training. With momentum the deep He-initialized ReLU net can
catch up; the reading says, from the runs, whether it did.
"""


from typing import Dict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from . import common
from vgg_jax import report

NAME = "vanishing_gradient"
MODERN = {"sigmoid": "glorot_uniform", "tanh": "glorot_uniform", "relu": "he_normal"}


def get_config(mode: str):
  config = ml_collections.ConfigDict()
  train = common.train_config(mode)
  train.dataset.num_train_examples = {"smoke": -1, "quick": 10000, "full": -1}[mode]
  train.batch_size = 64
  # A budget in steps, the same on any dataset (quick: 5 epochs of the 10,000
  # Fashion-MNIST examples; about 40 epochs of digits).
  train.num_train_steps = {"smoke": 40, "quick": 780, "full": 16000}[mode]
  config.train = train
  config.optimizer = "momentum"  # Or "sgd": plain SGD (the first round's budget).
  config.momentum = 0.9
  config.width = 32 if mode == "smoke" else 256
  config.depths = {"smoke": (1, 4), "quick": (1, 2, 4, 8, 16),
                   "full": (1, 2, 4, 8, 16, 32)}[mode]
  # tanh in full mode only: quick mode's 10 minutes hold sigmoid vs ReLU at
  # 5 depths x 2 inits x 3 rates x 3 seeds.
  config.activations = ("sigmoid", "tanh", "relu") if mode == "full" else ("sigmoid", "relu")
  config.inits = ("classic", "modern")
  # With momentum 0.9 a step moves about 10x as far as plain SGD's: these are
  # plain SGD's (0.01, 0.1, 1.0), divided by 10.
  config.learning_rates = (0.01,) if mode == "smoke" else (0.001, 0.01, 0.1)
  config.seeds = common.seeds(mode)
  config.evals_per_run = {"smoke": 2, "quick": 5, "full": 20}[mode]
  return config


def grad_norms(state, images, labels, *, head):
  """Each layer's weight-gradient norm on one batch (eval mode)."""

  def loss(params):
    logits = state.apply_fn({"params": params}, images, train=False)
    return head.loss(logits, labels).mean()

  grads = jax.grad(loss)(state.params)
  return {name: jnp.linalg.norm(g["kernel"]) for name, g in grads.items()}


def _init_name(init: str, activation: str) -> str:
  return "classic_uniform" if init == "classic" else MODERN[activation]


def train(exp: common.Experiment):
  config = exp.config
  config.train.eval_every_steps = common.eval_every(config.train, config.evals_per_run)
  config.train.optimizer.name = config.optimizer
  config.train.optimizer.momentum = config.momentum
  # One program per cell, its rates x seeds vmapped: on CPU the engine would
  # train these mid-sized MLPs one by one (faster per step), but 270 runs of a
  # few hundred steps then spend most of their time compiling.
  config.train.sweep_vmap_size = len(config.learning_rates) * len(config.seeds)
  runs = [{"model.hidden_sizes": [config.width] * depth, "model.activation": act,
           "model.kernel_init": _init_name(init, act), "optimizer.learning_rate": lr,
           "seed": s}
          for depth in config.depths for act in config.activations for init in config.inits
          for lr in config.learning_rates for s in config.seeds]
  exp.sweep("sgd", config.train, runs, probe=grad_norms)
  analyze(exp)


def _layer_index(name: str, depth: int) -> int:
  return depth + 1 if name == "output" else int(name.split("_")[1]) + 1


def _cells(rows, probes, config):
  """(init, activation, depth) -> best-rate stats and per-layer gradient norms."""
  cells = {}
  for row in rows:
    row["depth"] = len(json_list(row["model.hidden_sizes"]))
  for probe in probes:
    probe["depth"] = len(json_list(probe["model.hidden_sizes"]))
  for init in config.inits:
    for act in config.activations:
      for depth in config.depths:
        match = {"model.activation": act, "model.kernel_init": _init_name(init, act),
                 "depth": depth}
        cell_rows, cell_probes = report.where(rows, **match), report.where(probes, **match)
        if not cell_rows:
          continue
        best = common.best_on_validation(cell_rows)
        last_step = max(p["step"] for p in cell_probes)
        cells[init, act, depth] = {
            **best,
            "init_norms": _norms(cell_probes, 0, None, depth),
            "trained_norms": _norms(cell_probes, last_step, best["ids"], depth),
        }
  return cells


def json_list(value):
  import json  # pylint: disable=g-import-not-at-top
  return json.loads(value) if isinstance(value, str) else value


def _norms(probes, step, ids, depth) -> np.ndarray:
  """Mean gradient norm per layer (index 1..depth+1) at `step` over runs `ids` (all: None)."""
  by_layer = {}
  for p in probes:
    if p["step"] == step and (ids is None or p["run_id"] in ids):
      by_layer.setdefault(_layer_index(p["name"], depth), []).append(p["value"])
  return np.array([np.mean(by_layer[k]) for k in sorted(by_layer)])


def _plot_norms(exp, cells):
  config = exp.config
  plt = report.pyplot()
  for key, title, filename in (
      ("init_norms", "at initialization", "grad_norms_init.png"),
      ("trained_norms", "after training (best learning rate)", "grad_norms_trained.png")):
    fig, axes = plt.subplots(len(config.inits), len(config.activations),
                             figsize=(4.6 * len(config.activations), 3.8 * len(config.inits)),
                             squeeze=False, sharey=True, constrained_layout=True)
    colors = report.colors(len(config.depths), "viridis")
    for i, init in enumerate(config.inits):
      for j, act in enumerate(config.activations):
        ax = axes[i][j]
        for depth, color in zip(config.depths, colors):
          if (init, act, depth) in cells:
            norms = cells[init, act, depth][key]
            ax.plot(np.arange(1, len(norms) + 1), norms, "o-", ms=3, color=color,
                    label=f"{depth} hidden")
        ax.set_yscale("log")
        ax.set_title(f"{act}, {_init_name(init, act)}")
        if i == len(config.inits) - 1:
          ax.set_xlabel("layer (1 = first hidden, last = output)")
        if j == 0:
          ax.set_ylabel("weight-gradient norm")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"Per-layer gradient norms {title}")
    report.save(fig, exp.path(filename))


def _plot_accuracy(exp, cells):
  config = exp.config
  plt = report.pyplot()
  fig, axes = plt.subplots(1, len(config.inits), figsize=(6 * len(config.inits), 4),
                           squeeze=False, sharey=True)
  for ax, init in zip(axes[0], config.inits):
    for act in config.activations:
      depths = [d for d in config.depths if (init, act, d) in cells]
      means = [cells[init, act, d]["test_acc"][0] for d in depths]
      stds = [cells[init, act, d]["test_acc"][1] for d in depths]
      ax.errorbar(depths, means, yerr=stds, marker="o", capsize=3, label=act)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("hidden layers")
    ax.set_ylabel("test accuracy (best lr on validation)")
    ax.set_title(f"{init} init")
    ax.legend()
  report.save(fig, exp.path("accuracy_vs_depth.png"))


def analyze(exp: common.Experiment):
  config = exp.config
  cells = _cells(exp.write_results(), exp.rows("sgd", "probes.csv"), config)
  _plot_norms(exp, cells)
  _plot_accuracy(exp, cells)

  def ratio(cell):
    norms = cell["init_norms"]
    return norms[0] / norms[-1]

  headers = ["activation", "init"] + [f"{d} hidden" for d in config.depths]
  ratio_table = [[act, _init_name(init, act)] + [
      report.fmt(ratio(cells[init, act, d])) if (init, act, d) in cells else "-"
      for d in config.depths] for act in config.activations for init in config.inits]
  acc_table = [[act, _init_name(init, act)] + [
      f"{report.pm(*cells[init, act, d]['test_acc'], digits=3)} (lr {report.fmt(cells[init, act, d]['lr'])})"
      if (init, act, d) in cells else "-" for d in config.depths]
               for act in config.activations for init in config.inits]

  summary = report.Report("Vanishing gradients: sigmoid vs ReLU with depth (summary)")
  summary.text("First-layer / last-layer weight-gradient norm at initialization:")
  summary.table(headers, ratio_table)
  summary.text("Test accuracy at the best learning rate (chosen on validation):")
  summary.table(headers, acc_table)
  summary.write(exp.path("summary.md"))

  rep = report.Report("Vanishing gradients: sigmoid vs ReLU with depth")
  rep.text(f"MLPs of width {config.width} with {', '.join(map(str, config.depths))} hidden "
           f"layers; activations {', '.join(config.activations)}; each with the classic "
           "small uniform init and the modern one (Glorot for sigmoid/tanh, He for ReLU). "
           f"{_optimizer_text(config)}, learning rates {tuple(config.learning_rates)} per "
           f"cell, {len(config.seeds)} seed(s), {_steps(config)} steps of batch "
           f"{config.train.batch_size}. Gradient norms are of each layer's weight matrix, "
           "on a fixed batch of 512 training examples.")
  exp.what_was_run(rep, common.dataset_note(config.train))
  rep.heading("Result")
  rep.image("grad_norms_init.png", "Weight-gradient norm per layer at initialization, per "
            "activation and init, one line per depth (log scale).")
  rep.image("grad_norms_trained.png", "The same after training, at each cell's best "
            "learning rate.")
  rep.image("accuracy_vs_depth.png", "Test accuracy against depth (mean ± std over seeds).")
  rep.text("First-layer / last-layer (output) weight-gradient norm at initialization:")
  rep.table(headers, ratio_table)
  rep.text("Test accuracy at the best learning rate:")
  rep.table(headers, acc_table)
  exp.finish_report(rep, reading(verdicts(cells, config.depths, config.activations,
                                             config.inits), config))


def _optimizer_text(config) -> str:
  if config.optimizer == "sgd":
    return "Plain SGD"
  return f"SGD with {config.optimizer} {config.momentum:g}"


def _steps(config) -> int:
  if config.train.num_train_steps > 0:
    return config.train.num_train_steps
  return config.train.num_epochs * (common.num_train(config.train) // config.train.batch_size)


def _depth_verdicts(cells, depths) -> Dict:
  """How deep the He-initialized ReLU net goes while at least matching the
  shallowest one (within seed noise), and what sigmoid does there."""
  shallow = min(depths)
  relu = {d: cells[("modern", "relu", d)] for d in depths if ("modern", "relu", d) in cells}
  if shallow not in relu or len(relu) < 2:
    return {}
  m0, s0 = relu[shallow]["test_acc"]

  def matches(d):
    m, s = relu[d]["test_acc"]
    return m >= m0 - max(s0, s, 1e-3)

  deeper = [d for d in relu if d > shallow]
  held = [d for d in deeper if matches(d)]
  v = {"shallow": shallow, "relu": relu, "held": max(held) if held else None,
       "trailing": [d for d in deeper if not matches(d)]}
  if held:
    sig = {d: cells.get(("classic", "sigmoid", d)) or cells.get(("modern", "sigmoid", d))
           for d in (shallow, v["held"])}
    if sig[v["held"]] and sig[shallow]:
      v["sigmoid"] = (sig[v["held"]], sig[shallow])
      v["sigmoid_collapses"] = sig[v["held"]]["test_acc"][0] < sig[shallow]["test_acc"][0] - 0.1
  return v


def verdicts(cells, depths, activations, inits) -> Dict:
  """What the grid shows, from its cells alone ((init, activation, depth) ->
  gradient norms and test accuracy): depth with ReLU + He init, the
  first/last gradient ratios at the deepest setting, whether the classic init
  holds ReLU back, Nielsen's 4-layer speed ratio, and whether it agrees with
  Glorot & Bengio (2010)."""
  deep = max(depths)
  get = lambda init, act: cells.get((init, act, deep))  # noqa: E731
  sig, relu, relu_he = get("classic", "sigmoid"), get("classic", "relu"), get("modern", "relu")
  ratio = lambda cell: cell["init_norms"][0] / cell["init_norms"][-1]  # noqa: E731
  four = cells.get(("classic", "sigmoid", 4))
  sig_glorot = get("modern", "sigmoid")
  return {
      "deep": deep, "depth": _depth_verdicts(cells, depths), "sigmoid": sig, "relu": relu,
      "relu_he": relu_he,
      "ratios": (ratio(sig), ratio(relu)) if sig and relu else None,
      "init_holds_relu_back": bool(relu and relu_he
                                   and relu_he["test_acc"][0] > relu["test_acc"][0] + 0.05),
      "four_layer_speed": (four["init_norms"][3] / four["init_norms"][0]
                           if four is not None and len(four["init_norms"]) >= 5 else None),
      "sigmoid_worst": all(
          cells[init, "sigmoid", deep]["test_acc"][0] <= min(
              cells[init, a, deep]["test_acc"][0] for a in activations)
          for init in inits if (init, "sigmoid", deep) in cells),
      "decays": bool(sig) and ratio(sig) < 0.1,
      "glorot_helps": bool(sig_glorot and sig and
                           sig_glorot["test_acc"][0] > sig["test_acc"][0]),
  }


def _depth_reading(d: Dict, config) -> str:
  if not d:
    return ""
  relu, shallow = d["relu"], d["shallow"]
  curve = ", ".join(f"{k}: {report.fmt(relu[k]['test_acc'][0], 3)}" for k in relu)
  text = [f"Depth with ReLU + He init at this budget ({_optimizer_text(config)}, "
          f"{_steps(config)} steps), test accuracy by hidden layers: {curve}."]
  if d["held"] is not None:
    held = d["held"]
    text.append(f"A deeper ReLU net at least matches the {shallow}-layer one (within one "
                f"seed std, or above) up to {held} layers: "
                f"{report.pm(*relu[held]['test_acc'], digits=3)} vs "
                f"{report.pm(*relu[shallow]['test_acc'], digits=3)}.")
    if "sigmoid" in d:
      deep_sig, shallow_sig = d["sigmoid"]
      text.append(f"Sigmoid at {held} layers: {report.pm(*deep_sig['test_acc'], digits=3)} "
                  f"against {report.pm(*shallow_sig['test_acc'], digits=3)} at {shallow}: " +
                  ("it collapses, so the textbook picture holds there." if
                   d["sigmoid_collapses"] else "it does not collapse there at this budget."))
  else:
    text.append(f"It does not hold here: no deeper ReLU net matches the {shallow}-layer one.")
  if d["trailing"]:
    text.append(f"At {', '.join(map(str, d['trailing']))} layers ReLU + He trails the "
                f"{shallow}-layer net by more than the seed spread: this budget is too short "
                "for depth to pay there.")
  return " ".join(text)


def reading(v: Dict, config) -> str:
  """The report's reading: words over `verdicts`."""
  deep, sig, relu = v["deep"], v["sigmoid"], v["relu"]
  text = [t for t in [_depth_reading(v["depth"], config)] if t]
  if v["ratios"]:
    text.append(f"With the classic init and {deep} hidden layers, the first layer's gradient "
                f"is {report.fmt(v['ratios'][0])} times the output layer's for sigmoid and "
                f"{report.fmt(v['ratios'][1])} for ReLU.")
    text.append(f"Test accuracy there: sigmoid {report.pm(*sig['test_acc'], digits=3)}, ReLU "
                f"{report.pm(*relu['test_acc'], digits=3)}.")
  if v["init_holds_relu_back"]:
    text.append(f"ReLU alone is not the whole fix: with the classic small init the "
                f"{deep}-layer ReLU net reaches only {report.fmt(relu['test_acc'][0], 3)}, "
                f"with He init {report.fmt(v['relu_he']['test_acc'][0], 3)} (the classic init "
                "shrinks the signal by a constant factor per layer).")
  if v["four_layer_speed"] is not None:
    text.append(f"In the 4-hidden-layer sigmoid net the fourth hidden layer's gradient is "
                f"{v['four_layer_speed']:.0f}x the first's (Nielsen, ch. 5, reports about 100x "
                "for his [784, 30, 30, 30, 30, 10] sigmoid net).")
  worst, decays = v["sigmoid_worst"], v["decays"]
  text.append("Glorot & Bengio (2010) find sigmoid the worst activation, with deep sigmoid "
              "nets saturating and stalling. This run "
              + ("agrees: the sigmoid gradient decays toward the input and sigmoid is the "
                 "worst at the deepest setting." if worst and decays else
                 "only partly agrees: " + ("the gradient decays toward the input, " if decays
                                          else "the gradient does not decay by 10x, ")
                 + ("and sigmoid is the worst at the deepest setting." if worst else
                    "but sigmoid is not the worst at the deepest setting."))
              + (" With Glorot init sigmoid nets train better than with the classic init, "
                 "as the paper's normalized init intends." if v["glorot_helps"] else ""))
  return " ".join(text)


def run():
  common.run(NAME, get_config, train)


if __name__ == "__main__":
  run()
