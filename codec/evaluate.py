"""`python -m codec evaluate`: objective quality of a trained codec at several bitrates, vs Opus.

Every file is encoded once with the most codebooks asked for and decoded with the first q of them
for each q (residual VQ: the first q codes do not depend on the later levels), through the same
chunked, loudness-normalised path as `python -m codec reconstruct`. The reference is the input
mixed to mono at the codec's rate. Metrics per file and bitrate: SNR, SI-SDR, DAC's multiscale mel
distance, amplitude ratio (codec/metrics.py), and STOI and wideband PESQ when pystoi and pesq are
installed (`pip install -e '.[eval]'`; else those columns stay empty and a note says so).

`--baselines` runs the same files through Opus (opusenc --hard-cbr at the codec's nominal bitrate
for each q, then opusdec) when opus-tools is installed. Results: a table on stdout,
OUT/per_file.csv, OUT/summary.csv (means over files) and OUT/metrics.png (each metric against
bitrate, one line per codec).
"""
import csv
import dataclasses
import functools
import math
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Callable

import jax
import numpy as np
import soundfile as sf

from codec import audio_io
from codec import config as config_lib
from codec import data
from codec import inference
from codec import metrics

# (column, table heading, higher is better)
METRICS = (
    ('snr_db', 'SNR dB', True),
    ('si_sdr_db', 'SI-SDR dB', True),
    ('mel_distance', 'mel dist', False),
    ('stoi', 'STOI', True),
    ('pesq', 'PESQ', True),
    ('amplitude_ratio', 'amp %', None),  # best at 100
)
_PESQ_RATE = 16000  # wideband PESQ is defined at 16 kHz
# opusenc refuses less than 0.5 kbps, and calls 6 to 256 kbps "meaningful" (libopus runs below 6).
_OPUS_MIN_KBPS = 0.5
_OPUS_USUAL_KBPS = 6.0
COLUMNS = ('file', 'codec', 'n_quantizers', 'kbps') + tuple(m[0] for m in METRICS)


@dataclasses.dataclass
class Scorers:
  """The optional perceptual metrics, None when their package is missing."""
  stoi: Callable | None
  pesq: Callable | None
  notes: list[str]


def load_scorers() -> Scorers:
  notes = []
  try:
    from pystoi import stoi  # pylint: disable=g-import-not-at-top
  except ImportError:
    stoi = None
    notes.append('STOI skipped: pystoi is not installed (pip install pystoi, or '
                 "pip install -e '.[eval]')")
  try:
    from pesq import pesq  # pylint: disable=g-import-not-at-top
  except ImportError:
    pesq = None
    notes.append("PESQ skipped: pesq is not installed (pip install pesq, or pip install -e '.[eval]')")
  return Scorers(stoi, pesq, notes)


def pesq_wb(pesq_fn: Callable, reference: np.ndarray, estimate: np.ndarray,
            sample_rate: int) -> float:
  """Wideband PESQ of f32[T] signals at sample_rate; NaN where pesq refuses them (silence)."""
  try:
    return float(pesq_fn(_PESQ_RATE, audio_io.resample(reference, sample_rate, _PESQ_RATE),
                         audio_io.resample(estimate, sample_rate, _PESQ_RATE), 'wb'))
  except Exception:  # pylint: disable=broad-except  (pesq raises its own types on silence)
    return math.nan


@functools.lru_cache(maxsize=None)
def _signal_metrics(sample_rate: int, with_mel: bool) -> Callable:
  """One jitted function for the jnp metrics: compiled once per file length, where running them
  op by op recompiles every op for every new length (about 3x slower)."""

  def fn(ref: jax.Array, est: jax.Array) -> dict[str, jax.Array]:
    out = {'snr_db': metrics.snr_db(ref, est)[0], 'si_sdr_db': metrics.si_sdr_db(ref, est)[0],
           'amplitude_ratio': metrics.amplitude_ratio(ref, est)[0]}
    if with_mel:
      out['mel_distance'] = metrics.mel_distance(ref, est, sample_rate=sample_rate)[0]
    return out

  return jax.jit(fn)


def score(reference: np.ndarray, estimate: np.ndarray, sample_rate: int,
          scorers: Scorers) -> dict[str, float]:
  """Every metric of one file: reference, estimate f32[T] -> {column: value}; NaN where a metric
  cannot be computed (too short for the mel windows, silence for PESQ, package missing)."""
  with_mel = len(reference) > max(metrics.DAC_MEL_WINDOWS) // 2  # reflect padding needs it
  values = _signal_metrics(sample_rate, with_mel)(reference[None], estimate[None])
  out = {'mel_distance': math.nan, 'stoi': math.nan, 'pesq': math.nan}
  out.update({k: float(v) for k, v in values.items()})
  if scorers.stoi is not None:
    out['stoi'] = float(scorers.stoi(reference, estimate, sample_rate, extended=False))
  if scorers.pesq is not None:
    out['pesq'] = pesq_wb(scorers.pesq, reference, estimate, sample_rate)
  return out


