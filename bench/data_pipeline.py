"""Throughput of the training input pipeline (codec/data.py) with 0, 1 and 2 worker processes.

Reads the demo corpus (data/telugu_demo) when it is there, else a temporary synthetic corpus of
FLAC files at the model rate (--corpus_rate: another rate, to time decode + resample + cache);
--data_dir picks another folder, --synthetic forces the temporary one. Prints a table of
excerpts/s and audio-seconds/s delivered, checks them against 20x what one reference training
step consumes (shared/REFERENCE.md: 0.30 audio-s/s on this machine), and ends with one JSON line.

  python bench/data_pipeline.py [--data_dir DIR | --synthetic [--corpus_rate 44100]] [--batches 100]
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from codec import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from codec import data  # pylint: disable=g-import-not-at-top,wrong-import-position

REFERENCE_AUDIO_S_PER_S = 0.30  # one PyTorch DAC training step on this machine's 2 CPU cores
HEADROOM = 20.0  # the loader must never be what a training step waits for


def make_synthetic_corpus(root: pathlib.Path, n_files: int = 40, rate: int = 16000) -> None:
  """Speech-like stand-ins: noise through a moving resonance, 2-8 s each, in 4 voice folders."""
  rng = np.random.default_rng(0)
  for i in range(n_files):
    n = int(rate * rng.uniform(2.0, 8.0))
    t = np.arange(n) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
    carrier = np.sin(2 * np.pi * (150 + 50 * np.sin(2 * np.pi * 0.7 * t)) * t)
    audio = 0.2 * envelope * (carrier + 0.3 * rng.standard_normal(n))
    folder = root / f'voice{i % 4}'
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / f'utt{i:03d}.flac', audio.astype(np.float32), rate)


def measure(c, *, workers: int, batches: int, batch_size: int, sample_rate: int,
            cache_dir: str) -> dict[str, float]:
  """Start-up (index + first batch) and steady-state throughput over `batches` batches."""
  c.num_workers = workers
  start = time.perf_counter()
  ds = data.make_datasets(c, sample_rate=sample_rate, global_batch_size=batch_size, seed=0,
                          cache_dir=cache_dir)
  it = ds.train_iterator()
  batch = next(it)
  startup = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  elapsed = time.perf_counter() - start
  it.close()
  excerpts_per_s = batches * batch.shape[0] / elapsed
  return {'workers': workers, 'startup_s': round(startup, 2),
          'excerpts_per_s': round(excerpts_per_s, 1),
          'audio_s_per_s': round(excerpts_per_s * batch.shape[1] / sample_rate, 2),
          'steps_per_epoch': ds.steps_per_epoch}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', default='', help='audio folder (default: the demo corpus)')
  parser.add_argument('--synthetic', action='store_true', help='use a temporary synthetic corpus')
  parser.add_argument('--batches', type=int, default=100, help='batches timed per configuration')
  parser.add_argument('--workers', default='0,1,2', help='comma-separated worker-process counts')
  parser.add_argument('--batch_size', type=int, default=12)
  parser.add_argument('--excerpt_seconds', type=float, default=0.38)
  parser.add_argument('--sample_rate', type=int, default=16000)
  parser.add_argument('--corpus_rate', type=int, default=0,
                      help='sample rate of the synthetic corpus (default: --sample_rate)')
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    if args.data_dir:
      root, corpus = pathlib.Path(args.data_dir), args.data_dir
    elif not args.synthetic and data.DEMO_CORPUS_DIR.is_dir() and data.find_audio_files(
        data.DEMO_CORPUS_DIR):
      root, corpus = data.DEMO_CORPUS_DIR, 'data/telugu_demo'
    else:
      rate = args.corpus_rate or args.sample_rate
      root, corpus = pathlib.Path(tmp, 'corpus'), f'synthetic (40 files, {rate} Hz FLAC)'
      make_synthetic_corpus(root, rate=rate)
    c = config_lib.base_config().data
    c.data_dir = str(root)
    c.excerpt_seconds = args.excerpt_seconds
    rows = [measure(c, workers=int(w), batches=args.batches, batch_size=args.batch_size,
                    sample_rate=args.sample_rate, cache_dir=os.path.join(tmp, 'run'))
            for w in args.workers.split(',')]

  target = HEADROOM * REFERENCE_AUDIO_S_PER_S
  print(f'corpus: {corpus}; global batch {args.batch_size} x {args.excerpt_seconds} s at '
        f'{args.sample_rate} Hz; {args.batches} batches timed; {os.cpu_count()} CPU cores')
  print(f'| workers | start-up s | excerpts/s | audio-s/s | >= {target:g} audio-s/s |')
  print('|---|---|---|---|---|')
  for row in rows:
    met = 'yes' if row['audio_s_per_s'] >= target else 'NO'
    print(f"| {row['workers']} | {row['startup_s']} | {row['excerpts_per_s']} | "
          f"{row['audio_s_per_s']} | {met} |")
  best = max(row['audio_s_per_s'] for row in rows)
  print(f'target: {HEADROOM:g} x {REFERENCE_AUDIO_S_PER_S} audio-s/s (one reference training step) '
        f'= {target:g} audio-s/s; best {best} -> {"met" if best >= target else "NOT met"}')
  print(json.dumps({'bench': 'data_pipeline', 'corpus': corpus, 'batch_size': args.batch_size,
                    'excerpt_seconds': args.excerpt_seconds, 'sample_rate': args.sample_rate,
                    'results': rows, 'target_audio_s_per_s': target,
                    'met': all(row['audio_s_per_s'] >= target for row in rows)}))


if __name__ == '__main__':
  main()
