"""The optimizers on 2-D surfaces: Beale's function, the Rosenbrock valley
and the saddle x^2 - y^2, every optimizer from the same start, drawn over the
contours as a PNG and an animated GIF (part (b) of the optimizers experiment).

Each optimizer's step size is the one from a grid with the lowest mean loss
along its path (escaping, for the saddle); a path that leaves the box
counts as diverging.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import optim
from vgg_jax import report
from vgg_jax.config_lib import base_config


def beale(p):
  x, y = p[0], p[1]
  return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y ** 2) ** 2 + (2.625 - x + x * y ** 3) ** 2


def rosenbrock(p):
  return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


def saddle(p):
  return p[0] ** 2 - p[1] ** 2


# name: (function, start, minimum (None: unbounded), (xmin, xmax, ymin, ymax), log contours)
SURFACES = {
    "beale": (beale, (1.0, 1.5), (3.0, 0.5), (-4.5, 4.5, -4.5, 4.5), True),
    "rosenbrock": (rosenbrock, (-1.2, 1.0), (1.0, 1.0), (-2.0, 2.0, -1.0, 3.0), True),
    "saddle": (saddle, (1.0, 1e-3), None, (-1.5, 1.5, -1.5, 1.5), False),
}


def trajectories(fn, start, box, name: str, lrs, steps: int) -> np.ndarray:
  """[len(lrs), steps + 1, 2] paths of optimizer `name`, one per learning rate.

  A path that leaves the box (or turns non-finite) stays where it left.
  """
  cfg = base_config().optimizer
  cfg.name = name
  tx, _ = optim.create_optimizer(cfg, steps)
  grad = jax.grad(fn)
  lo, hi = jnp.array(box[::2]), jnp.array(box[1::2])

  def path(lr):
    p0 = jnp.array(start, jnp.float32)
    state = tx.init(p0)
    state.hyperparams["learning_rate"] = lr

    def body(carry, _):
      p, state, inside = carry
      updates, new_state = tx.update(grad(p), state, p)
      new_p = p + updates
      ok = inside & jnp.all(jnp.isfinite(new_p)) & jnp.all((new_p >= lo) & (new_p <= hi))
      p = jnp.where(ok, new_p, p)
      return (p, jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, state), ok), p

    _, ps = jax.lax.scan(body, (p0, state, jnp.array(True)), None, length=steps)
    return jnp.concatenate([p0[None], ps])

  return np.asarray(jax.jit(jax.vmap(path))(jnp.asarray(lrs, jnp.float32)))


def results(config):
  """surface -> optimizer -> {lr, path, score}: the best path of each grid."""
  results = {}
  for surface, (fn, start, minimum, box, _) in SURFACES.items():
    results[surface] = {}
    for name in config.surface_optimizers:
      paths = trajectories(fn, start, box, name, config.surface_lrs, config.surface_steps)
      values = fn(np.moveaxis(paths, -1, 0))  # [lrs, steps + 1]
      left = [not np.all((path[-1] > np.array(box[::2])) & (path[-1] < np.array(box[1::2])))
              for path in paths]
      if minimum is None:  # The saddle: escaping is the goal; lower mean is faster.
        scores = values.mean(axis=1)
      else:  # Leaving the box counts as diverging.
        scores = np.where(left, np.inf, values.mean(axis=1))
      j = int(np.argmin(scores))
      end = paths[j][-1]
      results[surface][name] = {
          "lr": float(config.surface_lrs[j]), "path": paths[j],
          "final": float(values[j][-1]), "left": bool(left[j]),
          "distance": (float(np.hypot(*(end - np.array(minimum)))) if minimum else math.nan),
          "escape_step": (int(np.argmax(np.abs(paths[j][:, 1]) > 1.0))
                          if minimum is None and np.any(np.abs(paths[j][:, 1]) > 1.0) else None),
      }
  return results


def _contours(ax, surface):
  fn, start, minimum, box, log = SURFACES[surface]
  xs = np.linspace(box[0], box[1], 200)
  ys = np.linspace(box[2], box[3], 200)
  grid_x, grid_y = np.meshgrid(xs, ys)
  z = np.asarray(fn(np.stack([grid_x, grid_y])))
  if log:
    ax.contour(grid_x, grid_y, z, levels=np.logspace(-1, 5, 25), norm="log", cmap="Greys",
               linewidths=0.6)
  else:
    ax.contour(grid_x, grid_y, z, levels=20, cmap="Greys", linewidths=0.6)
  if minimum:
    ax.plot(*minimum, "r*", markersize=14)
  ax.plot(*start, "ko", markersize=5)
  ax.set_xlim(box[0], box[1])
  ax.set_ylim(box[2], box[3])
  ax.set_title(surface)


def plot(results, labels, png_path, gif_path, frames: int):
  plt = report.pyplot()
  from matplotlib import animation  # pylint: disable=g-import-not-at-top
  names = list(next(iter(results.values())))
  colors = dict(zip(names, report.colors(len(names), "tab10")))
  fig, axes = plt.subplots(1, len(SURFACES), figsize=(6 * len(SURFACES), 5.2))
  lines = {}
  for ax, surface in zip(axes, SURFACES):
    _contours(ax, surface)
    for name, r in results[surface].items():
      lines[surface, name], = ax.plot(r["path"][:, 0], r["path"][:, 1], color=colors[name],
                                      lw=1.6, label=f"{labels[name]} ({report.fmt(r['lr'])})")
    ax.legend(fontsize=7, loc="lower left")
  report.save(fig, png_path)

  fig, axes = plt.subplots(1, len(SURFACES), figsize=(5 * len(SURFACES), 4.3))
  for ax, surface in zip(axes, SURFACES):
    _contours(ax, surface)
    for name in names:
      lines[surface, name], = ax.plot([], [], color=colors[name], lw=1.6, label=labels[name])
  axes[0].legend(fontsize=7, loc="lower left")
  steps = len(next(iter(results["beale"].values()))["path"])
  cut = np.unique(np.geomspace(1, steps, frames).astype(int))  # Early steps move most.

  def draw(k):
    for (surface, name), line in lines.items():
      path = results[surface][name]["path"][:cut[k]]
      line.set_data(path[:, 0], path[:, 1])
    return list(lines.values())

  anim = animation.FuncAnimation(fig, draw, frames=len(cut), blit=True)
  anim.save(gif_path, writer=animation.PillowWriter(fps=10), dpi=60)
  plt.close(fig)


HEADERS = ["surface", "optimizer", "step size", "final f", "distance to minimum",
           "left the box"]


def table(results, labels):
  """One row per surface and optimizer, under HEADERS."""
  return [[surface, labels[name], report.fmt(r["lr"]), report.fmt(r["final"]),
           report.fmt(r["distance"]) if SURFACES[surface][2] else
           (f"escaped at step {r['escape_step']}" if r["escape_step"] is not None
            else "stuck"), "yes" if r["left"] else "no"]
          for surface, by_name in results.items() for name, r in by_name.items()]
