"""Test set-up: import from the repo root, 4 simulated CPU devices, a shared compilation cache.

The 4 devices make every training test exercise the sharded (data-parallel) path. The persistent
compilation cache lets subprocess runs of the launcher reuse what the suite already compiled.
"""
import os
import pathlib
import socket
import subprocess
import sys
import time

import logging

import numpy as np
import pytest
import soundfile as sf

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(ROOT / '.pytest_cache' / 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '2')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def wait_all(processes, timeout: float = 300.0) -> None:
  """Waits for every process; kills those still running after `timeout` s (they fail the test)."""
  deadline = time.time() + timeout
  for p in processes:
    try:
      p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def write_corpus(root: pathlib.Path, n_files: int = 6, seconds: float = 1.0,
                 sample_rate: int = 16000, seed: int = 0) -> pathlib.Path:
  """A few FLAC files of voiced-like noise: enough for tiny training runs."""
  rng = np.random.default_rng(seed)
  root.mkdir(parents=True, exist_ok=True)
  t = np.arange(int(seconds * sample_rate)) / sample_rate
  for i in range(n_files):
    f0 = rng.uniform(100, 250)
    audio = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6)) * 0.2
    audio = audio * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 4) * t)) + rng.normal(
        0, 0.01, t.shape)
    sf.write(root / f'clip_{i:02d}.flac', audio.astype(np.float32), sample_rate)
  return root


@pytest.fixture(scope='session')
def tiny_corpus(tmp_path_factory) -> pathlib.Path:
  return write_corpus(tmp_path_factory.mktemp('corpus'))


def tiny_config(data_dir='', **overrides):
  """The tiny 16 kHz config on `data_dir`, with dotted-path overrides."""
  from experiments import dac_16khz  # pylint: disable=g-import-not-at-top  (after the env set-up)
  config = dac_16khz.get_config('tiny')
  config.data.data_dir = str(data_dir)
  config.data.val_fraction = 0.2
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def read_events(run_dir) -> list[tuple[int, str, object]]:
  """(step, tag, value) of every summary in run_dir's TensorBoard event files (not below it).

  value: the float of a scalar, else the summary value's proto. Event files are TFRecords: a
  uint64 length, its CRC, the serialised Event, its CRC.
  """
  import struct  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = []
  for path in sorted(pathlib.Path(run_dir).glob('events.out.tfevents.*')):
    data = path.read_bytes()
    offset = 0
    while offset + 12 <= len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalar = value.simple_value if value.WhichOneof('value') == 'simple_value' else value
        out.append((event.step, value.tag, scalar))
  return out


# The fields of a metrics.jsonl record that measure wall-clock time: the only ones in which a
# resumed run's records may differ from an uninterrupted run's.
WALL_CLOCK_FIELDS = ('val_seconds',)


def records_of(run_dir) -> list[dict]:
  """run_dir's metrics.jsonl, without the wall-clock fields."""
  import json  # pylint: disable=g-import-not-at-top
  lines = (pathlib.Path(run_dir) / 'metrics.jsonl').read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK_FIELDS}
          for line in lines]


# The loss weights and learning rate README's command line sets. Every tiny training run of the
# suite, in-process or launched, uses them: the same step then compiles once and later runs read
# it from the compilation cache.
README_FLAGS = {'learning_rate': 1e-4, 'adv_weight': 1.0, 'feat_weight': 10.0,
                'recon_weight': 0.1, 'vq_weight': 1.0}


@pytest.fixture(scope='session')
def two_epoch_run(tiny_corpus, tmp_path_factory):
  """A full loop over 2 epochs of the tiny corpus (12 steps each, evaluated every 6 steps), with
  compilations counted."""
  import jax  # pylint: disable=g-import-not-at-top
  from codec import launch  # pylint: disable=g-import-not-at-top
  from codec import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('run')
  config = launch.apply_user_flags(
      tiny_config(tiny_corpus, num_epochs=2, checkpoint_every_steps=3, keep_checkpoints=10,
                  eval_every_steps=6),
      README_FLAGS)  # every checkpoint kept: other runs compare with its early steps
  records = []

  class Counter(logging.Handler):

    def emit(self, record):
      records.append(record.getMessage())

  handler = Counter()
  loggers = [logging.getLogger(n) for n in ('jax._src.interpreters.pxla', 'jax._src.dispatch')]
  for logger in loggers:
    logger.addHandler(handler)
  jax.config.update('jax_log_compiles', True)
  try:
    history = train.train_and_evaluate(config, str(workdir))
  finally:
    jax.config.update('jax_log_compiles', False)
    for logger in loggers:
      logger.removeHandler(handler)
  return config, workdir, history, records


