"""Synthesise the embedded Telugu demo corpus (data/telugu_demo).

The corpus lets `codec` train on a fresh machine with no downloads. It is
synthetic speech: the project's own Telugu sentences (tools/telugu_sentences.txt)
read by two Debian speech synthesisers,

  * espeak-ng, voice `te`, with several voice variants, pitches and rates;
  * festival with the Telugu NSK diphone voice (festival-te + festvox-te-nsk),
    with several F0 contours, speaking rates and one pitch-shifted variant;

so that it has nine distinct "speakers". Every utterance is resampled to
16 kHz mono, trimmed of leading/trailing silence, given a seeded peak level
between -14 and -6 dBFS and written as 16-bit FLAC to
OUT/<voice>/<sentence id>.flac. OUT/metadata.tsv lists path, voice, sentence
id, duration and text; OUT/sentences.txt lists the sentences with their ids.

Utterances are drawn round-robin over voices from a seeded permutation of the
sentences until the corpus holds at least --min_minutes of audio, so the output
is deterministic given --seed (and the Debian package versions).

Regenerate (Debian or Ubuntu, as root; from the repository root):

  apt-get update
  apt-get install -y espeak-ng festival festival-te festvox-te-nsk sox
  python tools/make_demo_corpus.py --out data/telugu_demo

Check an existing corpus without regenerating it:

  python tools/make_demo_corpus.py --out data/telugu_demo --verify_only
"""
import argparse
import dataclasses
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 16000
MIN_SECONDS = 1.5
MAX_SECONDS = 12.5
SILENCE_DB = 40.0  # frames this far below the loudest frame count as silence
PAD_SECONDS = (0.1, 0.15)  # silence kept before / after the speech
PEAK_DBFS = (-14.0, -6.0)  # range of the seeded per-utterance peak level
FADE_SECONDS = 0.005  # fade at the edges of the raw synthesis (no clicks)
BATCH = 16  # utterances synthesised between two checks of the total duration


@dataclasses.dataclass(frozen=True)
class Voice:
  name: str
  engine: str  # 'espeak' or 'festival'
  variant: str = ''  # espeak-ng voice variant, e.g. 'f3' -> `-v te+f3`
  pitch: int = 50  # espeak-ng -p (0-99)
  speed: int = 150  # espeak-ng -s (words per minute)
  f0_start: int = 130  # festival DuffInt F0 at the start of an utterance, Hz
  f0_end: int = 105  # ... and at its end
  stretch: float = 1.4  # festival Duration_Stretch (the voice's default: 1.4)
  cents: int = 0  # sox pitch shift after synthesis (shifts formants too)


VOICES = (
    Voice('espeak_te_p40_s150', 'espeak', pitch=40, speed=150),
    Voice('espeak_f3_p65_s140', 'espeak', variant='f3', pitch=65, speed=140),
    Voice('espeak_m3_p30_s165', 'espeak', variant='m3', pitch=30, speed=165),
    Voice('espeak_f2_p75_s130', 'espeak', variant='f2', pitch=75, speed=130),
    Voice('espeak_m1_p50_s120', 'espeak', variant='m1', pitch=50, speed=120),
    Voice('festival_nsk_f130_d140', 'festival', f0_start=130, f0_end=105,
          stretch=1.4),
    Voice('festival_nsk_f105_d155', 'festival', f0_start=105, f0_end=85,
          stretch=1.55),
    Voice('festival_nsk_f150_d125', 'festival', f0_start=150, f0_end=120,
          stretch=1.25),
    Voice('festival_nsk_f120_d130_up400c', 'festival', f0_start=120,
          f0_end=100, stretch=1.3, cents=400),
)

# (binary, Debian package) needed by each engine; sox is always needed.
TOOLS = {
    'espeak': (('espeak-ng', 'espeak-ng'),),
    'festival': (('festival', 'festival'),),
    'sox': (('sox', 'sox'),),
}

FESTIVAL_SETUP = """(voice_telugu_NSK_diphone)
(Parameter.set 'Int_Method 'DuffInt)
(Parameter.set 'Int_Target_Method Int_Targets_Default)
"""


def fail(message):
  sys.exit(f'make_demo_corpus: {message}')


def run(cmd, **kwargs):
  """Runs cmd; returns (returncode, stderr text)."""
  proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
  return proc.returncode, proc.stderr


