"""One script for a GPU (or TPU) machine: install, test, time training and inference, one table.

  python bench/accelerator.py [--extra gpu|tpu] [--skip_install] [--budget_s 450] [--dry_run]

1. `pip install -e '.[gpu]'` (the CUDA build of jax; a failure is reported and the run goes on
   with whatever jax is installed);
2. the model and compute tests on the device (JAX_PLATFORMS unset, so jax takes the accelerator);
3. `bench/train_step.py` for the 16 kHz and 44.1 kHz configs, float32 and bfloat16, batch 16, 32
   and 72 of 0.38 s excerpts (DAC's), one process per row: step time, audio-seconds per second,
   peak device memory and the fraction of the device's bfloat16 peak (datasheet FLOP/s);
4. `bench/inference.py` (encode + decode of 1 s and 10 s with the 16 kHz model).
Rows that would start past --budget_s are skipped and listed (the whole run is meant to fit in
8 minutes of device time). Prints one table, then one JSON line.

--dry_run runs the same steps on this machine's CPU with tiny shapes (the tiny 16 kHz config,
batch 4, float32, 1 s of inference; the install is printed, not run): a test runs it.
"""
import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ('experiments/dac_16khz.py', 'experiments/dac_44khz.py')
DTYPES = ('float32', 'bfloat16')
BATCHES = (16, 32, 72)
EXCERPT_SECONDS = 0.38
TESTS = ('tests/test_model.py', 'tests/test_compute.py')


def _train_step_module():
  spec = importlib.util.spec_from_file_location('train_step', ROOT / 'bench' / 'train_step.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def plan(dry_run: bool) -> dict:
  if dry_run:
    return {'configs': ('experiments/dac_16khz.py:tiny',), 'dtypes': ('float32',), 'batches': (4,),
            'seconds': 0.1, 'tests': ['tests/test_compute.py', '-k', 'launch_backend'],
            'inference': ['--config', 'experiments/dac_16khz.py:tiny', '--seconds', '1',
                          '--repeats', '1']}
  return {'configs': CONFIGS, 'dtypes': DTYPES, 'batches': BATCHES, 'seconds': EXCERPT_SECONDS,
          'tests': list(TESTS), 'inference': ['--seconds', '1,10', '--repeats', '2']}


def run(cmd, env=None, timeout=None) -> subprocess.CompletedProcess:
  print('$ ' + ' '.join(cmd), flush=True)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def last_json(stdout: str) -> dict | None:
  lines = [l for l in stdout.splitlines() if l.startswith('{')]
  return json.loads(lines[-1]) if lines else None


def install(extra: str, dry_run: bool) -> str:
  cmd = [sys.executable, '-m', 'pip', 'install', '-q', '-e', f'.[{extra}]']
  if dry_run:
    print('(dry run) would run: ' + ' '.join(cmd), flush=True)
    return 'skipped (dry run)'
  result = run(cmd)
  return 'ok' if result.returncode == 0 else f'failed: {result.stderr.strip()[-300:]}'


def device_env(dry_run: bool) -> dict:
  """The tests' conftest defaults JAX_PLATFORMS to cpu: on the accelerator, name it instead."""
  env = dict(os.environ)
  env.pop('JAX_PLATFORMS', None)
  if dry_run:
    env['JAX_PLATFORMS'] = 'cpu'
  return env


def tests(args_tests, env) -> str:
  result = run([sys.executable, '-m', 'pytest', '-q', *args_tests], env=env)
  tail = (result.stdout.strip().splitlines() or ['(no output)'])[-1]
  return ('passed: ' if result.returncode == 0 else 'FAILED: ') + tail


def train_rows(p: dict, deadline: float, env, peaks: dict) -> tuple[list, list]:
  rows, skipped = [], []
  for config in p['configs']:
    for dtype in p['dtypes']:
      for batch in p['batches']:
        name = f'{config} {dtype} batch {batch}'
        if time.time() > deadline:
          skipped.append(name)
          continue
        result = run([sys.executable, 'bench/train_step.py', '--config', config, '--dtype', dtype,
                      '--batch_size', str(batch), '--seconds', str(p['seconds']), '--steps', '5'],
                     env=env)
        record = last_json(result.stdout)
        if result.returncode or record is None:
          rows.append({'name': name, 'error': (result.stderr.strip() or '?')[-300:]})
          continue
        kind = record['device'].split(':', 1)[1]
        bf16_peak = peaks.get(kind, (None, None))[1]
        gflops = record['gflops_per_s']
        record['frac_of_bf16_peak'] = gflops * 1e9 / bf16_peak if gflops and bf16_peak else None
        rows.append({'name': name, **record})
  return rows, skipped


def _fmt(x, spec):
  width = int(''.join(c for c in spec.split('.')[0] if c.isdigit()) or 0)
  return 'n/a'.rjust(width) if x is None else format(x, spec)


def table(rows: list) -> str:
  lines = [f'{"config":34s} {"dtype":9s} {"batch":>5s} {"step s":>8s} {"audio-s/s":>10s} '
           f'{"peak dev MiB":>12s} {"of bf16 peak":>12s} {"compile s":>9s}']
  for r in rows:
    if 'error' in r:
      lines.append(f'{r["name"]}: ERROR {r["error"]}')
      continue
    lines.append(f'{r["config"]:34s} {r["dtype"]:9s} {r["batch_size"]:5d} '
                 f'{r["median_step_s"]:8.3f} {r["audio_s_per_s"]:10.2f} '
                 f'{_fmt(r["peak_device_mib"], "12.0f")} {_fmt(r["frac_of_bf16_peak"], "12.1%")} '
                 f'{r["compile_s"]:9.1f}')
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--extra', default='gpu', choices=('gpu', 'tpu'))
  parser.add_argument('--skip_install', action='store_true')
  parser.add_argument('--budget_s', type=float, default=450.0,
                      help='no training row starts after this many seconds')
  parser.add_argument('--dry_run', action='store_true', help='CPU, tiny shapes (a test)')
  args = parser.parse_args(argv)
  start = time.time()
  p = plan(args.dry_run)
  installed = 'skipped' if args.skip_install else install(args.extra, args.dry_run)
  env = device_env(args.dry_run)
  tested = tests(p['tests'], env)
  rows, skipped = train_rows(p, start + args.budget_s, env, _train_step_module().DEVICE_PEAKS)
  result = run([sys.executable, 'bench/inference.py', *p['inference']], env=env)
  inference = last_json(result.stdout) or {'error': result.stderr.strip()[-300:]}
  device = next((r['device'] for r in rows if 'device' in r), 'unknown')
  print(f'\naccelerator bench ({device}; {time.strftime("%Y-%m-%d %H:%M")}, '
        f'{time.time() - start:.0f} s in all)')
  print(f'install: {installed}')
  print(f'tests:   {tested}')
  print(table(rows))
  if skipped:
    print(f'skipped (past --budget_s): {", ".join(skipped)}')
  rtfs = {k: v for k, v in inference.items() if k.startswith('rtf_')}
  print(f'inference: {rtfs or inference}')
  print(json.dumps({'bench': 'accelerator', 'device': device, 'install': installed,
                    'tests': tested, 'train_step': rows, 'skipped': skipped,
                    'inference': inference}))
  ok = tested.startswith('passed') and all('error' not in r for r in rows) and 'error' not in inference
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
