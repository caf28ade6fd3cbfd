"""Ablations of a training recipe at equal wall-clock time, scored against Opus on the same files.

Each named variant of one experiment config is trained, one run after the other on this machine,
for the same budget (wall-clock minutes from the command's start, compile included, or a number
of steps), once per seed. A wall-clock run is stopped like a user's Ctrl+C (SIGINT: the launcher
saves a checkpoint and exits), so every run ends with a checkpoint of the step it reached. Its
latest checkpoint is then scored on the run's validation files with every codebook (the nominal
bitrate, 6 kbps for the 16 kHz model) through the same path as `python -m codec evaluate`, and
Opus at 6 and 8 kbps runs on the same files. Codebook entropy is the empirical entropy of each
level's codes over those files, summed over levels, as a bitrate (what an ideal entropy coder
would spend; the nominal rate assumes every code equally likely).

Variants are `NAME` or `NAME:field=value,field=value` with config fields as in
`--config.<field>=<value>`:

  python bench/recipe.py --config experiments/telugu_demo.py --minutes 10 --seeds 0,1 \
      --variant base --variant l1_20:loss.waveform_l1_weight=20 \
      --variant no_dropout:model.quantizer_dropout=0.0 --out runs/recipe

Prints one table (a row per run, then the mean and the half-range over seeds per variant, then
Opus) and writes OUT/recipe.csv. Runs already finished in OUT (a scores.json in their folder) are
not trained again, so an interrupted ablation continues where it stopped.
"""
import argparse
import csv
import dataclasses
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (column, heading): the measures the recipe is judged on, higher or lower as METRICS in evaluate.
SCORES = (('snr_db', 'SNR dB'), ('si_sdr_db', 'SI-SDR dB'), ('mel_distance', 'mel dist'),
          ('stoi', 'STOI'), ('pesq', 'PESQ'))
OPUS_KBPS = (6.0, 8.0)
_SAVE_TIMEOUT_S = 600  # after SIGINT the launcher writes one checkpoint, then exits


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  overrides: tuple[tuple[str, str], ...]

  def flags(self) -> list[str]:
    return [f'--config.{field}={value}' for field, value in self.overrides]


def parse_variant(text: str) -> Variant:
  """'NAME' or 'NAME:field=value,field=value' -> Variant."""
  name, _, rest = text.partition(':')
  if not name or not name.replace('_', '').replace('-', '').isalnum():
    raise ValueError(f'--variant {text!r}: the name must be letters, digits, _ or - '
                     '(e.g. --variant l1_20:loss.waveform_l1_weight=20)')
  overrides = []
  for item in filter(None, rest.split(',')):
    field, sep, value = item.partition('=')
    if not sep or not field:
      raise ValueError(f'--variant {text!r}: {item!r} is not field=value')
    overrides.append((field.strip(), value.strip()))
  return Variant(name, tuple(overrides))


def entropy_kbps(codes: list[np.ndarray], codebook_size: int, frame_rate: float) -> float:
  """Sum over levels of the empirical entropy of the codes, in kbps. codes: [int[Q, N]] per file."""
  stacked = np.concatenate(codes, axis=1)
  bits = 0.0
  for level in stacked:
    p = np.bincount(level, minlength=codebook_size) / level.size
    p = p[p > 0]
    bits -= float(np.sum(p * np.log2(p)))
  return bits * frame_rate / 1000


def spread(values: list[float]) -> tuple[float, float]:
  """(mean, half the range) of the finite values; NaN where there are none."""
  finite = [v for v in values if math.isfinite(v)]
  if not finite:
    return math.nan, math.nan
  return float(np.mean(finite)), (max(finite) - min(finite)) / 2


# -------------------------------------------------------------------------------------------------
# Training.


def latest_step(run_dir: pathlib.Path) -> int | None:
  steps = [int(p.name) for p in (run_dir / 'checkpoints').glob('*') if p.name.isdigit()]
  return max(steps) if steps else None


def train(config: str, variant: Variant, seed: int, run_dir: pathlib.Path, minutes: float,
          steps: int, extra_flags: list[str]) -> float:
  """Trains one run to its budget; returns the wall-clock seconds it took."""
  # Every run compiles from cold, as on a fresh machine: a run finding the compiled steps of an
  # earlier seed or variant in the persistent cache would gain about 2 minutes of wall clock.
  command = [sys.executable, 'run_experiment.py', f'--config={config}',
             f'--checkpoint_dir={run_dir}', f'--config.seed={seed}',
             '--config.compilation_cache_dir=', *variant.flags(), *extra_flags]
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  if steps:
    command.append(f'--config.max_steps={steps}')
  run_dir.mkdir(parents=True, exist_ok=True)
  start = time.time()
  with open(run_dir / 'recipe_stdout.txt', 'w') as log:
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
      process.wait(timeout=minutes * 60 if minutes else None)
    except subprocess.TimeoutExpired:
      process.send_signal(signal.SIGINT)  # the launcher saves this step, then exits
      process.wait(timeout=_SAVE_TIMEOUT_S)
  if process.returncode:
    raise RuntimeError(f'{variant.name} seed {seed} failed (exit {process.returncode}): see '
                       f'{run_dir / "recipe_stdout.txt"}')
  return time.time() - start


# -------------------------------------------------------------------------------------------------
# Scoring.


