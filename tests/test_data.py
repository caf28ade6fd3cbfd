"""Tests for the audio input pipeline (codec/data.py, codec/audio_io.py) on tiny synthetic corpora.

Every corpus is written into tmp_path with soundfile; nothing reads data/.
"""
import json
import logging
import math
import os
import pathlib

import numpy as np
import pytest
import soundfile as sf

from codec import audio_io
from codec import config as config_lib
from codec import data

RATE = 16000
EXCERPT = 1600  # 0.1 s at RATE
BATCH = 4


def _write(path: pathlib.Path, audio: np.ndarray, rate: int = RATE, **kwargs) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(path, audio, rate, **kwargs)
  return path


def _tone(seconds: float, freq: float, rate: int = RATE, amplitude: float = 0.1) -> np.ndarray:
  """f32[T]: a sine, whose frequency tells which file an excerpt came from."""
  t = np.arange(int(round(seconds * rate))) / rate
  return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _noise(seconds: float, seed: int, rate: int = RATE) -> np.ndarray:
  """f32[T]: white noise; distinct seeds make every excerpt distinct."""
  noise = np.random.default_rng(seed).standard_normal(int(seconds * rate))
  return (0.05 * noise).astype(np.float32)


def _config(root: pathlib.Path, **overrides):
  c = config_lib.base_config().data
  c.data_dir = str(root)
  c.excerpt_seconds = EXCERPT / RATE
  c.val_excerpt_seconds = 0.25
  c.val_max_excerpts = 4
  c.val_fraction = 0.0
  c.num_workers = 0
  c.prefetch = 2
  for key, value in overrides.items():
    setattr(c, key, value)
  return c


def _make(c, cache_dir=None, **kwargs) -> data.Datasets:
  kwargs = {'sample_rate': RATE, 'global_batch_size': BATCH, 'seed': 0, **kwargs}
  return data.make_datasets(c, cache_dir=cache_dir, **kwargs)


def _take(iterator, n: int) -> list[np.ndarray]:
  return [next(iterator) for _ in range(n)]


def _noise_corpus(root: pathlib.Path, n_files: int = 6) -> pathlib.Path:
  for i in range(n_files):
    _write(root / f'voice{i % 2}' / f'utt{i}.flac', _noise(0.5 + 0.13 * i, seed=i))
  return root


TONES = [300.0 + 200.0 * i for i in range(8)]


def _tone_corpus(root: pathlib.Path) -> pathlib.Path:
  """8 files x 5 excerpts (0.55 s: 800 samples of slack for the offset) = 10 batches exactly."""
  for i, freq in enumerate(TONES):
    _write(root / f'v{i % 3}' / f'{i}.wav', _tone(0.55, freq))
  return root


def _dominant(row: np.ndarray) -> float:
  spectrum = np.abs(np.fft.rfft(row * np.hanning(len(row))))
  return np.fft.rfftfreq(len(row), 1 / RATE)[np.argmax(spectrum)]


def _source_file(row: np.ndarray) -> int:
  return int(np.argmin([abs(_dominant(row) - f) for f in TONES]))


# ---- Split.


def test_split_is_stable_when_files_are_added():
  before = [f'spk{i % 7}/utt{i}.flac' for i in range(300)]
  train, val = data.split_train_val(before, 0.1)
  assert 10 < len(val) < 60 and len(train) + len(val) == 300
  after = before + [f'new/utt{i}.wav' for i in range(300)]
  train2, val2 = data.split_train_val(after, 0.1)
  assert set(val) <= set(val2) and set(train) <= set(train2)


def test_split_always_has_a_validation_file_when_asked():
  names = ['a.wav', 'b.wav', 'c.wav']
  train, val = data.split_train_val(names, 1e-9)
  assert val == [min(names, key=data.split_fraction)] and len(train) == 2
  assert data.split_train_val(names, 0.0) == (names, [])
  assert data.split_train_val(['only.wav'], 0.5) == (['only.wav'], [])


# ---- Epochs, shuffling, resume, sharding.


