"""bench/accelerator.py's dry run: the GPU script's steps on the CPU with tiny shapes."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_accelerator_dry_run_prints_the_table():
  result = subprocess.run([sys.executable, 'bench/accelerator.py', '--dry_run'], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  record = json.loads(result.stdout.strip().splitlines()[-1])
  assert record['tests'].startswith('passed')
  (row,) = record['train_step']
  assert row['config'] == 'experiments/dac_16khz.py:tiny' and row['batch_size'] == 4
  assert row['median_step_s'] > 0 and row['audio_s_per_s'] > 0 and row['nonfinite'] == 0
  assert record['inference']['rtf_1s'] > 0
  assert 'audio-s/s' in result.stdout and 'peak dev MiB' in result.stdout