def check_tools(engines):
  """Exits with a message naming the Debian package of each missing tool."""
  missing = []
  for engine in ('sox',) + tuple(engines):
    for binary, package in TOOLS[engine]:
      if shutil.which(binary) is None:
        missing.append(f'{binary} (Debian package {package})')
  if missing:
    fail('missing ' + ', '.join(missing) + '. Install with: apt-get update && '
         'apt-get install -y espeak-ng festival festival-te festvox-te-nsk sox')
  if 'espeak' in engines:
    check_espeak()
  if 'festival' in engines:
    check_festival()


def check_espeak():
  code, err = run(['espeak-ng', '-v', 'te', '-q', 'నమస్కారం'])
  if code != 0:
    fail(f'espeak-ng has no working Telugu voice `te` (package espeak-ng-data):'
         f' {err.strip()}')


def check_festival():
  with tempfile.TemporaryDirectory() as tmp:
    script = Path(tmp) / 'probe.scm'
    script.write_text(FESTIVAL_SETUP, encoding='utf-8')
    code, err = run(['festival', '-b', str(script)])
  if code != 0 or 'error' in err.lower():
    fail('festival cannot load the Telugu voice (voice_telugu_NSK_diphone); '
         'install Debian packages festival-te and festvox-te-nsk. festival '
         f'said: {err.strip()}')


def read_sentences(path):
  lines = Path(path).read_text(encoding='utf-8').splitlines()
  sentences = [line.strip() for line in lines if line.strip()]
  if not sentences:
    fail(f'no sentences in {path}')
  return sentences


def plan(num_sentences, num_voices, seed):
  """Yields (index, sentence index, voice index) in synthesis order.

  Pass p over a seeded permutation of the sentences gives sentence k of the
  pass to voice (k + p) mod V: voices stay balanced and every sentence is
  read once before any is read twice.
  """
  order = np.random.default_rng(seed).permutation(num_sentences)
  seen = set()
  index = 0
  for pass_ in range(num_voices):
    for k, sentence in enumerate(order):
      voice = (pass_ * num_sentences + k + pass_) % num_voices
      if (sentence, voice) not in seen:
        seen.add((sentence, voice))
        yield index, int(sentence), voice
        index += 1


def synth_espeak(voice, text, wav, tmp):
  text_file = Path(tmp) / 'text.txt'
  text_file.write_text(text, encoding='utf-8')
  name = 'te+' + voice.variant if voice.variant else 'te'
  return run(['espeak-ng', '-v', name, '-p', str(voice.pitch), '-s',
              str(voice.speed), '-w', str(wav), '-f', str(text_file)])


def synth_festival(voice, text, wav, tmp):
  quoted = text.replace('\\', '\\\\').replace('"', '\\"')
  script = Path(tmp) / 'synth.scm'
  script.write_text(
      FESTIVAL_SETUP
      + f"(set! duffint_params '((start {voice.f0_start}) "
      + f'(end {voice.f0_end})))\n'
      + f"(Parameter.set 'Duration_Stretch {voice.stretch})\n"
      + f'(set! utt (SynthText "{quoted}"))\n'
      + f'(utt.save.wave utt "{wav}" \'riff)\n', encoding='utf-8')
  code, err = run(['festival', '-b', str(script)])
  if 'error' in err.lower():
    code = code or 1
  return code, err


def to_16k(voice, raw, out):
  """Resamples raw to 16 kHz mono 32-bit float (no dither), pitch-shifting."""
  effects = ['pitch', str(voice.cents)] if voice.cents else []
  return run(['sox', '-D', str(raw), '-c', '1', '-e', 'floating-point', '-b',
              '32', str(out)] + effects + ['rate', '-v', str(SAMPLE_RATE)])


def frame_db(audio, frame):
  usable = len(audio) // frame * frame
  frames = audio[:usable].reshape(-1, frame)
  return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)


