"""Reports shared by the experiments: tidy CSV rows in, markdown and PNGs out.

Everything a report says is computed from the CSV files a command wrote, so
rerunning the analysis on the same files rewrites the same report. matplotlib
is imported lazily (only plotting needs it) and draws with the Agg backend.
"""

import csv
import math
import os
import platform
import sys
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

Row = Dict[str, object]


# ------------------------------------------------------------------ rows


def parse_value(value: str):
  """A CSV cell: int, float, or the text itself."""
  if value == "":
    return value
  try:
    number = float(value)
  except ValueError:
    return value
  return int(number) if value.lstrip("-").isdigit() else number


def read_rows(path: str) -> List[Row]:
  """A CSV file's rows, with numbers parsed; [] if the file is missing."""
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    # run_id is a name (a hash of the run's config), never a number.
    return [{k: (v if k == "run_id" else parse_value(v)) for k, v in r.items()}
            for r in csv.DictReader(f)]


def write_rows(path: str, rows: Sequence[Row], fields: Sequence[str]) -> None:
  """Writes rows (missing fields blank) atomically: a reader never sees half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(fields)
    for r in rows:
      out.writerow([r.get(k, "") for k in fields])
  os.replace(tmp, path)


def where(rows: Iterable[Row], **equal) -> List[Row]:
  return [r for r in rows if all(r.get(k) == v for k, v in equal.items())]


def group_by(rows: Iterable[Row], *keys: str) -> Dict[Tuple, List[Row]]:
  groups: Dict[Tuple, List[Row]] = {}
  for r in rows:
    groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
  return groups


def final_rows(rows: Iterable[Row], split: str) -> Dict[int, Row]:
  """run_id -> the run's last row of `split`."""
  last: Dict[int, Row] = {}
  for r in rows:
    if r["split"] == split and (r["run_id"] not in last or r["step"] >= last[r["run_id"]]["step"]):
      last[r["run_id"]] = r
  return last


def curve(rows: Iterable[Row], run_id, split: str, x: str = "step", y: str = "loss"):
  """(xs, ys) of one run's split, in step order."""
  points = sorted((r["step"], r[x], r[y]) for r in rows
                  if r["run_id"] == run_id and r["split"] == split)
  return np.array([p[1] for p in points], float), np.array([p[2] for p in points], float)


def diverged_at(rows: Iterable[Row], run_id):
  """The first eval step at which the run was marked diverged, or None."""
  steps = [r["step"] for r in rows if r["run_id"] == run_id and r.get("status") == "diverged"]
  return min(steps) if steps else None


def mean_std(values: Iterable[float]) -> Tuple[float, float]:
  values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
  if not values:
    return math.nan, math.nan
  return float(np.mean(values)), float(np.std(values))


def welch_t(a: Sequence[float], b: Sequence[float]) -> float:
  """(mean(b) - mean(a)) in standard errors of that difference (Welch's t,
  sample variances): about 2 or more is a difference beyond seed noise. NaN
  with fewer than two values a side; inf when both sides have no spread."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  if len(a) < 2 or len(b) < 2:
    return math.nan
  diff = b.mean() - a.mean()
  se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
  if se == 0:
    return math.copysign(math.inf, diff) if diff else 0.0
  return float(diff / se)


def fmt(value, digits: int = 4) -> str:
  if isinstance(value, float):
    if math.isnan(value):
      return "-"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
      return f"{value:.2e}"
    return f"{value:.{digits}g}"
  return str(value)


def pm(mean: float, std: float, digits: int = 4) -> str:
  if math.isnan(mean):
    return "-"
  return f"{fmt(mean, digits)} ± {fmt(std, 2)}"


# -------------------------------------------------------------- markdown


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def environment() -> Dict[str, str]:
  """Versions and hardware, for a report's 'what was run'."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {
      "python": sys.version.split()[0],
      "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
      "numpy": np.__version__,
      "platform": f"{platform.system()} {platform.machine()}",
      "devices": f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()})",
      "cpu cores": str(os.cpu_count()),
  }


class Report:
  """A markdown document assembled section by section."""

  def __init__(self, title: str):
    self.parts = [f"# {title}\n"]

  def text(self, text: str) -> "Report":
    self.parts.append(text.strip() + "\n")
    return self

  def heading(self, text: str) -> "Report":
    self.parts.append(f"## {text}\n")
    return self

  def table(self, headers, rows) -> "Report":
    self.parts.append(table(headers, rows) + "\n")
    return self

  def image(self, filename: str, caption: str) -> "Report":
    self.parts.append(f"![{caption}]({filename})\n\n*{caption}*\n")
    return self

  def write(self, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
      f.write("\n".join(self.parts))
    os.replace(tmp, path)


# ----------------------------------------------------------------- plots


def pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save(fig, path: str) -> None:
  """PNG without a timestamp, so the same data gives the same file."""
  fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
  pyplot().close(fig)


def colors(n: int, cmap: str = "viridis") -> List:
  cm = pyplot().get_cmap(cmap)
  return [cm(x) for x in (np.linspace(0.0, 0.9, n) if n > 1 else [0.0])]


def plot_curves(ax, series: Sequence[Tuple[str, np.ndarray, np.ndarray, object]]) -> None:
  """Lines with NaN/Inf points left out (a diverged run's line just ends)."""
  for label, xs, ys, color in series:
    ok = np.isfinite(ys)
    ax.plot(xs[ok], ys[ok], color=color, label=label)
