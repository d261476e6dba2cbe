"""Data parallelism: the device mesh, shardings, and multi-host start-up.

Two compiled forms of the same train step (config.parallelism):

- jit (default): one program over a Mesh with a 'data' axis. The batch is
  sharded along it; params and optimizer state are replicated; XLA inserts
  the gradient all-reduce. BatchNorm sees the global batch, so its
  statistics are the cross-device mean by construction, and dropout masks
  are identical to a single-device run (JAX's partitionable threefry).
- pmap: the classic form. The batch gets a leading device axis, and
  train_step takes axis_name so gradients, metrics and BatchNorm statistics
  are pmean'ed over it.

Every process holds the same replicated state; each process feeds only its
own rows of a global batch (jax.make_array_from_process_local_data), so the
code is the same for one process and for a pod.
"""

import dataclasses
import logging
import os
import sys
import threading
import time
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

logger = logging.getLogger(__name__)

PARALLELISMS = ("jit", "pmap")
DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1, auto: bool = False,
                           peer_timeout_s: float = 60.0) -> None:
  """Joins a multi-process JAX system before any computation.

  Explicit values (flags) win; `auto` lets JAX find them itself, as on TPU
  pods and SLURM clusters. With neither, this is a single-process run. In a
  multi-process run a PeerWatchdog ends this process with one clear line
  when a peer goes silent for peer_timeout_s (JAX itself would abort with
  a stack dump only after its 100 s heartbeat timeout).
  """
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif auto:
    jax.distributed.initialize()
  else:
    return
  logger.info("process %d of %d; %d local / %d global devices", jax.process_index(),
              jax.process_count(), jax.local_device_count(), jax.device_count())
  if jax.process_count() > 1 and peer_timeout_s > 0:
    global _watchdog
    _watchdog = PeerWatchdog(peer_timeout_s)
    _watchdog.start()


_watchdog = None


def wait_for_watchdog() -> None:
  """Called when this process's run raised. A collective can fail on a dead
  peer (a closed connection) before the watchdog has noticed the silence;
  exiting then would print a traceback and hang in jax.distributed's exit
  barrier, which waits for the dead peer. So give the watchdog one timeout
  to end the run with its line and exit code 3; if every peer is still
  alive, return, and the caller re-raises this process's own error."""
  if _watchdog is not None:
    time.sleep(_watchdog.timeout * 1.2 + 1)


class PeerWatchdog:
  """Heartbeats through the coordination service's key-value store.

  Each process bumps its own counter every timeout/5 seconds from a daemon
  thread (so a long compile or step does not count as silence) and watches
  the others'. A peer whose counter has not moved for `timeout` seconds, or
  a coordinator that no longer answers, ends this process (exit code 3)
  with one line on stderr, instead of a hang in the next collective.
  Restarting every process with the same command resumes from the last
  checkpoint.
  """

  EXIT_CODE = 3

  def __init__(self, timeout: float):
    self.timeout = timeout

  def start(self) -> None:
    threading.Thread(target=self._run, name="vgg_jax-peer-watchdog", daemon=True).start()

  def _run(self) -> None:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    client = distributed.global_state.client
    me, count = jax.process_index(), jax.process_count()
    seen = {p: (None, time.monotonic()) for p in range(count) if p != me}
    beat = 0
    while True:
      now = time.monotonic()
      try:
        beat += 1
        client.key_value_set(f"vgg_jax/heartbeat/{me}", str(beat), allow_overwrite=True)
        for peer, (value, since) in seen.items():
          try:
            current = client.key_value_try_get(f"vgg_jax/heartbeat/{peer}")
          except Exception:  # pylint: disable=broad-except  # Not written yet.
            current = None
          if current != value:
            seen[peer] = (current, now)
          elif now - since > self.timeout:
            self._stop(f"process {peer} of {count} sent no heartbeat for "
                       f"{now - since:.0f} s (preempted or crashed)")
      except Exception as e:  # pylint: disable=broad-except
        self._stop(f"lost the coordinator (process 0): {str(e).splitlines()[0][:120]}")
      time.sleep(self.timeout / 5)

  def _stop(self, why: str) -> None:
    print(f"vgg_jax: {why}; process {jax.process_index()} stops too. Restart every process "
          "with the same command: the run resumes from its last checkpoint.",
          file=sys.stderr, flush=True)
    os._exit(self.EXIT_CODE)  # pylint: disable=protected-access


def resolve_num_devices(requested: int) -> int:
  """-1 means every device of the (possibly multi-process) system."""
  return jax.device_count() if requested == -1 else requested


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """A 1-D mesh over the data axis and the shardings that go with it."""
  mesh: Mesh

  @classmethod
  def create(cls, num_devices: int) -> "DataParallel":
    # Processes contribute devices in order; ids need not be 0..N-1 (the
    # second CPU process starts at 2048), so take the list, not a range.
    devices = np.asarray(jax.devices()[:num_devices])
    return cls(Mesh(devices, (DATA_AXIS,)))

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P(DATA_AXIS))

  def replicate(self, tree: Any) -> Any:
    """Places an identical-on-every-process pytree on every device."""
    return jax.tree.map(lambda x: _global_array(self.replicated, x), tree)

  def shard_batch(self, local_batch: Any) -> Any:
    """This process's rows of a global batch -> a global array sharded on 'data'."""
    return jax.tree.map(lambda x: _global_array(self.batch_sharding, x), local_batch)


def bounded_dispatch(outputs: Any, num_devices: int) -> Any:
  """Waits for a multi-device CPU step before the next is queued.

  XLA:CPU runs each fake device on a shared thread pool; with several
  steps in flight, one device can enter step k's all-reduce while another
  is busy with step k+1, and the rendezvous times out (a fatal 40 s abort).
  One step in flight at a time costs nothing measurable on CPU, where
  dispatch overlap buys little. Accelerators keep full async dispatch.
  """
  if num_devices > 1 and jax.default_backend() == "cpu":
    jax.block_until_ready(outputs)
  return outputs


def _global_array(sharding: NamedSharding, x) -> jax.Array:
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  return jax.make_array_from_process_local_data(sharding, np.asarray(x))


# ------------------------------------------------------------------- pmap


def replicate_for_pmap(tree: Any, num_devices: int) -> Any:
  """A leading device axis on every leaf; pmap places one slice per device.

  (jax.device_put_replicated is gone in JAX 0.10; stacking is the portable way.)
  """
  return jax.tree.map(lambda x: np.stack([np.asarray(x)] * num_devices), tree)


def unreplicate(tree: Any) -> Any:
  return jax.tree.map(lambda x: x[0], tree)


def split_for_pmap(batch: Any, num_devices: int) -> Any:
  """[B, ...] -> [num_devices, B / num_devices, ...]."""
  return jax.tree.map(lambda x: x.reshape((num_devices, -1) + x.shape[1:]), batch)
