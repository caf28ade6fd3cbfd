"""Huge-page malloc for XLA on CPU: the launcher re-executes itself with glibc's tunable set.

XLA's CPU runtime takes fresh buffers from malloc every step, and glibc serves buffers over
32 MiB with new mmaps, so a training step of the 16 kHz reference model touches ~540,000 new
4 KiB pages (a page fault each). With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, glibc asks for
transparent huge pages on those mappings: 5,700-7,200 faults per step, and the step measured
5.75-5.86 s instead of 6.21-6.66 s on 2 cores (docs/performance.md). Tunables are read only at
process start, hence the re-execution; it keeps the process id, arguments and the rest of the
environment. Elsewhere (macOS, musl, old glibc without the tunable) nothing changes.
"""
import os
import platform
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
_KEY = TUNABLE.split('=')[0] + '='  # any value the user set counts as set


def environment(environ, libc: str | None = None) -> dict | None:
  """The environment to re-execute with, or None when there is nothing to change."""
  libc = platform.libc_ver()[0] if libc is None else libc
  if libc != 'glibc':
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if _KEY in tunables:  # set already, by us or by the user: respect it
    return None
  return dict(environ, GLIBC_TUNABLES=':'.join(filter(None, [tunables, TUNABLE])))


def reexec_if_needed() -> None:
  """Replaces this process by the same command with the tunable set; returns when it is set."""
  env = environment(os.environ)
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    # orig_argv is the command as typed (`python run_experiment.py ...`, `python -m ...`).
    os.execve(sys.executable, sys.orig_argv, env)


def describe() -> str:
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if _KEY in tunables:
    return f'malloc: GLIBC_TUNABLES={tunables}'
  return 'malloc: default (no glibc huge-page tunable)'
