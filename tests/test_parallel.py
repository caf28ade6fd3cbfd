"""Joining a multi-host run: two processes on localhost, 2 simulated CPU devices each."""
import os
import socket
import subprocess
import sys

from conftest import ROOT

# Host 1 reaches its first collective after host 0 has waited longer than gloo's 30 s for a peer.
LATE_S = 35

HOST = f'''
import sys, time
import jax
import ml_collections
from jax.experimental import multihost_utils
from codec import parallel
process_id, address = int(sys.argv[1]), sys.argv[2]
parallel.initialize_distributed(ml_collections.ConfigDict(dict(
    num_processes=2, process_id=process_id, coordinator_address=address)))
assert jax.device_count() == 4  # as the launcher checks the batch: every host's backend is up
if process_id == 1:  # e.g. indexing a larger share of the corpus, or a slower disk
  time.sleep({LATE_S})
multihost_utils.sync_global_devices('first_after_start')
print('in step', flush=True)
'''


def test_a_host_late_to_its_first_collective_still_joins(tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    address = f'127.0.0.1:{s.getsockname()[1]}'
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'PYTHONPATH': str(ROOT)}
  consoles = [tmp_path / f'host_{i}.txt' for i in range(2)]
  processes = []
  for i, console in enumerate(consoles):
    with open(console, 'w') as out:
      processes.append(subprocess.Popen([sys.executable, '-c', HOST, str(i), address], env=env,
                                        stdout=out, stderr=subprocess.STDOUT))
  for p in processes:
    try:
      p.wait(timeout=LATE_S + 120)
    except subprocess.TimeoutExpired:  # without the connection at start, host 1 hangs
      p.kill()
      p.wait()
  outputs = [c.read_text() for c in consoles]
  assert all(p.returncode == 0 for p in processes), [o[-2000:] for o in outputs]
  assert all('in step' in o for o in outputs), [o[-2000:] for o in outputs]