# -------------------------------------------------------------------------------------------------
# Opus.


class OpusError(RuntimeError):
  pass


def opus_available() -> bool:
  return shutil.which('opusenc') is not None and shutil.which('opusdec') is not None


def opus_roundtrip(audio: np.ndarray, sample_rate: int, kbps: float, workdir: str) -> np.ndarray:
  """f32[T] through opusenc (hard CBR at kbps) and opusdec -> f32[T] at sample_rate."""
  source, coded, decoded = (os.path.join(workdir, name) for name in ('in.wav', 'x.opus', 'out.wav'))
  sf.write(source, np.clip(audio, -1.0, 1.0), sample_rate, subtype='PCM_16')
  for command in (['opusenc', '--quiet', '--hard-cbr', '--bitrate', f'{kbps:g}', source, coded],
                  ['opusdec', '--quiet', '--float', coded, decoded]):
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
      raise OpusError(f'{command[0]} failed: {result.stderr.strip()}')
  out, rate = sf.read(decoded, dtype='float32', always_2d=True)
  out = audio_io.resample(audio_io.to_mono(out), rate, sample_rate)
  return audio_io.fix_length(out, len(audio))


# -------------------------------------------------------------------------------------------------
# Which files.


def select_files(data_dir: str, split: str, codec: inference.Codec) -> tuple[list[pathlib.Path],
                                                                              list[str]]:
  """(files to evaluate, notes). split 'all': every audio file under data_dir; 'val': those the run
  held out for validation, found the way training found them (same vetting, same hash split)."""
  root = pathlib.Path(data_dir).expanduser().resolve()
  if not root.is_dir():
    raise inference.CodecError(f'--data_dir {data_dir}: no such folder')
  if split == 'all':
    files = audio_io.find_audio_files(root)
    if not files:
      raise inference.CodecError(f'--data_dir {data_dir}: no audio files in this folder')
    return files, []
  config = codec.config
  if config.data.val_dir:
    return audio_io.find_audio_files(root), [
        f'the run validated on a separate folder (data.val_dir = {config.data.val_dir}); '
        f'--split val evaluates every file of {root}']
  try:
    corpus = audio_io.index_corpus(
        root, 'data_dir', cache_dir=None, sample_rate=codec.sample_rate,
        min_length=config_lib.excerpt_samples(config), write=False)
  except ValueError as error:
    raise inference.CodecError(str(error)) from None
  _, val = data.split_train_val(corpus.usable, config.data.val_fraction)
  if not val:
    raise inference.CodecError(f'--split val: no validation files among the {len(corpus.usable)} '
                               f'usable files of {root} (data.val_fraction = '
                               f'{config.data.val_fraction})')
  return [root / rel for rel in val], []


# -------------------------------------------------------------------------------------------------
# The evaluation.


def evaluate_file(codec: inference.Codec, path: pathlib.Path, rel: str, levels: list[int],
                  scorers: Scorers, baselines: bool, workdir: str) -> list[dict]:
  """Rows of one file: one per codebook count, and one per Opus bitrate with baselines."""
  reference = inference.read_audio(path, codec.sample_rate).audio
  codes, header = codec.encode_audio(reference, max(levels))
  rows = []
  for q in levels:
    estimate = codec.decode_audio(codes[:q], dataclasses.replace(header, n_quantizers=q))
    rows.append({'file': rel, 'codec': 'codec', 'n_quantizers': q,
                 'kbps': codec.bitrate(q) / 1000,
                 **score(reference, estimate, codec.sample_rate, scorers)})
  if baselines:
    for kbps in opus_bitrates(codec, levels):
      estimate = opus_roundtrip(reference, codec.sample_rate, kbps, workdir)
      rows.append({'file': rel, 'codec': 'opus', 'n_quantizers': '', 'kbps': kbps,
                   **score(reference, estimate, codec.sample_rate, scorers)})
  return rows


def opus_bitrates(codec: inference.Codec, levels: list[int]) -> list[float]:
  """The codec's nominal kbps per level, raised to opusenc's floor."""
  return sorted({max(codec.bitrate(q) / 1000, _OPUS_MIN_KBPS) for q in levels})


