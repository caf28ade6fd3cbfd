"""Throughput and start-up of the training input pipeline (codec/data.py) on kinds of corpora.

Each kind is a synthetic corpus written once under --corpus_root (kept for the next run):

  short   40 clips of 2-8 s at the model rate (FLAC), like the demo corpus
  wav     4 recordings of 10 min at 44.1 kHz stereo (PCM-16 WAV): read by window, resampled
  ogg     the same as OGG/Vorbis
  mp3     the same as MP3 (libsndfile 1.1+)
  many    100,000 files of 0.5 s at the model rate (WAV): the start-up of a large corpus

--data_dir times one folder of your own instead. Per kind and worker count it prints the cold
start-up (header index built from every file, then the first batch), the warm start-up (index
read from its cache), audio-seconds per second delivered in steady state (the median of
--repeats timings, the worker counts interleaved), and that rate per worker process (0 workers:
the training process itself), against the targets: at least TARGET_PER_WORKER audio-s/s per
worker process, and no slower with more workers. Ends with one JSON line.

  python bench/data_pipeline.py [--kinds short,wav,ogg,mp3,many | --data_dir DIR] [--workers 0,1,2]
      [--batches 100] [--seconds 10] [--repeats 3]
"""
import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from codec import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from codec import data  # pylint: disable=g-import-not-at-top,wrong-import-position

# One GPU training the 16 kHz model at batch 72 consumes several hundred audio-s/s and GPU hosts
# have 8+ cores: 100 per worker process keeps such a host fed with a few workers.
TARGET_PER_WORKER = 100.0
LONG_RATE, LONG_MINUTES, LONG_FILES = 44100, 10.0, 4
MANY_FILES, MANY_SECONDS = 100_000, 0.5
KINDS = ('short', 'wav', 'ogg', 'mp3', 'many')


def speech_like(seconds: float, rate: int, rng: np.random.Generator, channels: int = 1):
  """Noise through a moving resonance under a syllable-rate envelope: f32[T] or f32[T, C]."""
  n = int(rate * seconds)
  t = np.arange(n) / rate
  envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
  carrier = np.sin(2 * np.pi * (150 + 50 * np.sin(2 * np.pi * 0.7 * t)) * t)
  mono = (0.2 * envelope * (carrier + 0.3 * rng.standard_normal(n))).astype(np.float32)
  if channels == 1:
    return mono
  return np.stack([mono * (1.0 - 0.2 * c) for c in range(channels)], axis=1)


def _write_long(root: pathlib.Path, ext: str, **kwargs) -> None:
  rng = np.random.default_rng(1)
  for i in range(LONG_FILES):
    path = root / f'session{i}.{ext}'
    # Written a second at a time: a 10-minute stereo file is 200 MB as float32, and libsndfile
    # 1.2.2's Vorbis encoder crashes the process on blocks of a minute.
    with sf.SoundFile(path, 'w', samplerate=LONG_RATE, channels=2, **kwargs) as f:
      for _ in range(int(LONG_MINUTES)):
        minute = speech_like(60.0, LONG_RATE, rng, channels=2)
        for block in np.split(minute, 60):
          f.write(block)


