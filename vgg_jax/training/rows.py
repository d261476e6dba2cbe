"""Per-step train metrics on their way to log rows, and what divergence reports.

Chunks stay on the device until a log point, eval or checkpoint, then come
back in one transfer for all members; a row averages the steps since the
previous row. Every step is checked for a non-finite loss or gradient on
the way, and the first such step of each member is kept.
"""

import hashlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import jax
import numpy as np

from vgg_jax.errors import DivergedError
from vgg_jax.training.steps import GRAD_FINITE


class TrainRows:
  """One member's per-step metrics not yet averaged into a row.

  `divergence` is (step, loss, leaf-finite flags) of the first non-finite
  step, or None.
  """

  def __init__(self, last_logged: int, snapshot: Optional[Dict] = None):
    self.last_logged = last_logged
    snapshot = snapshot or {}
    self._steps = np.asarray(snapshot.get("steps", []), np.int64)
    self._host = {k: np.asarray(v, np.float32) for k, v in snapshot.get("metrics", {}).items()}
    self.divergence = None

  def snapshot(self) -> Dict:
    """The steps not yet in a row, exactly, for the checkpoint (JSON-able)."""
    return {"steps": self._steps.tolist(),
            "metrics": {k: [float(x) for x in v] for k, v in self._host.items()}}

  def add_host(self, first: int, stacked: Dict[str, np.ndarray]) -> None:
    """Appends one chunk's host metrics ([steps] each; GRAD_FINITE [steps, leaves])."""
    stacked = dict(stacked)
    finite = stacked.pop(GRAD_FINITE, None)
    n = len(stacked["loss"])
    if self.divergence is None:
      bad = ~np.isfinite(stacked["loss"])
      if finite is not None:
        bad |= ~finite.all(axis=1)
      if bad.any():
        i = int(np.argmax(bad))
        self.divergence = (first + i, float(stacked["loss"][i]),
                           None if finite is None else finite[i])
    self._steps = np.concatenate([self._steps, np.arange(first, first + n)])
    for k, v in stacked.items():
      self._host[k] = np.concatenate([self._host.get(k, np.zeros(0, v.dtype)), v])

  def rows_through(self, boundaries) -> Iterator[Tuple[int, Dict[str, float]]]:
    """Yields (step, means since the previous row) for each boundary, in order."""
    for b in boundaries:
      window = (self._steps > self.last_logged) & (self._steps <= b)
      yield b, {k: float(np.mean(v[window])) for k, v in self._host.items()}
      self.last_logged = b
    keep = self._steps > self.last_logged
    self._steps = self._steps[keep]
    self._host = {k: v[keep] for k, v in self._host.items()}


class MemberRows:
  """TrainRows for K members, fed from chunks whose metrics carry a leading
  member axis ([K, steps, ...]); one device-to-host transfer per fetch."""

  def __init__(self, rows: Sequence[TrainRows]):
    self.members = list(rows)
    self._device = []  # (first step, stacked metrics [K, steps, ...])

  def add(self, first_step: int, pieces) -> None:
    """One chunk's metrics: its consecutive pieces', each [K, steps, ...]."""
    for piece in pieces:
      self._device.append((first_step, piece))
      first_step += piece["loss"].shape[1]

  def fetch(self) -> None:
    """Brings pending chunks to the host (waits for the device)."""
    for first, stacked in jax.device_get(self._device):
      for j, rows in enumerate(self.members):
        rows.add_host(first, {k: v[j] for k, v in stacked.items()})
    self._device = []

  def snapshots(self) -> List[Dict]:
    self.fetch()
    return [rows.snapshot() for rows in self.members]


def params_fingerprint(params) -> str:
  """SHA-256 of every parameter's bytes and path: equal iff bit-for-bit equal."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    local = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf  # One replica.
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(jax.device_get(local)).tobytes())
  return digest.hexdigest()


def first_nonfinite_layers(params, finite: Optional[np.ndarray]) -> List[str]:
  """Layers (in forward order) whose gradient had a non-finite leaf, per the
  per-leaf flags of the GRAD_FINITE step metric."""
  if finite is None:
    return []
  order = {name: i for i, name in enumerate(params)}  # Flax keeps creation order.
  bad = set()
  for (path, _), ok in zip(jax.tree_util.tree_leaves_with_path(params), finite):
    if not ok:
      bad.add(path[0].key)
  return sorted(bad, key=lambda name: order.get(name, len(order)))


def divergence_error(divergence, params, workdir: str) -> DivergedError:
  step, loss, finite = divergence
  layers = first_nonfinite_layers(params, finite)
  where = (f"; first non-finite gradient in layer {layers[0]}"
           + (f" (and {len(layers) - 1} more)" if len(layers) > 1 else "") if layers else "")
  error = DivergedError(f"training diverged at step {step}: loss {loss}{where}. Checkpoints "
                        f"before step {step} are kept in {workdir}; lower "
                        "optimizer.learning_rate or set optimizer.grad_clip_norm")
  error.step, error.layer = step, (layers[0] if layers else None)
  error.loss = loss
  return error