def summarize(rows: list[dict]) -> list[dict]:
  """Means over files per (codec, bitrate), in first-seen order; NaN-only columns stay NaN."""
  groups = {}
  for row in rows:
    groups.setdefault((row['codec'], row['kbps']), []).append(row)
  summary = []
  for (name, kbps), items in groups.items():
    means = {}
    for column, _, _ in METRICS:
      values = np.array([r[column] for r in items], np.float64)
      finite = values[np.isfinite(values)]
      means[column] = float(finite.mean()) if finite.size else math.nan
    summary.append({'file': f'mean of {len(items)}', 'codec': name,
                    'n_quantizers': items[0]['n_quantizers'], 'kbps': kbps, **means})
  return summary


def _cell(value) -> str:
  if isinstance(value, float):
    return '' if math.isnan(value) else f'{value:.4f}'
  return str(value)


def write_csv(rows: list[dict], path: pathlib.Path) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    writer.writerows([[_cell(row[c]) for c in COLUMNS] for row in rows])


def format_table(summary: list[dict]) -> str:
  """One comparison table, codec rows then Opus rows, each by bitrate."""
  headings = ['codec', 'codebooks', 'kbps'] + [m[1] for m in METRICS]
  body = []
  for row in sorted(summary, key=lambda r: (r['codec'] != 'codec', r['codec'], r['kbps'])):
    cells = [row['codec'], str(row['n_quantizers'] or '-'), f'{row["kbps"]:.2f}']
    cells += ['-' if math.isnan(row[m[0]]) else f'{row[m[0]]:.3f}' for m in METRICS]
    body.append(cells)
  widths = [max(len(r[i]) for r in body + [headings]) for i in range(len(headings))]
  line = lambda cells: '  '.join(c.rjust(w) for c, w in zip(cells, widths))
  return '\n'.join([line(headings), '-' * len(line(headings))] + [line(r) for r in body])


def plot(summary: list[dict], path: pathlib.Path, title: str) -> None:
  """Each metric against bitrate, one line per codec."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, 3, figsize=(13, 7))
  for ax, (column, heading, better) in zip(axes.flat, METRICS):
    for name in dict.fromkeys(r['codec'] for r in summary):
      points = sorted((r['kbps'], r[column]) for r in summary if r['codec'] == name)
      if any(math.isfinite(v) for _, v in points):
        ax.plot(*zip(*points), marker='o', label=name)
    hint = {True: ' (higher is better)', False: ' (lower is better)', None: ' (100 is best)'}
    ax.set_title(heading + hint[better], fontsize=10)
    ax.set_xlabel('kbps')
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=8)
    else:
      ax.text(0.5, 0.5, 'not computed', ha='center', va='center', transform=ax.transAxes)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def default_levels(n_codebooks: int) -> list[int]:
  """A third, two thirds and all of the codebooks (4, 8, 12 for the 16 kHz model)."""
  return sorted({max(1, round(n_codebooks * k / 3)) for k in (1, 2, 3)})


def run(codec: inference.Codec, files: list[pathlib.Path], root: pathlib.Path, levels: list[int],
        baselines: bool, out_dir: pathlib.Path, progress: Callable = lambda x, **_: x
        ) -> tuple[list[dict], list[dict], list[str]]:
  """Evaluates `files` (paths under root); writes the CSVs and the plot into out_dir.

  Returns (per-file rows, summary rows, notes). A file that cannot be read is noted and skipped.
  """
  scorers = load_scorers()
  notes = list(scorers.notes)
  if baselines and not opus_available():
    notes.append('Opus baseline skipped: opusenc/opusdec not found (apt-get install opus-tools)')
    baselines = False
  lowest = min(codec.bitrate(q) for q in levels) / 1000
  if baselines and lowest < _OPUS_USUAL_KBPS:
    notes.append(f'Opus at {lowest:g} kbps: below {_OPUS_USUAL_KBPS:g} kbps, outside opusenc\'s '
                 f'recommended range (its floor is {_OPUS_MIN_KBPS:g} kbps)')
  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    for path in progress(files, desc='evaluate', unit='file'):
      rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
      try:
        rows += evaluate_file(codec, path, rel, levels, scorers, baselines, workdir)
      except audio_io.AudioError as error:
        notes.append(f'skipped {error.detail} ({error.reason})')
      except OpusError as error:
        notes.append(f'Opus baseline stopped at {rel}: {error}')
        baselines = False
  if not rows:
    raise inference.CodecError('no file could be evaluated: ' + '; '.join(notes))
  summary = summarize(rows)
  out_dir.mkdir(parents=True, exist_ok=True)
  write_csv(rows, out_dir / 'per_file.csv')
  write_csv(summary, out_dir / 'summary.csv')
  n_files = len({row['file'] for row in rows})
  plot(summary, out_dir / 'metrics.png', f'{n_files} files, checkpoint step {codec.step}')
  return rows, summary, notes