def make_corpus(kind: str, root: pathlib.Path, sample_rate: int) -> str:
  """Writes the kind's corpus into root (unless a finished one is there); returns its label."""
  label = {
      'short': f'40 clips of 2-8 s, {sample_rate} Hz FLAC',
      'wav': f'{LONG_FILES} x {LONG_MINUTES:g} min, 44.1 kHz stereo WAV',
      'ogg': f'{LONG_FILES} x {LONG_MINUTES:g} min, 44.1 kHz stereo OGG/Vorbis',
      'mp3': f'{LONG_FILES} x {LONG_MINUTES:g} min, 44.1 kHz stereo MP3',
      'many': f'{MANY_FILES:,} files of {MANY_SECONDS:g} s, {sample_rate} Hz WAV',
  }[kind]
  done = root / '.complete'
  if done.exists():
    return label
  shutil.rmtree(root, ignore_errors=True)
  root.mkdir(parents=True)
  rng = np.random.default_rng(0)
  if kind == 'short':
    for i in range(40):
      folder = root / f'voice{i % 4}'
      folder.mkdir(exist_ok=True)
      sf.write(folder / f'utt{i:03d}.flac', speech_like(rng.uniform(2, 8), sample_rate, rng),
               sample_rate)
  elif kind == 'wav':
    _write_long(root, 'wav', subtype='PCM_16')
  elif kind == 'ogg':
    _write_long(root, 'ogg', format='OGG', subtype='VORBIS')
  elif kind == 'mp3':
    _write_long(root, 'mp3', format='MP3', subtype='MPEG_LAYER_III')
  else:
    clip = speech_like(MANY_SECONDS, sample_rate, rng)
    for i in range(MANY_FILES):
      folder = root / f'speaker{i // 1000:03d}'
      if i % 1000 == 0:
        folder.mkdir()
      # Distinct files (a scaled copy): a header index must not be fooled by identical ones.
      sf.write(folder / f'{i:06d}.wav', clip * (0.5 + (i % 97) / 200), sample_rate,
               subtype='PCM_16')
  done.touch()
  return label


def _start(c, *, workers: int, batch_size: int, sample_rate: int, cache_dir: str):
  """(iterator, seconds from nothing to the first batch)."""
  c.num_workers = workers
  start = time.perf_counter()
  ds = data.make_datasets(c, sample_rate=sample_rate, global_batch_size=batch_size, seed=0,
                          cache_dir=cache_dir)
  it = ds.train_iterator()
  next(it)
  return it, time.perf_counter() - start


def measure(c, *, workers: int, batches: int, seconds: float, batch_size: int, sample_rate: int,
            cache_dir: str) -> dict[str, float]:
  """Warm start-up (the index cached in cache_dir) and steady-state throughput over at least
  `batches` batches and `seconds` seconds (100 batches of short clips pass in half a second,
  where one worker's timings then spread by 20%)."""
  it, startup = _start(c, workers=workers, batch_size=batch_size, sample_rate=sample_rate,
                       cache_dir=cache_dir)
  # Untimed until every worker has delivered twice (a hand-over is `it.chunk` batches): workers
  # start one process each (an import of jax and numpy), which is start-up, not throughput.
  for _ in range(2 * workers * it.chunk):
    next(it)
  start = time.perf_counter()
  n = 0
  while n < batches or time.perf_counter() - start < seconds:
    batch = next(it)
    n += 1
  elapsed = time.perf_counter() - start
  it.close()
  audio_s = n * batch.shape[0] * batch.shape[1] / sample_rate / elapsed
  return {'workers': workers, 'warm_startup_s': round(startup, 2),
          'audio_s_per_s': round(audio_s, 1),
          'per_worker': round(audio_s / max(workers, 1), 1)}


