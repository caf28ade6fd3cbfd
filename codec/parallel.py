"""Data parallelism: a 1-D mesh over every device (of every host), batch sharded, params replicated.

`jax.jit` with `NamedSharding` partitions the step over the mesh (GSPMD); with
`jax.distributed.initialize` the same code runs over many hosts, each feeding only its shard.
"""
import os

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def initialize_distributed(dist: ml_collections.ConfigDict) -> None:
  """Joins a multi-host run when asked to by the config or the environment; no-op otherwise.

  Config fields win; otherwise jax reads its usual variables (coordinator, process count/id)
  and cluster auto-detection (Slurm, TPU pods) when `JAX_COORDINATOR_ADDRESS` is set.
  """
  if dist.num_processes > 1:
    if not dist.coordinator_address or dist.process_id < 0:
      raise ValueError('--config.distributed.num_processes > 1 needs --config.distributed.'
                       'coordinator_address=HOST:PORT and --config.distributed.process_id=N')
    # Cross-host collectives between CPU devices (tests, CPU clusters); no effect on GPU/TPU. Set
    # before anything touches a backend.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=dist.coordinator_address,
                               num_processes=dist.num_processes, process_id=dist.process_id)
  elif os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize()
  else:
    return
  _connect_hosts()


def _connect_hosts() -> None:
  """Connects the hosts' CPU collectives now, while every host is at the same point.

  Gloo connects the devices of a collective the first time that set of devices meets, and gives
  a late host 30 s: hosts that then index a corpus, restore a checkpoint or compile the train
  step at different speeds could miss it. Here they have just left the backend's creation, which
  waits for every host. Two sets meet later: one device of each host (the barriers of
  `sync_global_devices`, which Orbax uses) and every device (the train step's reductions). Later
  collectives reuse these connections and wait for a late host past those 30 s
  (tests/test_parallel.py).
  """
  multihost_utils.sync_global_devices('codec_start')
  mesh = make_mesh()
  ones = shard_global(np.ones(jax.device_count(), np.float32), mesh)
  jax.jit(jnp.sum, out_shardings=replicated(mesh))(ones).block_until_ready()


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ('data',))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int) -> None:
  devices, hosts = jax.device_count(), jax.process_count()
  if global_batch_size % devices or global_batch_size % hosts:
    raise ValueError(f'--batch_size {global_batch_size} must be divisible by the number of devices '
                     f'({devices}) and hosts ({hosts}); try {max(devices, 1) * max(1, global_batch_size // devices)}')


def shard_batch(local_batch: np.ndarray, mesh: Mesh) -> jax.Array:
  """Places this host's rows f32[B_local, T] as its part of the global batch f32[B, T]."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local_batch)


def shard_global(batch: np.ndarray, mesh: Mesh) -> jax.Array:
  """Places a batch every host holds in full (e.g. the fixed validation set) on the mesh."""
  return jax.make_array_from_callback(batch.shape, batch_sharding(mesh), lambda idx: batch[idx])


def all_processes(value: np.ndarray) -> np.ndarray:
  """value from every host, stacked along a new first axis (a collective: every host calls it)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(value)
