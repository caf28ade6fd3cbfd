"""One training process per run directory: RUN_DIR/run.lock holds the host and pid of its owner.

A second process is refused with a message naming the first. A lock left by a dead process (same
host, pid gone, e.g. after SIGKILL or a crash) is taken over. A lock of another host cannot be
checked from here: it is refused, and the message says how to remove it.
"""
import contextlib
import json
import logging
import os
import pathlib
import socket
import time

log = logging.getLogger('codec.run_lock')

LOCK_NAME = 'run.lock'


class RunLocked(RuntimeError):
  """Another live process trains in this run directory."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # a process of another user
    return True
  return True


def _read(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}  # half-written by a process killed while creating it: nobody owns it


def _create(path: pathlib.Path) -> bool:
  """Writes this process's lock if there is none (atomic O_EXCL); False if one exists."""
  owner = {'host': socket.gethostname(), 'pid': os.getpid(), 'since': time.strftime('%F %T')}
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, 'w') as f:
    f.write(json.dumps(owner) + '\n')
  return True


def acquire(run_dir: str) -> pathlib.Path:
  """Takes RUN_DIR/run.lock for this process; raises RunLocked if a live process holds it."""
  path = pathlib.Path(run_dir) / LOCK_NAME
  path.parent.mkdir(parents=True, exist_ok=True)
  for _ in range(3):  # a takeover raced with another process: look again
    if _create(path):
      return path
    owner = _read(path)
    host, pid = owner.get('host'), owner.get('pid')
    if host and host != socket.gethostname():
      raise RunLocked(
          f'{path}: a run on host {host} (pid {pid}, since {owner.get("since")}) trains in '
          f'{run_dir}. Wait for it, use another --checkpoint_dir, or delete {path} if that '
          'process is gone.')
    if isinstance(pid, int) and _alive(pid):
      raise RunLocked(
          f'{path}: process {pid} on this host (since {owner.get("since")}) trains in {run_dir}. '
          f'Wait for it or stop it (kill {pid}), or use another --checkpoint_dir.')
    # Stale: rename it away first, so that of two processes taking over, one wins.
    stale = path.with_name(f'{LOCK_NAME}.stale.{os.getpid()}')
    with contextlib.suppress(FileNotFoundError):
      os.rename(path, stale)
      stale.unlink()
      log.warning(f'{path}: took over the lock of process {pid} on {host}, which has ended.')
  raise RunLocked(f'{path}: could not take the lock (other processes keep taking it)')


def release(path: pathlib.Path) -> None:
  """Removes the lock if it is still this process's."""
  if _read(path).get('pid') == os.getpid() and _read(path).get('host') == socket.gethostname():
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def hold(run_dir: str, enabled: bool = True):
  """The lock for the block's duration (enabled=False: other hosts of a multi-host run)."""
  path = acquire(run_dir) if enabled else None
  try:
    yield path
  finally:
    if path is not None:
      release(path)
