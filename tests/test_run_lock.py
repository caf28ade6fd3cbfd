"""One training process per run directory: the lock's refusal, release and stale takeover."""
import json
import os
import socket
import subprocess
import sys

import pytest

from codec import run_lock


def _lock_of(pid: int, path) -> None:
  path.write_text(json.dumps({'host': socket.gethostname(), 'pid': pid, 'since': 'earlier'}))


def test_lock_holds_host_and_pid_and_is_released(tmp_path):
  with run_lock.hold(str(tmp_path)) as path:
    owner = json.loads(path.read_text())
    assert owner['host'] == socket.gethostname() and owner['pid'] == os.getpid()
  assert not path.exists()


def test_live_owner_is_refused_by_name(tmp_path):
  owner = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    _lock_of(owner.pid, tmp_path / run_lock.LOCK_NAME)
    with pytest.raises(run_lock.RunLocked, match=f'process {owner.pid} on this host'):
      run_lock.acquire(str(tmp_path))
    assert json.loads((tmp_path / run_lock.LOCK_NAME).read_text())['pid'] == owner.pid
  finally:
    owner.kill()
    owner.wait()


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()  # reaped: its pid names no process now
  _lock_of(dead.pid, tmp_path / run_lock.LOCK_NAME)
  path = run_lock.acquire(str(tmp_path))
  assert json.loads(path.read_text())['pid'] == os.getpid()
  run_lock.release(path)


def test_lock_of_another_host_is_refused_saying_how_to_remove_it(tmp_path):
  path = tmp_path / run_lock.LOCK_NAME
  path.write_text(json.dumps({'host': 'elsewhere', 'pid': 1, 'since': 'earlier'}))
  with pytest.raises(run_lock.RunLocked, match='host elsewhere.*delete'):
    run_lock.acquire(str(tmp_path))


def test_half_written_lock_is_taken_over(tmp_path):
  (tmp_path / run_lock.LOCK_NAME).write_text('{"host": "')  # killed while writing it
  path = run_lock.acquire(str(tmp_path))
  assert json.loads(path.read_text())['pid'] == os.getpid()