def test_plan_excerpts_are_disjoint_fixed_in_number_and_cover_each_file():
  lengths = np.array([1600, 3000, 8000, 9599])
  plan = data._Plan.create(lengths, 1600, seed=3)
  assert plan.counts.tolist() == [1, 1, 5, 5] and plan.total == 12
  offsets = set()
  for epoch in range(20):
    spans = [plan.locate(epoch, x) for x in range(plan.total)]
    for f, length in enumerate(lengths):
      starts = sorted(s for g, s in spans if g == f)
      assert len(starts) == plan.counts[f]
      assert 0 <= starts[0] and starts[-1] + 1600 <= length
      assert all(b - a == 1600 for a, b in zip(starts, starts[1:]))  # adjacent, no overlap
      offsets.add((f, starts[0]))
  assert len({s for f, s in offsets if f == 3}) > 5  # the offset moves between epochs


def test_an_epoch_covers_every_file_and_the_next_reshuffles(tmp_path):
  ds = _make(_config(_tone_corpus(tmp_path), phase_inversion=False))
  assert ds.steps_per_epoch == 10 and ds.excerpts_per_epoch == 40
  assert ds.val_audio.shape == (0, 4000)
  it = ds.train_iterator()
  epochs = [np.concatenate(_take(it, 10)) for _ in range(2)]
  it.close()
  for rows in epochs:
    assert rows.shape == (40, EXCERPT) and rows.dtype == np.float32
    assert np.bincount([_source_file(r) for r in rows], minlength=8).tolist() == [5] * 8
  assert [_source_file(r) for r in epochs[0]] != [_source_file(r) for r in epochs[1]]


@pytest.mark.parametrize('salient', [False, True])
def test_resume_gives_identical_batches_also_across_an_epoch_boundary(tmp_path, salient):
  c = _config(_noise_corpus(tmp_path), random_gain_db=6.0, phase_inversion=True,
              salient_excerpts=salient)
  ds = _make(c, seed=7)
  steps = ds.steps_per_epoch
  reference = _take(ds.train_iterator(), steps + 4)

  interrupted = ds.train_iterator()
  _take(interrupted, steps - 2)
  state = json.loads(json.dumps(interrupted.get_state()))
  interrupted.close()
  resumed = _make(c, seed=7).train_iterator()  # a new process would rebuild everything
  resumed.set_state(state)
  assert resumed.epoch == 0
  for expected, got in zip(reference[steps - 2:], _take(resumed, 6)):
    np.testing.assert_array_equal(got, expected)
  assert resumed.epoch == 1
  resumed.set_state({**state, 'next_batch': 1})  # rewinding a live iterator works too
  np.testing.assert_array_equal(next(resumed), reference[1])
  resumed.close()


