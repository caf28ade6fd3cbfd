"""The launcher's huge-page malloc: when it re-executes, with what, and that a run gets it."""
import os
import platform
import subprocess
import sys

import pytest

from codec import hugepages
from conftest import ROOT


def test_sets_the_tunable_on_glibc_and_keeps_other_variables():
  env = hugepages.environment({'PATH': '/bin', 'XLA_FLAGS': '--x'}, libc='glibc')
  assert env == {'PATH': '/bin', 'XLA_FLAGS': '--x', 'GLIBC_TUNABLES': hugepages.TUNABLE}


def test_appends_to_tunables_the_user_set():
  env = hugepages.environment({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, libc='glibc')
  assert env['GLIBC_TUNABLES'] == f'glibc.malloc.arena_max=2:{hugepages.TUNABLE}'


@pytest.mark.parametrize('environ, libc', [
    ({'GLIBC_TUNABLES': hugepages.TUNABLE}, 'glibc'),  # already re-executed: no loop
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, 'glibc'),  # the user turned it off
    ({}, ''),  # macOS, musl: not glibc
])
def test_leaves_the_process_alone(environ, libc):
  assert hugepages.environment(environ, libc=libc) is None


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc only')
def test_reexec_keeps_the_command_and_sets_the_tunable(tmp_path):
  script = tmp_path / 'probe.py'
  script.write_text('import os, sys\n'
                    'from codec import hugepages\n'
                    'print("start", os.getpid(), flush=True)\n'
                    'hugepages.reexec_if_needed()\n'
                    'print("after", os.getpid(), sys.argv[1:], os.environ["GLIBC_TUNABLES"])\n')
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  env['PYTHONPATH'] = str(ROOT)
  out = subprocess.run([sys.executable, str(script), 'a', '--b=1'], env=env, capture_output=True,
                       text=True, check=True).stdout.split('\n')
  starts = [l for l in out if l.startswith('start')]
  assert len(starts) == 2 and starts[0] == starts[1]  # ran twice, as one process
  assert [l for l in out if l.startswith('after')] == [
      f"after {starts[0].split()[1]} ['a', '--b=1'] {hugepages.TUNABLE}"]