def score_run(run_dir: pathlib.Path, data_dir: str, max_files: int, opus_cache: dict) -> dict:
  """Scores of the run's latest checkpoint with every codebook, and Opus on the same files."""
  from codec import evaluate  # pylint: disable=g-import-not-at-top
  from codec import inference  # pylint: disable=g-import-not-at-top
  step = latest_step(run_dir)
  codec = inference.load(run_dir, step=step)
  files, _ = evaluate.select_files(data_dir or str(ROOT / 'data' / 'telugu_demo'), 'val', codec)
  files = files[:max_files] if max_files else files
  scorers = evaluate.load_scorers()
  rows, all_codes = [], []
  for path in files:
    reference = inference.read_audio(path, codec.sample_rate).audio
    codes, header = codec.encode_audio(reference)
    all_codes.append(codes)
    rows.append(evaluate.score(reference, codec.decode_audio(codes, header), codec.sample_rate,
                               scorers))
    for kbps in OPUS_KBPS:
      key = (str(path), codec.sample_rate, kbps)
      if key not in opus_cache and evaluate.opus_available():
        with tempfile.TemporaryDirectory() as workdir:
          estimate = evaluate.opus_roundtrip(reference, codec.sample_rate, kbps, workdir)
        opus_cache[key] = evaluate.score(reference, estimate, codec.sample_rate, scorers)
  scores = {column: spread([r[column] for r in rows])[0] for column, _ in SCORES}
  scores.update(step=step, files=[str(p) for p in files],
                kbps=codec.bitrate(codec.n_codebooks) / 1000,
                entropy_kbps=entropy_kbps(all_codes, codec.codebook_size, codec.frame_rate))
  return scores


def opus_rows(opus_cache: dict, files: list[str]) -> list[dict]:
  rows = []
  for kbps in OPUS_KBPS:
    found = [opus_cache[key] for key in opus_cache if key[0] in files and key[2] == kbps]
    if found:
      rows.append({'name': f'opus {kbps:g} kbps',
                   **{c: spread([f[c] for f in found])[0] for c, _ in SCORES}})
  return rows


# -------------------------------------------------------------------------------------------------
# The table.


def format_table(runs: list[dict], opus: list[dict]) -> str:
  """Rows per run, then per variant mean +- half-range over seeds, then Opus."""
  headings = ['run', 'steps', 's/step'] + [h for _, h in SCORES] + ['entropy kbps']
  body = []
  for r in runs:
    body.append([f'{r["variant"]} s{r["seed"]}', str(r['step']), f'{r["seconds_per_step"]:.2f}'] +
                [_num(r[c]) for c, _ in SCORES] + [_num(r['entropy_kbps'])])
  for name in dict.fromkeys(r['variant'] for r in runs):
    mine = [r for r in runs if r['variant'] == name]
    if len(mine) > 1:
      cells = [f'{name} mean', '', '']
      for column in [c for c, _ in SCORES] + ['entropy_kbps']:
        mean, half = spread([r[column] for r in mine])
        cells.append(f'{_num(mean)}+-{_num(half)}')
      body.append(cells)
  for o in opus:
    body.append([o['name'], '', ''] + [_num(o[c]) for c, _ in SCORES] + [''])
  widths = [max(len(row[i]) for row in body + [headings]) for i in range(len(headings))]
  line = lambda cells: '  '.join(c.rjust(w) for c, w in zip(cells, widths))
  return '\n'.join([line(headings), '-' * len(line(headings))] + [line(r) for r in body])


def _num(x: float) -> str:
  return '-' if not math.isfinite(x) else f'{x:.3f}'


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', required=True, help='experiments/<name>.py[:variant]')
  parser.add_argument('--variant', action='append', required=True, type=parse_variant,
                      help='NAME or NAME:field=value,... (repeat for each variant)')
  parser.add_argument('--seeds', default='0', help='comma-separated seeds, e.g. 0,1')
  budget = parser.add_mutually_exclusive_group(required=True)
  budget.add_argument('--minutes', type=float, help='wall-clock budget per run, compile included')
  budget.add_argument('--steps', type=int, help='steps per run')
  parser.add_argument('--data_dir', default='', help='corpus (default: the demo corpus)')
  parser.add_argument('--max_files', type=int, default=0,
                      help='score at most this many validation files (0: all)')
  parser.add_argument('--out', required=True, help='folder for the runs and recipe.csv')
  parser.add_argument('flags', nargs='*', help='more launcher flags for every run, after --')
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
  extra = args.flags + ([f'--data_dir={args.data_dir}'] if args.data_dir else [])
  out = pathlib.Path(args.out).resolve()
  runs, opus_cache = [], {}
  for variant in args.variant:
    for seed in seeds:
      run_dir = out / variant.name / f'seed{seed}'
      done = run_dir / 'scores.json'
      if done.is_file():
        record = json.loads(done.read_text())
      else:
        seconds = train(args.config, variant, seed, run_dir, args.minutes or 0, args.steps or 0,
                        extra)
        record = {'variant': variant.name, 'seed': seed, 'wall_seconds': seconds,
                  **score_run(run_dir, args.data_dir, args.max_files, opus_cache)}
        record['seconds_per_step'] = seconds / max(1, record['step'])
        done.write_text(json.dumps(record, indent=1))
      runs.append(record)
      print(f'{variant.name} seed {seed}: step {record["step"]}, '
            f'{ {c: round(record[c], 3) for c, _ in SCORES} }', flush=True)
  if not opus_cache and runs:  # every run was scored before: Opus once on their files
    score_run(out / runs[0]['variant'] / f'seed{runs[0]["seed"]}', args.data_dir, args.max_files,
              opus_cache)
  table = format_table(runs, opus_rows(opus_cache, runs[0]['files'] if runs else []))
  print(table)
  columns = ['variant', 'seed', 'step', 'wall_seconds', 'seconds_per_step', 'kbps',
             'entropy_kbps'] + [c for c, _ in SCORES]
  with open(out / 'recipe.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows([[r[c] for c in columns] for r in runs])


if __name__ == '__main__':
  main()