def test_two_processes_split_each_global_batch(tmp_path):
  c = _config(_noise_corpus(tmp_path))
  whole = _make(c).train_iterator()
  hosts = [_make(c, process_index=p, process_count=2).train_iterator() for p in range(2)]
  steps = _make(c).steps_per_epoch
  for _ in range(steps + 2):
    full, parts = next(whole), [next(h) for h in hosts]
    assert all(p.shape == (BATCH // 2, EXCERPT) for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), full)
    assert not np.allclose(parts[0][0], parts[1][0])  # disjoint excerpts
  for it in [whole, *hosts]:
    it.close()
  with pytest.raises(ValueError, match='split evenly'):
    _make(c, process_index=0, process_count=3)


def test_worker_processes_deliver_the_same_batches_and_resume_inside_a_chunk(tmp_path):
  c = _config(_noise_corpus(tmp_path, n_files=3))
  expected_it = _make(c).train_iterator()
  assert expected_it.chunk == 1  # no workers: no hand-over
  c.num_workers = 1
  it = _make(c).train_iterator()
  chunk = it.chunk
  assert chunk > 1  # several batches per hand-over, so the test crosses a chunk's end
  n = chunk + 3
  expected = _take(expected_it, n)
  got = _take(it, 2)
  state = it.get_state()
  it.close()
  resumed = _make(c).train_iterator()
  resumed.set_state(state)
  got += _take(resumed, n - 2)
  resumed.close()
  assert len(got) == n
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(a, b)


def test_batches_larger_than_a_chunk_go_one_at_a_time(tmp_path, monkeypatch):
  monkeypatch.setattr(data, '_CHUNK_BYTES', 1)  # as batches of many long excerpts
  c = _config(_noise_corpus(tmp_path, n_files=3))
  expected = _take(_make(c).train_iterator(), 3)
  c.num_workers = 1
  it = _make(c).train_iterator()
  assert it.chunk == 1
  got = _take(it, 3)
  it.close()
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(a, b)


def test_workers_share_the_cores_instead_of_each_taking_prefetch_threads():
  threads = data._threads_per_worker  # pylint: disable=protected-access
  assert threads(prefetch=2, num_workers=1, cores=2) == 2  # one worker reads as no worker does
  assert threads(prefetch=2, num_workers=2, cores=2) == 1  # 2 decoding threads on 2 cores, not 4
  assert threads(prefetch=2, num_workers=8, cores=16) == 2
  assert threads(prefetch=2, num_workers=4, cores=2) == 1  # never none


# ---- Salient excerpts.


LOUD_HZ, QUIET_HZ = 1000.0, 300.0


def _burst_corpus(root: pathlib.Path) -> pathlib.Path:
  """2 files of 4 s at 44.1 kHz: a quiet 300 Hz tone (-53 dB) but for 1000 Hz bursts (-23 dB)
  over 0.5 s of every 2 s. Which tone dominates an excerpt tells whether it caught a burst."""
  for i in range(2):
    quiet = _tone(4.0, QUIET_HZ, rate=44100, amplitude=0.003)
    loud = _tone(4.0, LOUD_HZ, rate=44100, amplitude=0.1)
    burst = (np.arange(len(loud)) // 22050) % 4 == i
    _write(root / f'{i}.wav', np.where(burst, loud, quiet), rate=44100)
  return root


def _loud_fraction(c) -> float:
  ds = _make(c)
  it = ds.train_iterator()
  rows = np.concatenate(_take(it, ds.steps_per_epoch))
  it.close()
  return float(np.mean([abs(_dominant(r) - LOUD_HZ) < abs(_dominant(r) - QUIET_HZ) for r in rows]))


def test_salient_excerpts_find_the_loud_parts_of_long_recordings(tmp_path):
  c = _config(_burst_corpus(tmp_path))
  tiled = _loud_fraction(c)
  c.salient_excerpts = True
  salient = _loud_fraction(c)
  assert tiled < 0.5 < 0.85 < salient, (tiled, salient)
  c.salient_tries = 1  # one candidate: a random offset, as loud as tiling on average
  assert _loud_fraction(c) < 0.6
  c.salient_tries = 0
  with pytest.raises(ValueError, match='data.salient_tries'):
    _make(c)


def test_salient_candidates_are_fixed_by_seed_epoch_and_excerpt():
  lengths = np.array([1600, 3000, 16000])
  plan = data._Plan.create(lengths, 1600, seed=3, salient_tries=8)
  assert plan.total == 1 + 1 + 10
  for epoch in range(3):
    for x in range(plan.total):
      file, starts = plan.starts(epoch, x)
      assert file == plan.locate(epoch, x)[0] and len(starts) == 8
      assert all(0 <= s <= lengths[file] - 1600 for s in starts)
      assert starts == plan.starts(epoch, x)[1]  # pure
  assert plan.starts(0, 11) != plan.starts(1, 11) and plan.starts(0, 11) != plan.starts(0, 10)
  assert plan.starts(0, 0)[1] == [0] * 8  # a file of exactly one excerpt has one place for it
  tiled = data._Plan.create(lengths, 1600, seed=3)
  assert tiled.starts(2, 5) == (2, [tiled.locate(2, 5)[1]])


# ---- Audio: resampling, loudness, augmentation.


def test_to_mono_is_the_mean_of_the_channels():
  rng = np.random.default_rng(0)
  for channels in (1, 2, 3, 6):
    audio = rng.standard_normal((1000, channels)).astype(np.float32)
    mono = audio_io.to_mono(audio)
    assert mono.shape == (1000,) and mono.dtype == np.float32
    # Stereo to the bit: 0.5 * a + 0.5 * b == (a + b) / 2 in float32.
    np.testing.assert_allclose(mono, audio.mean(axis=1), rtol=0, atol=0 if channels <= 2 else 1e-6)


def test_load_audio_mixes_stereo_and_resamples(tmp_path):
  tone = _tone(1.0, 1000.0, rate=44100)
  path = _write(tmp_path / 'stereo.wav', np.stack([tone, tone], axis=1), rate=44100)
  audio = data.load_audio(path, RATE)
  assert audio.shape == (RATE,) and audio.dtype == np.float32
  assert abs(_dominant(audio) - 1000.0) < 20
  np.testing.assert_allclose(audio_io.rms_db(audio), audio_io.rms_db(tone), atol=0.1)


def test_pipeline_resamples_44k_stereo_files(tmp_path):
  for i in range(3):
    _write(tmp_path / f'{i}.flac', np.stack([_tone(0.7, 500.0 + 300 * i, rate=44100)] * 2, axis=1),
           rate=44100)
  ds = _make(_config(tmp_path))
  assert ds.excerpts_per_epoch == 3 * (int(np.ceil(0.7 * 44100 * RATE / 44100)) // EXCERPT)
  batch = next(iter(ds.train_iterator()))
  assert batch.shape == (BATCH, EXCERPT)
  assert all(min(abs(_dominant(r) - (500.0 + 300 * i)) for i in range(3)) < 20 for r in batch)


def _write_blocks(path: pathlib.Path, audio: np.ndarray, rate: int, **kwargs) -> pathlib.Path:
  """Writes f32[T, C] in blocks: one large write to OGG crashes libsndfile 1.2."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with sf.SoundFile(path, 'w', rate, audio.shape[1], **kwargs) as f:
    for i in range(0, len(audio), 8192):
      f.write(audio[i:i + 8192])
  return path


def _stereo_noise(seconds: float, rate: int, seed: int) -> np.ndarray:
  """f32[T, 2]: band-limited-ish noise (a running mean of white noise), distinct channels."""
  noise = np.random.default_rng(seed).standard_normal((int(seconds * rate), 2))
  smooth = (noise + np.roll(noise, 1, axis=0) + np.roll(noise, 2, axis=0)) / 3
  return (0.2 * smooth).astype(np.float32)


@pytest.mark.parametrize('orig_rate, rate', [(44100, 16000), (48000, 16000), (8000, 16000),
                                             (22050, 44100), (16001, 16000)])
def test_window_resampling_equals_resampling_the_whole_file(tmp_path, orig_rate, rate):
  path = _write(tmp_path / 'long.wav', _stereo_noise(2.0, orig_rate, seed=1), rate=orig_rate,
                subtype='FLOAT')
  whole = audio_io.decode_mono(path, rate)
  frames = sf.info(path).frames
  files = audio_io.OpenFiles(4)
  length = 1234
  starts = [0, 1, 700, len(whole) // 2 + 3, len(whole) - length - 1, len(whole) - length]
  for start in starts:
    window = audio_io.read_resampled(path, start, start + length, frames, orig_rate, rate, files)
    assert window.shape == (length,) and window.dtype == np.float32
    np.testing.assert_allclose(window, whole[start:start + length], atol=1e-6, rtol=0)
    first, last, _ = audio_io.resample_window(start, start + length, frames, orig_rate, rate)
    # A window, not the file: the excerpt, the context and at most one grid step before it.
    context = audio_io.RESAMPLE_CONTEXT * orig_rate / min(orig_rate, rate)
    step = orig_rate // math.gcd(orig_rate, rate)
    assert last - first <= length * orig_rate / rate + 2 * context + step + 2


def _format_kwargs():
  """(extension, rate, soundfile kwargs) of each compressed format this libsndfile writes."""
  formats = sf.available_formats()
  out = [('wav', 44100, {}), ('flac', 44100, {})]
  if 'OGG' in formats:
    out += [('ogg', 44100, {'format': 'OGG', 'subtype': 'VORBIS'}),
            ('opus', 48000, {'format': 'OGG', 'subtype': 'OPUS'})]
  if 'MP3' in formats:
    out.append(('mp3', 44100, {'format': 'MP3', 'subtype': 'MPEG_LAYER_III'}))
  return out


@pytest.mark.parametrize('ext', ['wav', 'flac', 'ogg', 'opus', 'mp3'])
def test_every_format_reads_excerpts_equal_to_decoding_it_whole(tmp_path, ext):
  found = {e: (r, kw) for e, r, kw in _format_kwargs()}
  if ext not in found:
    pytest.skip(f'libsndfile {sf.__libsndfile_version__} cannot write {ext}')
  orig_rate, kwargs = found[ext]
  path = _write_blocks(tmp_path / f'x.{ext}', _stereo_noise(3.0, orig_rate, seed=2), orig_rate,
                       **kwargs)
  info = audio_io.probe(path)
  assert info.seekable and info.channels == 2 and info.sample_rate == orig_rate
  whole = audio_io.decode_mono(path, RATE)
  files = audio_io.OpenFiles(2)
  for start in (0, 5000, 31000, len(whole) - 3000):  # out of order: seeks back and forth
    window = audio_io.read_resampled(path, start, start + 3000, info.frames, orig_rate, RATE, files)
    np.testing.assert_allclose(window, whole[start:start + 3000], atol=1e-6, rtol=0)


def test_open_files_reuses_handles_and_bounds_them(tmp_path, monkeypatch):
  paths = [_write(tmp_path / f'{i}.wav', _noise(0.2, seed=i)) for i in range(3)]
  opened = []
  real = sf.SoundFile
  monkeypatch.setattr(audio_io.sf, 'SoundFile', lambda p: opened.append(p) or real(p))
  files = audio_io.OpenFiles(2)
  for path in [paths[0], paths[0], paths[1], paths[0], paths[2], paths[1], paths[0]]:
    audio_io.read_frames(path, 10, 20, files)
  # 0 and 1 stay open; 2 evicts 1 (least recently used), which is then opened again, evicting 0.
  assert opened == [str(p) for p in (paths[0], paths[1], paths[2], paths[1], paths[0])]
  assert len(files._idle) == 2
  files.close()


def test_normalise_loudness_hits_the_target_and_keeps_peaks_in_range():
  for level in (0.001, 0.05, 0.9):
    out = audio_io.normalise_loudness(_tone(0.5, 440.0, amplitude=level), -16.0)
    assert audio_io.rms_db(out) == pytest.approx(-16.0, abs=0.01)
  click = np.zeros(1600, np.float32)
  click[100] = 0.5
  out = audio_io.normalise_loudness(click, -16.0)
  assert np.max(np.abs(out)) == pytest.approx(1.0)  # scaled down rather than clipped


def test_batches_and_validation_are_loudness_normalised(tmp_path):
  root = _noise_corpus(tmp_path)
  _write(tmp_path / 'silent.wav', np.zeros(RATE, np.float32))  # its excerpts must be replaced
  c = _config(root, val_fraction=0.3, loudness_db=-20.0)
  ds = _make(c)
  rows = np.concatenate(_take(ds.train_iterator(), ds.steps_per_epoch))
  levels = np.array([audio_io.rms_db(r) for r in rows])
  np.testing.assert_allclose(levels, -20.0, atol=0.01)
  assert 0 < len(ds.val_audio) <= 4 and ds.val_audio.shape[1] == 4000
  np.testing.assert_allclose([audio_io.rms_db(v) for v in ds.val_audio], -20.0, atol=0.01)
  # Validation is fixed: rebuilding (another run, another seed) gives the same excerpts.
  np.testing.assert_array_equal(_make(c, seed=5).val_audio, ds.val_audio)
  c.random_gain_db = 6.0
  gained = np.concatenate(_take(_make(c).train_iterator(), 5))
  levels = np.array([audio_io.rms_db(r) for r in gained])
  assert np.all(np.abs(levels + 20.0) <= 6.01) and np.std(levels) > 1.0


def test_phase_inversion_flips_about_half_the_excerpts(tmp_path):
  ds = _make(_config(_tone_corpus(tmp_path), phase_inversion=False))
  plain = np.concatenate(_take(ds.train_iterator(), 10))
  c = _config(tmp_path, phase_inversion=True)
  flipped = np.concatenate(_take(_make(c).train_iterator(), 10))
  same = [np.array_equal(a, b) for a, b in zip(plain, flipped)]
  negated = [np.array_equal(-a, b) for a, b in zip(plain, flipped)]
  assert all(s or n for s, n in zip(same, negated)) and 8 <= sum(negated) <= 32


def test_shift_phase_rotates_every_phase_by_the_angle():
  x = _noise(0.1, seed=3)
  spectrum = np.fft.rfft(x.astype(np.float64))
  for angle in (0.3, -2.0, np.pi / 2):
    rotated = np.fft.rfft(data.shift_phase(x, angle).astype(np.float64))
    # Every bin but DC and Nyquist, which stay real (scaled by cos(angle)).
    np.testing.assert_allclose(rotated[1:-1], spectrum[1:-1] * np.exp(1j * angle), atol=1e-4)
    np.testing.assert_allclose(rotated[[0, -1]].real, spectrum[[0, -1]].real * np.cos(angle),
                               atol=1e-4)
  np.testing.assert_allclose(data.shift_phase(x, np.pi), -x, atol=1e-6)  # the sign flip
  np.testing.assert_allclose(data.shift_phase(x, 0.0), x, atol=1e-6)


def test_phase_shift_rotates_each_excerpt_by_its_own_uniform_angle(tmp_path):
  corpus = _noise_corpus(tmp_path)
  plain = np.concatenate(_take(_make(_config(corpus, phase_inversion=False)).train_iterator(), 6))
  c = _config(corpus, phase_inversion=False, phase_shift=True)
  shifted = np.concatenate(_take(_make(c).train_iterator(), 6))
  angles = []
  for a, b in zip(plain, shifted):
    spec_a, spec_b = np.fft.rfft(a)[1:-1], np.fft.rfft(b)[1:-1]
    angle = np.angle(np.sum(np.conj(spec_a) * spec_b))
    np.testing.assert_allclose(spec_b, spec_a * np.exp(1j * angle), atol=1e-3)
    angles.append(angle)
  # 24 draws of U[-pi, pi]: spread over the circle, none twice.
  assert np.min(angles) < -np.pi / 2 and np.max(angles) > np.pi / 2
  assert len(np.unique(np.round(angles, 4))) == len(angles)


def test_decode_cache_is_a_bounded_lru():
  cache = audio_io.DecodeCache(max_bytes=3 * 400)
  loads = []
  load = lambda key: lambda: loads.append(key) or np.zeros(100, np.float32)  # 400 bytes each
  for key in 'abcab':
    cache.get(key, load(key))
  assert loads == list('abc')  # a and b came from the cache
  cache.get('d', load('d'))  # evicts c, the least recently used
  cache.get('a', load('a'))
  cache.get('c', load('c'))
  assert loads == list('abcdc')


# ---- Bad input.


def test_bad_files_are_skipped_with_one_warning_each(tmp_path, caplog):
  root = _noise_corpus(tmp_path)
  (root / 'corrupt.wav').write_bytes(os.urandom(2000))
  (root / 'empty.flac').write_bytes(b'')
  _write(root / 'short.wav', _noise(0.05, seed=9))
  (root / 'notes.xyz').write_text('not audio')
  (root / 'transcript.txt').write_text('text sidecars are ignored quietly')
  nan = _noise(1.0, seed=11)
  nan[::7] = np.nan
  _write(root / 'nan.wav', nan, subtype='FLOAT')
  good = (root / _write(root / 'truncated.flac', _noise(2.0, seed=12)).name).read_bytes()
  (root / 'truncated.flac').write_bytes(good[:len(good) // 2])  # header fine, data cut short
  with caplog.at_level(logging.WARNING, logger='codec.data'):
    ds = _make(_config(root))
  for name, reason in [('corrupt.wav', 'corrupt'), ('empty.flac', 'empty'),
                       ('short.wav', 'too short'), ('notes.xyz', 'unsupported extension')]:
    assert f'1 {reason} ({name})' in ds.summary
    assert sum(name in r.getMessage() for r in caplog.records) == 1
  assert '4 skipped' in ds.summary and 'transcript' not in caplog.text
  # NaN samples and truncated data show only when decoded: those excerpts are replaced by others,
  # and each file is reported once.
  it = ds.train_iterator()
  with caplog.at_level(logging.WARNING, logger='codec.data'):
    rows = np.concatenate(_take(it, 2 * ds.steps_per_epoch))
  it.close()
  assert np.isfinite(rows).all()
  np.testing.assert_allclose([audio_io.rms_db(r) for r in rows], -16.0, atol=0.01)
  for name in ('nan.wav', 'truncated.flac'):
    assert any(path.endswith(name) for path in data.runtime_skips())
    assert sum(name in r.getMessage() for r in caplog.records) == 1


def test_long_recordings_in_any_format_with_bad_files_among_them(tmp_path, caplog):
  """44.1/48 kHz stereo recordings as WAV, OGG, Opus and MP3 next to broken ones: the good ones
  train (one excerpt read from each window), the broken ones are skipped, named once each."""
  formats = {e: (r, kw) for e, r, kw in _format_kwargs()}
  for i, (ext, (rate, kwargs)) in enumerate(formats.items()):
    _write_blocks(tmp_path / 'sessions' / f'take{i}.{ext}', _stereo_noise(3.0, rate, seed=i), rate,
                  **kwargs)
  (tmp_path / 'sessions' / 'junk.ogg').write_bytes(os.urandom(3000))
  (tmp_path / 'sessions' / 'junk.mp3').write_bytes(os.urandom(3000))
  if 'mp3' in formats:  # a cut mp3 keeps its header's length: only reads show the damage
    good = (tmp_path / 'sessions' / f'take{list(formats).index("mp3")}.mp3').read_bytes()
    (tmp_path / 'sessions' / 'cut.mp3').write_bytes(good[:len(good) // 3])
  with caplog.at_level(logging.WARNING, logger='codec.data'):
    ds = _make(_config(tmp_path, salient_excerpts=True))
  assert '2 corrupt (sessions/junk.mp3, sessions/junk.ogg)' in ds.summary
  it = ds.train_iterator()
  with caplog.at_level(logging.WARNING, logger='codec.data'):
    rows = np.concatenate(_take(it, 2 * ds.steps_per_epoch))
  it.close()
  assert np.isfinite(rows).all()
  np.testing.assert_allclose([audio_io.rms_db(r) for r in rows], -16.0, atol=0.01)
  if 'mp3' in formats:
    assert any(p.endswith('cut.mp3') and 'truncated' in r for p, r in data.runtime_skips().items())
    assert sum('cut.mp3' in r.getMessage() for r in caplog.records) == 1


def test_non_finite_validation_file_is_skipped_and_counted(tmp_path):
  train = _noise_corpus(tmp_path / 'train', n_files=3)
  _write(tmp_path / 'val' / 'good.flac', _noise(0.6, seed=20))
  _write(tmp_path / 'val' / 'inf.wav', np.full(RATE, np.inf, np.float32), subtype='FLOAT')
  ds = _make(_config(train, val_dir=str(tmp_path / 'val')))
  assert '1 non-finite samples (inf.wav)' in ds.summary
  assert len(ds.val_audio) == 2 and np.isfinite(ds.val_audio).all()  # 0.6 s: two 0.25 s excerpts


@pytest.mark.parametrize('make_root, message', [
    (lambda tmp: tmp / 'missing', 'does not exist'),
    (lambda tmp: tmp, 'no audio files'),
    (lambda tmp: (tmp / 'a.txt').write_text('x') and tmp, 'no audio files'),
])
def test_missing_or_empty_data_dir_is_a_clear_error(tmp_path, make_root, message):
  root = make_root(tmp_path)
  with pytest.raises(ValueError, match=message) as error:
    _make(_config(root))
  assert str(root) in str(error.value) and 'data.data_dir' in str(error.value)


def test_all_files_unusable_is_a_clear_error(tmp_path):
  (tmp_path / 'x.wav').write_bytes(b'junk')
  with pytest.raises(ValueError, match='no usable training audio.*1 corrupt'):
    _make(_config(tmp_path))


# ---- Header index cache.


def test_index_cache_is_reused_and_refreshed(tmp_path, monkeypatch):
  root = _noise_corpus(tmp_path / 'corpus')
  run = tmp_path / 'run'
  probed = []
  real_probe = audio_io.probe
  monkeypatch.setattr(audio_io, 'probe', lambda path: probed.append(path) or real_probe(path))

  def build() -> int:
    probed.clear()
    _make(_config(root), cache_dir=str(run))
    return len(probed)

  assert build() == 6
  assert build() == 0  # nothing changed: not one header read
  _write(root / 'voice0' / 'utt0.flac', _noise(0.9, seed=99))  # changed size
  stat = os.stat(root / 'voice1' / 'utt1.flac')
  os.utime(root / 'voice1' / 'utt1.flac', ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  _write(root / 'added.wav', _noise(0.5, seed=100))
  assert build() == 3
  (root / 'voice1' / 'utt3.flac').unlink()
  assert build() == 0
  index = json.loads(audio_io.index_path(run, root).read_text())['files']
  assert 'voice1/utt3.flac' not in index and 'added.wav' in index
  assert index['voice0/utt0.flac']['frames'] == int(0.9 * RATE)