def median_row(runs: list[dict[str, float]]) -> dict:
  """The run of median throughput among repeats of one worker count, with every rate kept."""
  ranked = sorted(runs, key=lambda row: row['audio_s_per_s'])
  return {**ranked[(len(ranked) - 1) // 2],
          'audio_s_per_s_runs': [row['audio_s_per_s'] for row in runs]}


def bench_corpus(label: str, root: pathlib.Path, args, work: str) -> dict:
  c = config_lib.base_config().data
  c.data_dir = str(root)
  c.excerpt_seconds = args.excerpt_seconds
  cache_dir = tempfile.mkdtemp(dir=work)  # a fresh run folder: the first start-up is cold
  it, cold = _start(c, workers=0, batch_size=args.batch_size, sample_rate=args.sample_rate,
                    cache_dir=cache_dir)
  it.close()
  workers = [int(w) for w in args.workers.split(',')]
  # Each worker count is timed `repeats` times, the counts interleaved, and its median kept: one
  # timing of a configuration moves by 10-20% between runs on a shared 2-core machine, as much as
  # a worker more changes it, and a drift of the machine's speed then falls on every count alike.
  runs = {w: [] for w in workers}
  for _ in range(args.repeats):
    for w in workers:
      runs[w].append(measure(c, workers=w, batches=args.batches, seconds=args.seconds,
                             batch_size=args.batch_size, sample_rate=args.sample_rate,
                             cache_dir=cache_dir))
  rows = [median_row(runs[w]) for w in workers]
  rates = [row['audio_s_per_s'] for row in rows]
  return {'corpus': label, 'cold_startup_s': round(cold, 2), 'rows': rows,
          'per_worker_met': all(row['per_worker'] >= TARGET_PER_WORKER for row in rows),
          # 10% slack: two timings of one configuration differ by that much on a busy machine.
          'scales': all(b >= 0.9 * a for a, b in zip(rates, rates[1:]))}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--kinds', default=','.join(KINDS), help=f'comma-separated, of {KINDS}')
  parser.add_argument('--data_dir', default='', help='time this folder instead of the kinds')
  parser.add_argument('--corpus_root', default=os.path.join(tempfile.gettempdir(),
                                                            'codec_bench_corpora'),
                      help='where the synthetic corpora are written once and kept')
  parser.add_argument('--batches', type=int, default=100,
                      help='batches timed per configuration, at least')
  parser.add_argument('--seconds', type=float, default=10.0,
                      help='seconds timed per configuration, at least')
  parser.add_argument('--workers', default='0,1,2', help='comma-separated worker-process counts')
  parser.add_argument('--repeats', type=int, default=3,
                      help='timings per worker count, interleaved; the median is reported')
  parser.add_argument('--batch_size', type=int, default=12)
  parser.add_argument('--excerpt_seconds', type=float, default=0.38)
  parser.add_argument('--sample_rate', type=int, default=16000)
  args = parser.parse_args()
  kinds = [k for k in args.kinds.split(',') if k]
  if args.repeats < 1:
    parser.error(f'--repeats: at least 1 timing per worker count, not {args.repeats}')
  unknown = sorted(set(kinds) - set(KINDS))
  if unknown:
    parser.error(f'--kinds: unknown {unknown}; choose from {",".join(KINDS)}')

  results = []
  with tempfile.TemporaryDirectory() as work:
    if args.data_dir:
      results.append(bench_corpus(args.data_dir, pathlib.Path(args.data_dir), args, work))
    for kind in [] if args.data_dir else kinds:
      if kind == 'mp3' and 'MP3' not in sf.available_formats():
        print(f'mp3: skipped, libsndfile {sf.__libsndfile_version__} has no MP3')
        continue
      root = pathlib.Path(args.corpus_root, kind)
      start = time.perf_counter()
      label = make_corpus(kind, root, args.sample_rate)
      print(f'{kind}: {label} ready in {time.perf_counter() - start:.0f} s ({root})', flush=True)
      results.append({'kind': kind, **bench_corpus(label, root, args, work)})

  print(f'global batch {args.batch_size} x {args.excerpt_seconds} s at {args.sample_rate} Hz; '
        f'at least {args.batches} batches and {args.seconds:g} s timed, median of '
        f'{args.repeats} interleaved; '
        f'{os.cpu_count()} CPU cores; target '
        f'{TARGET_PER_WORKER:g} audio-s/s per worker process, no slower with more workers')
  print('| corpus | cold start-up s | workers | warm start-up s | audio-s/s (runs) | per worker | '
        'met |')
  print('|---|---|---|---|---|---|---|')
  for result in results:
    for i, row in enumerate(result['rows']):
      met = 'yes' if row['per_worker'] >= TARGET_PER_WORKER else 'NO'
      print(f"| {result['corpus'] if i == 0 else ''} | {result['cold_startup_s'] if i == 0 else ''}"
            f" | {row['workers']} | {row['warm_startup_s']} | {row['audio_s_per_s']} "
            f"({', '.join(f'{r:g}' for r in row['audio_s_per_s_runs'])}) | "
            f"{row['per_worker']} | {met} |")
    if not result['scales']:
      print(f"  {result['corpus']}: a worker more made it slower")
  print(json.dumps({'bench': 'data_pipeline', 'batch_size': args.batch_size,
                    'excerpt_seconds': args.excerpt_seconds, 'sample_rate': args.sample_rate,
                    'target_per_worker': TARGET_PER_WORKER, 'results': results,
                    'met': all(r['per_worker_met'] and r['scales'] for r in results)}))


if __name__ == '__main__':
  main()
