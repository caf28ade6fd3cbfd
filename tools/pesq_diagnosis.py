"""Where a run loses PESQ against Opus: frequency bands, pauses, and the band above 4 kHz.

For each validation file a bench/recipe.py run scored (its scores.json), the run's latest
checkpoint and Opus at 6 kbps code the file, and the script prints, averaged over the files:

- PESQ-wb of each coded signal, and of the same signal low-passed at 4 kHz (if cutting the upper
  band raises PESQ, noise up there is what costs it; Opus at 6 kbps codes little above 4 kHz);
- the level in the reference's pauses (frames 40 dB under its loudest), relative to the
  reference's own level there (PESQ punishes added noise more than missing sound);
- per band of 0-1, 1-2, 2-4, 4-6, 6-8 kHz, the coded signal's energy relative to the reference
  (dB) and the mean absolute difference of log10 power over STFT bins (the spectral detail).

  python tools/pesq_diagnosis.py RUN_DIR [--kbps 6]
"""
import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np
import scipy.signal

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from codec import evaluate  # pylint: disable=g-import-not-at-top,wrong-import-position
from codec import inference  # pylint: disable=g-import-not-at-top,wrong-import-position

BANDS_HZ = ((0, 1000), (1000, 2000), (2000, 4000), (4000, 6000), (6000, 8000))
FRAME = 320  # 20 ms at 16 kHz: the level of pauses is measured per frame
PAUSE_DB = -40.0


def low_pass(audio: np.ndarray, rate: int, hz: float = 4000.0) -> np.ndarray:
  sos = scipy.signal.butter(10, hz, fs=rate, output='sos')
  return scipy.signal.sosfiltfilt(sos, audio).astype(np.float32)


def frame_rms(audio: np.ndarray) -> np.ndarray:
  """f32[T] -> f32[T // FRAME]."""
  frames = audio[:len(audio) // FRAME * FRAME].reshape(-1, FRAME)
  return np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-12)


def pause_level_db(reference: np.ndarray, coded: np.ndarray) -> float:
  """Coded level over reference level in the reference's pauses (NaN without pauses)."""
  ref = frame_rms(reference)
  pauses = ref < ref.max() * 10 ** (PAUSE_DB / 20)
  if not pauses.any():
    return float('nan')
  return float(20 * np.log10(frame_rms(coded)[pauses].mean() / ref[pauses].mean()))


def band_errors(reference: np.ndarray, coded: np.ndarray, rate: int) -> np.ndarray:
  """f64[len(BANDS_HZ), 2]: (energy ratio dB, mean |log10 power difference|) per band."""
  freqs, _, ref = scipy.signal.stft(reference, rate, nperseg=512)
  _, _, est = scipy.signal.stft(coded, rate, nperseg=512)
  ref_power, est_power = np.abs(ref) ** 2, np.abs(est) ** 2
  rows = []
  for low, high in BANDS_HZ:
    band = (freqs >= low) & (freqs < high)
    ratio = 10 * np.log10(est_power[band].mean() / ref_power[band].mean())
    detail = np.mean(np.abs(np.log10(ref_power[band] + 1e-9) - np.log10(est_power[band] + 1e-9)))
    rows.append((ratio, detail))
  return np.array(rows)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
  parser.add_argument('run_dir', help='a bench/recipe.py run folder (with scores.json)')
  parser.add_argument('--kbps', type=float, default=6.0, help='the Opus bitrate to compare')
  args = parser.parse_args()
  run = pathlib.Path(args.run_dir)
  files = json.loads((run / 'scores.json').read_text())['files']
  codec = inference.load(run)
  rate = codec.sample_rate
  scorers = evaluate.load_scorers()
  if scorers.pesq is None:
    sys.exit('\n'.join(scorers.notes))
  pesq = lambda reference, coded: evaluate.pesq_wb(scorers.pesq, reference, coded, rate)
  rows = {'codec': [], 'opus': []}
  with tempfile.TemporaryDirectory() as workdir:
    for path in files:
      reference = inference.read_audio(path, rate).audio
      codes, header = codec.encode_audio(reference, codec.n_codebooks)
      coded = {'codec': codec.decode_audio(codes, header),
               'opus': evaluate.opus_roundtrip(reference, rate, args.kbps, workdir)}
      for name, audio in coded.items():
        rows[name].append({'pesq': pesq(reference, audio),
                           'pesq_below_4k': pesq(reference, low_pass(audio, rate)),
                           'pause_db': pause_level_db(reference, audio),
                           'bands': band_errors(reference, audio, rate)})
  print(f'{run}: step {codec.step}, {len(files)} files; Opus at {args.kbps:g} kbps')
  print('| | PESQ | PESQ low-passed at 4 kHz | level in pauses dB | '
        + ' | '.join(f'{lo / 1000:g}-{hi / 1000:g} kHz' for lo, hi in BANDS_HZ) + ' |')
  print('|---' * (4 + len(BANDS_HZ)) + '|')
  for name, values in rows.items():
    bands = np.mean([v['bands'] for v in values], axis=0)
    cells = [f'{np.nanmean([v[k] for v in values]):.3f}' for k in ('pesq', 'pesq_below_4k')]
    cells.append(f"{np.nanmean([v['pause_db'] for v in values]):+.1f}")
    cells += [f'{ratio:+.1f} dB / {detail:.2f}' for ratio, detail in bands]
    print(f'| {name} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main()
