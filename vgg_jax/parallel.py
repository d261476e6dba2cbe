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
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

logger = logging.getLogger(__name__)

PARALLELISMS = ("jit", "pmap")
DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1, auto: bool = False) -> None:
  """Joins a multi-process JAX system before any computation.

  Explicit values (flags) win; `auto` lets JAX find them itself, as on TPU
  pods and SLURM clusters. With neither, this is a single-process run.
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
