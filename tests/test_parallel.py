"""Joining a multi-host run: pairs of processes on localhost, 2 simulated CPU devices each."""
import os
import subprocess
import sys

from conftest import ROOT, free_port, wait_all

# A host reaches a first collective after the other has waited longer than gloo's 30 s.
LATE_S = 35

HOST = f'''
import sys, time
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from codec import parallel
process_id, address, late_at = int(sys.argv[1]), sys.argv[2], sys.argv[3]
parallel.initialize_distributed(ml_collections.ConfigDict(dict(
    num_processes=2, process_id=process_id, coordinator_address=address)))
assert jax.device_count() == 4  # as the launcher checks the batch: every host's backend is up
mesh = parallel.make_mesh()
ones = parallel.shard_global(np.ones(4, np.float32), mesh)
if late_at == 'reduction' and process_id == 1:  # e.g. indexing more of the corpus, or compiling
  time.sleep({LATE_S})
# Every device, as the train step's reductions.
assert float(jax.jit(jnp.sum, out_shardings=parallel.replicated(mesh))(ones)) == 4
if late_at == 'barrier' and process_id == 0:
  time.sleep({LATE_S})
multihost_utils.sync_global_devices('first_barrier')  # one device per host, as Orbax's barriers
print('in step', flush=True)
'''


def test_a_host_late_to_its_first_collective_still_joins(tmp_path):
  """Two runs side by side (to pay the wait once): in one a host is late to the first reduction
  over every device, in the other to the first barrier over one device per host."""
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'PYTHONPATH': str(ROOT)}
  consoles, processes = [], []
  for late_at in ('reduction', 'barrier'):
    address = f'127.0.0.1:{free_port()}'
    for i in range(2):
      consoles.append(tmp_path / f'{late_at}_host_{i}.txt')
      with open(consoles[-1], 'w') as out:
        processes.append(subprocess.Popen([sys.executable, '-c', HOST, str(i), address, late_at],
                                          env=env, stdout=out, stderr=subprocess.STDOUT))
  wait_all(processes, timeout=LATE_S + 120)  # without the connections at start: a hang
  outputs = {c.name: c.read_text() for c in consoles}
  assert all(p.returncode == 0 for p in processes), {k: o[-2000:] for k, o in outputs.items()}
  assert all('in step' in o for o in outputs.values()), {k: o[-2000:] for k, o in outputs.items()}
