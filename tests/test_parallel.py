"""Joining a multi-host run: two processes on localhost, 2 simulated CPU devices each."""
import os
import subprocess
import sys

from conftest import ROOT, free_port, wait_all

# Each host in turn reaches a first collective after the other has waited longer than gloo's 30 s.
LATE_S = 35

HOST = f'''
import sys, time
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from codec import parallel
process_id, address = int(sys.argv[1]), sys.argv[2]
parallel.initialize_distributed(ml_collections.ConfigDict(dict(
    num_processes=2, process_id=process_id, coordinator_address=address)))
assert jax.device_count() == 4  # as the launcher checks the batch: every host's backend is up
mesh = parallel.make_mesh()
ones = parallel.shard_global(np.ones(4, np.float32), mesh)
if process_id == 1:  # e.g. indexing a larger share of the corpus, or compiling slower
  time.sleep({LATE_S})
# Every device, as the train step's reductions: host 0 waits for host 1 here.
assert float(jax.jit(jnp.sum, out_shardings=parallel.replicated(mesh))(ones)) == 4
if process_id == 0:
  time.sleep({LATE_S})
multihost_utils.sync_global_devices('first_barrier')  # one device per host: host 1 waits
print('in step', flush=True)
'''


def test_a_host_late_to_its_first_collective_still_joins(tmp_path):
  address = f'127.0.0.1:{free_port()}'
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'PYTHONPATH': str(ROOT)}
  consoles = [tmp_path / f'host_{i}.txt' for i in range(2)]
  processes = []
  for i, console in enumerate(consoles):
    with open(console, 'w') as out:
      processes.append(subprocess.Popen([sys.executable, '-c', HOST, str(i), address], env=env,
                                        stdout=out, stderr=subprocess.STDOUT))
  wait_all(processes, timeout=2 * LATE_S + 120)  # without the connections at start: a hang
  outputs = [c.read_text() for c in consoles]
  assert all(p.returncode == 0 for p in processes), [o[-2000:] for o in outputs]
  assert all('in step' in o for o in outputs), [o[-2000:] for o in outputs]