def fade_and_pad(audio):
  """Fades the edges in/out and adds PAD_SECONDS of zeros on both sides."""
  n = min(int(FADE_SECONDS * SAMPLE_RATE), len(audio) // 2)
  ramp = np.linspace(0.0, 1.0, n, endpoint=False, dtype=audio.dtype)
  audio = audio.copy()
  audio[:n] *= ramp
  audio[len(audio) - n:] *= ramp[::-1]
  pads = [np.zeros(int(p * SAMPLE_RATE), audio.dtype) for p in PAD_SECONDS]
  return np.concatenate([pads[0], audio, pads[1]])


def trim(audio):
  """Cuts leading/trailing silence, keeping PAD_SECONDS around the speech."""
  frame = SAMPLE_RATE // 100
  db = frame_db(audio, frame)
  if len(db) == 0:
    return audio[:0]
  active = np.flatnonzero(db > db.max() - SILENCE_DB)
  start = max(0, active[0] * frame - int(PAD_SECONDS[0] * SAMPLE_RATE))
  end = min(len(audio), (active[-1] + 1) * frame
            + int(PAD_SECONDS[1] * SAMPLE_RATE))
  return audio[start:end]


def set_peak(audio, rng):
  peak_db = rng.uniform(*PEAK_DBFS)
  return audio * (10**(peak_db / 20) / max(np.abs(audio).max(), 1e-9))


def problem(audio, text):
  """Returns why a synthesised utterance is unusable, or ''."""
  seconds = len(audio) / SAMPLE_RATE
  if not MIN_SECONDS <= seconds <= MAX_SECONDS:
    return f'duration {seconds:.2f} s outside [{MIN_SECONDS}, {MAX_SECONDS}]'
  rms_db = 10 * np.log10(np.mean(audio**2) + 1e-12)
  if rms_db < -45:
    return f'nearly silent (RMS {rms_db:.1f} dBFS)'
  per_char = seconds / len(text)
  if not 0.03 <= per_char <= 0.3:
    return f'implausible {per_char:.3f} s per character of text'
  return ''


def synthesise(job):
  """Worker: synthesises one utterance; returns a metadata row or a failure."""
  index, sentence_id, voice, text, out_dir, seed = job
  path = Path(out_dir) / voice.name / f'{sentence_id:04d}.flac'
  with tempfile.TemporaryDirectory() as tmp:
    raw, wav = Path(tmp) / 'raw.wav', Path(tmp) / '16k.wav'
    synth = synth_espeak if voice.engine == 'espeak' else synth_festival
    code, err = synth(voice, text, raw, tmp)
    if code != 0 or not raw.exists() or raw.stat().st_size <= 44:
      return dict(index=index, path=path, error=f'{voice.engine}: {err.strip()}')
    code, err = to_16k(voice, raw, wav)
    if code != 0:
      return dict(index=index, path=path, error=f'sox: {err.strip()}')
    audio, rate = sf.read(wav, dtype='float32')
  assert rate == SAMPLE_RATE and audio.ndim == 1, (rate, audio.shape)
  audio = trim(fade_and_pad(audio))
  why = problem(audio, text)
  if why:
    return dict(index=index, path=path, error=why)
  audio = set_peak(audio, np.random.default_rng([seed, index]))
  sf.write(path, audio, SAMPLE_RATE, subtype='PCM_16', format='FLAC',
           compression_level=1.0)
  return dict(index=index, path=path, voice=voice.name,
              sentence_id=sentence_id, seconds=len(audio) / SAMPLE_RATE,
              text=text)


def prepare_out(out, voices):
  """Removes what an earlier run of this script wrote, then makes the dirs."""
  out.mkdir(parents=True, exist_ok=True)
  for voice in VOICES:
    if (out / voice.name).is_dir():
      shutil.rmtree(out / voice.name)
  for voice in voices:
    (out / voice.name).mkdir()


def generate(sentences, voices, out, seed, min_minutes, jobs):
  """Synthesises utterances in plan order until min_minutes is reached."""
  todo = plan(len(sentences), len(voices), seed)
  rows, failures, total = [], [], 0.0
  with multiprocessing.Pool(jobs) as pool:
    while total < 60 * min_minutes:
      batch = take(todo, BATCH, sentences, voices, out, seed)
      if not batch:
        fail(f'ran out of (sentence, voice) pairs at {total / 60:.1f} min')
      for row in pool.map(synthesise, batch):
        if 'error' in row:
          failures.append(row)
        elif total < 60 * min_minutes:
          rows.append(row)
          total += row['seconds']
        else:
          row['path'].unlink()
      print(f'{len(rows)} utterances, {total / 60:.1f} min', flush=True)
  return rows, failures


def take(todo, count, sentences, voices, out, seed):
  batch = []
  for index, sentence, voice in todo:
    batch.append((index, sentence + 1, voices[voice], sentences[sentence],
                  str(out), seed))
    if len(batch) == count:
      break
  return batch


def write_lists(out, sentences, rows):
  with open(out / 'sentences.txt', 'w', encoding='utf-8') as f:
    for i, sentence in enumerate(sentences, 1):
      f.write(f'{i:04d}\t{sentence}\n')
  rows = sorted(rows, key=lambda r: (r['voice'], r['sentence_id']))
  with open(out / 'metadata.tsv', 'w', encoding='utf-8') as f:
    f.write('path\tvoice\tsentence_id\tseconds\ttext\n')
    for r in rows:
      rel = r['path'].relative_to(out).as_posix()
      f.write(f"{rel}\t{r['voice']}\t{r['sentence_id']:04d}\t"
              f"{r['seconds']:.3f}\t{r['text']}\n")


def check_file(path):
  """Returns (seconds, problem or '') for one FLAC file of the corpus."""
  try:
    info = sf.info(path)
    audio, rate = sf.read(path, dtype='int16', always_2d=True)
  except RuntimeError as e:  # soundfile.LibsndfileError derives from it
    return 0.0, f'unreadable: {e}'
  seconds = len(audio) / rate
  if rate != SAMPLE_RATE or audio.shape[1] != 1:
    return seconds, f'{rate} Hz, {audio.shape[1]} channels'
  if info.format != 'FLAC' or info.subtype != 'PCM_16':
    return seconds, f'{info.format}/{info.subtype}, not FLAC/PCM_16'
  x = audio[:, 0].astype(np.float64) / 32768
  if np.abs(x).max() >= 32767 / 32768:
    return seconds, 'clipped (reaches 0 dBFS)'
  if 10 * np.log10(np.mean(x**2) + 1e-12) < -50:
    return seconds, 'silent'
  return seconds, ''


def verify(out):
  """Checks every FLAC under out; prints and returns a summary."""
  files = sorted(out.rglob('*.flac'))
  per_voice, bad = {}, []
  for path in files:
    seconds, why = check_file(path)
    if why:
      bad.append(f'{path}: {why}')
    count, total = per_voice.get(path.parent.name, (0, 0.0))
    per_voice[path.parent.name] = (count + 1, total + seconds)
  total = sum(t for _, t in per_voice.values())
  megabytes = sum(p.stat().st_size for p in files) / 1e6
  for name, (count, seconds) in sorted(per_voice.items()):
    print(f'  {name:32s} {count:4d} files {seconds / 60:6.2f} min')
  print(f'{len(files)} files, {total / 60:.2f} min, {megabytes:.1f} MB '
        f'(FLAC), {len(bad)} bad')
  for line in bad:
    print('  BAD', line)
  return len(files), total, megabytes, bad


def parse_args():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', type=Path, default=REPO / 'data/telugu_demo')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--min_minutes', type=float, default=23.0,
                      help='stop once the corpus holds this much audio')
  parser.add_argument('--sentences', type=Path,
                      default=REPO / 'tools/telugu_sentences.txt')
  parser.add_argument('--engines', default='espeak,festival',
                      help='comma-separated subset of espeak,festival')
  parser.add_argument('--jobs', type=int, default=2,
                      help='parallel synthesis processes')
  parser.add_argument('--verify_only', action='store_true',
                      help='only check the corpus already in --out')
  return parser.parse_args()


def main():
  args = parse_args()
  if args.verify_only:
    _, _, _, bad = verify(args.out)
    sys.exit(1 if bad else 0)
  engines = tuple(e for e in args.engines.split(',') if e)
  if not engines or set(engines) - {'espeak', 'festival'}:
    fail(f'--engines must be a subset of espeak,festival, got {args.engines}')
  check_tools(engines)
  voices = [v for v in VOICES if v.engine in engines]
  sentences = read_sentences(args.sentences)
  prepare_out(args.out, voices)
  rows, failures = generate(sentences, voices, args.out, args.seed,
                            args.min_minutes, max(1, args.jobs))
  for row in failures:
    print(f"skipped {row['path'].relative_to(args.out)}: {row['error']}")
  write_lists(args.out, sentences, rows)
  _, _, _, bad = verify(args.out)
  sys.exit(1 if bad else 0)


if __name__ == '__main__':
  main()
