"""Audio files for the data pipeline and the encode/evaluate tools.

Finding, probing, decoding, mixing to mono, resampling and loudness of audio files; the header index
cached in the run directory; vetting a data folder (which files are usable, which are skipped and
why). Only numpy and soundfile are imported at start (soxr lazily, to resample, and librosa as
the mp3 fallback), so grain worker processes start fast. Shapes use dimension letters: T samples,
C channels.
"""
import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import threading
from typing import Any, Callable
import logging
import warnings

import numpy as np
import soundfile as sf

# What soundfile (libsndfile >= 1.1 reads mp3 and opus) decodes. Anything else found under a data
# folder is skipped with a warning rather than guessed at.
AUDIO_EXTENSIONS = frozenset({
    '.wav', '.wave', '.flac', '.ogg', '.oga', '.opus', '.mp3', '.aif', '.aiff', '.aifc', '.au',
    '.caf', '.w64',
})
# Extensions for which librosa (audioread/ffmpeg) is tried when soundfile cannot read the file.
_LIBROSA_FALLBACK_EXTENSIONS = frozenset({'.mp3'})
_LOG = logging.getLogger('codec.data')  # the pipeline's logger: one place to filter
INDEX_VERSION = 1  # bump when the index rows change meaning
# Beyond this many skipped files, the rest are reported in one aggregate warning.
MAX_NAMED_WARNINGS = 20
# Sidecar text files (transcripts, metadata) that corpora ship next to audio: ignored, no warning.
TEXT_EXTENSIONS = frozenset(
    {'.txt', '.tsv', '.csv', '.json', '.jsonl', '.md', '.lab', '.textgrid', '.yaml', '.yml'})
# rms_db of digital silence; a finite floor keeps comparisons and printing simple.
SILENCE_FLOOR_DB = -200.0


class AudioError(ValueError):
  """A file that cannot be used; `reason` is a short category for summaries ('corrupt', 'empty')."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f'{reason}: {detail}')
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass(frozen=True)
class AudioInfo:
  frames: int  # per channel, at the native rate
  sample_rate: int
  channels: int
  seekable: bool  # soundfile reads it (partial reads work); False: whole-file librosa decode only


def is_hidden(name: str) -> bool:
  # macOS writes '._x.wav' resource forks next to real files: they look like audio but are not.
  return name.startswith('.')


def scan_files(root: pathlib.Path) -> tuple[list[str], list[str]]:
  """Walks `root` recursively; returns (audio, unsupported) relative POSIX paths, each sorted.

  Hidden files and folders (dot-names) are ignored silently.
  """
  audio, unsupported = [], []
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if not is_hidden(d))
    for name in files:
      if is_hidden(name):
        continue
      rel = pathlib.Path(folder, name).relative_to(root).as_posix()
      is_audio = pathlib.PurePath(name).suffix.lower() in AUDIO_EXTENSIONS
      (audio if is_audio else unsupported).append(rel)
  return sorted(audio), sorted(unsupported)


def find_audio_files(root: str | os.PathLike) -> list[pathlib.Path]:
  """Every audio file under `root` (recursive, sorted, hidden files ignored)."""
  root = pathlib.Path(root)
  return [root / rel for rel in scan_files(root)[0]]


def _describe(error: Exception) -> str:
  """The error's message, or its type when it has none (audioread's NoBackendError)."""
  return str(error).strip() or type(error).__name__


def _librosa_load(path: str) -> tuple[np.ndarray, int]:
  """Native-rate decode through librosa's audioread fallback: (f32[T, C], rate)."""
  import librosa  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # librosa warns that soundfile failed: we know, we asked.
    audio, rate = librosa.load(path, sr=None, mono=False, dtype=np.float32)
  return np.atleast_2d(audio).T, int(rate)


def probe(path: str | os.PathLike) -> AudioInfo:
  """Reads the header only (no samples). Raises AudioError for empty or unreadable files."""
  path = os.fspath(path)
  if os.path.getsize(path) == 0:
    raise AudioError('empty', '0 bytes')
  try:
    info = sf.info(path)
    result = AudioInfo(int(info.frames), int(info.samplerate), int(info.channels), True)
  except Exception as sf_error:  # pylint: disable=broad-except
    if pathlib.PurePath(path).suffix.lower() not in _LIBROSA_FALLBACK_EXTENSIONS:
      raise AudioError('corrupt', str(sf_error).strip() or type(sf_error).__name__) from None
    try:
      audio, rate = _librosa_load(path)
    except Exception as error:  # pylint: disable=broad-except
      raise AudioError('corrupt', f'{sf_error}; librosa: {_describe(error)}') from None
    result = AudioInfo(audio.shape[0], rate, audio.shape[1], False)
  if result.frames <= 0 or result.channels <= 0 or result.sample_rate <= 0:
    raise AudioError('empty', 'no samples')
  return result


def decode(path: str | os.PathLike) -> tuple[np.ndarray, int]:
  """Whole file at its native rate: (f32[T, C], rate). Raises AudioError if unreadable."""
  path = os.fspath(path)
  try:
    audio, rate = sf.read(path, dtype='float32', always_2d=True)
    return audio, int(rate)
  except Exception as sf_error:  # pylint: disable=broad-except
    if pathlib.PurePath(path).suffix.lower() not in _LIBROSA_FALLBACK_EXTENSIONS:
      raise AudioError('corrupt', str(sf_error).strip() or type(sf_error).__name__) from None
    try:
      return _librosa_load(path)
    except Exception as error:  # pylint: disable=broad-except
      raise AudioError('corrupt', f'{sf_error}; librosa: {_describe(error)}') from None


# Frames a read may fall short of the header's count before the file counts as truncated: an mp3
# frame and a half (a cut mp3 keeps its header's length; its reads then return nothing).
TRUNCATION_FRAMES = 2048


# Context (in samples at the lower of the two rates) read on each side of an excerpt before
# resampling it. soxr's HQ filter spans fewer: at 128 the excerpt already matches resampling the
# whole file to 1.3e-7 (8 to 96 kHz, measured), so 256 leaves a factor 2 of margin.
RESAMPLE_CONTEXT = 256


def read_frames(path: str | os.PathLike, start: int, stop: int,
                files: 'OpenFiles | None' = None) -> np.ndarray:
  """Mono frames [start, stop) at the native rate without decoding the rest: f32[stop - start].

  files: a pool of open handles to reuse (opening an mp3 scans the whole file). Zero-padded when
  the file ends a little early (decoders differ by a frame or two from the header's count); an
  AudioError('truncated') when more than TRUNCATION_FRAMES the header promises are missing.
  """
  path = os.fspath(path)
  pool = files if files is not None else OpenFiles(0)
  handle = pool.take(path)
  try:
    handle.seek(start)
    audio = handle.read(stop - start, dtype='float32', always_2d=True)
    promised = min(stop, handle.frames) - start
  except Exception as error:  # pylint: disable=broad-except
    handle.close()  # its decoder state is unknown after a failure: never reused
    raise AudioError('corrupt', str(error).strip() or type(error).__name__) from None
  pool.give_back(path, handle)
  if promised - len(audio) > TRUNCATION_FRAMES:
    raise AudioError('truncated', f'{len(audio)} of the {promised} frames the header promises '
                     f'from frame {start} could be read')
  return fix_length(to_mono(audio), stop - start)


def resample_window(start: int, stop: int, frames: int, orig_rate: int,
                    rate: int) -> tuple[int, int, int]:
  """The native frames to read for samples [start, stop) of the whole file resampled to `rate`.

  Returns (first, last, offset): resampling native frames [first, last) gives the whole file's
  resampled samples from `offset` on. `first` is a multiple of orig_rate / gcd, the native frame
  that falls exactly on a sample at `rate`, so both sample grids coincide.
  """
  g = math.gcd(orig_rate, rate)
  step_in, step_out = orig_rate // g, rate // g  # step_in native frames = step_out samples
  context = -(-RESAMPLE_CONTEXT * orig_rate // min(orig_rate, rate))
  k = max(0, (start * step_in - context * step_out) // (step_in * step_out))
  last = min(frames, -(-stop * step_in // step_out) + context)
  return k * step_in, max(last, k * step_in), k * step_out


def read_resampled(path: str | os.PathLike, start: int, stop: int, frames: int, orig_rate: int,
                   rate: int, files: 'OpenFiles | None' = None) -> np.ndarray:
  """Samples [start, stop) of the file mixed to mono and resampled to `rate`, reading only a
  window around them: f32[stop - start], equal to decode_mono(path, rate)[start:stop] up to the
  filter's truncation (tests: 1e-6). frames, orig_rate: the file's header facts.
  """
  if orig_rate == rate:
    return read_frames(path, start, stop, files)
  first, last, offset = resample_window(start, stop, frames, orig_rate, rate)
  audio = resample(read_frames(path, first, last, files), orig_rate, rate)
  return fix_length(audio[start - offset:stop - offset], stop - start)


class OpenFiles:
  """Per-process pool of open soundfile handles, at most `max_open` idle ones (LRU); thread-safe.

  A handle is taken out while in use, so two threads never share one. Pickles as an empty pool:
  each grain worker process opens its own.
  """

  def __init__(self, max_open: int):
    self.max_open = max_open
    # Idle handles by serial number, least recently returned first, and each path's serials
    # (oldest first), so that taking one is a lookup rather than a scan of the pool.
    self._idle: collections.OrderedDict[int, tuple[str, sf.SoundFile]] = collections.OrderedDict()
    self._serials: dict[str, list[int]] = {}
    self._lock = threading.Lock()
    self._serial = 0

  def __getstate__(self) -> dict[str, int]:
    return {'max_open': self.max_open}

  def __setstate__(self, state: dict[str, int]) -> None:
    self.__init__(state['max_open'])

  def take(self, path: str) -> sf.SoundFile:
    """An idle handle of `path`, else a newly opened one (AudioError if it cannot be opened)."""
    with self._lock:
      serials = self._serials.get(path)
      if serials:
        return self._idle.pop(self._take_serial(path, serials, -1))[1]
    try:
      return sf.SoundFile(path)
    except Exception as error:  # pylint: disable=broad-except
      raise AudioError('corrupt', str(error).strip() or type(error).__name__) from None

  def give_back(self, path: str, handle: sf.SoundFile) -> None:
    """Keeps `handle` for the next read of `path`; closes the least recently used past max_open."""
    closing = []
    with self._lock:
      self._serial += 1
      self._idle[self._serial] = (path, handle)
      self._serials.setdefault(path, []).append(self._serial)
      while len(self._idle) > self.max_open:
        _, (old_path, old) = self._idle.popitem(last=False)
        self._take_serial(old_path, self._serials[old_path], 0)  # the least recent is its oldest
        closing.append(old)
    for old in closing:
      old.close()

  def _take_serial(self, path: str, serials: list[int], index: int) -> int:
    """Removes and returns serials[index] of `path` (the lock held)."""
    serial = serials.pop(index)
    if not serials:
      del self._serials[path]
    return serial

  def close(self) -> None:
    with self._lock:
      handles = [handle for _, handle in self._idle.values()]
      self._idle, self._serials = collections.OrderedDict(), {}
    for handle in handles:
      handle.close()


def to_mono(audio: np.ndarray) -> np.ndarray:
  """f32[T, C] -> f32[T], the mean of the channels (what librosa does).

  As a product with weights 1/C: numpy's mean over a short last axis runs ~35x slower (286 us
  against 8 us for a 0.38-s stereo window at 44.1 kHz), and for stereo the result is identical.
  """
  channels = audio.shape[1]
  if channels == 1:
    return audio[:, 0]
  return audio @ np.full(channels, 1.0 / channels, audio.dtype)


def resampled_length(frames: int, orig_rate: int, rate: int) -> int:
  """Samples after resampling: ceil(frames * rate / orig_rate), as librosa.resample returns."""
  return -(-frames * rate // orig_rate)


def fix_length(audio: np.ndarray, length: int) -> np.ndarray:
  """f32[T] -> f32[length]: trimmed, or zero-padded at the end."""
  if audio.shape[0] >= length:
    return audio[:length]
  return np.pad(audio, (0, length - audio.shape[0]))


def resample(audio: np.ndarray, orig_rate: int, rate: int) -> np.ndarray:
  """f32[T] -> f32[ceil(T * rate / orig_rate)] with soxr's HQ filter (librosa's 'soxr_hq').

  Output sample n lies at input time n / rate: the filter's delay is compensated.
  """
  if orig_rate == rate:
    return audio
  import soxr  # pylint: disable=g-import-not-at-top
  out = soxr.resample(audio, orig_rate, rate, quality='HQ') if len(audio) else audio
  length = resampled_length(len(audio), orig_rate, rate)
  return fix_length(out.astype(np.float32, copy=False), length)


def decode_mono(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
  """Whole file, mono, at `sample_rate`: f32[T]. Non-finite samples are returned as they are."""
  audio, rate = decode(path)
  return resample(to_mono(audio), rate, sample_rate)


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
  """Whole file, mixed to mono and resampled to `sample_rate`: f32[T].

  Raises AudioError for unreadable files and files holding NaN or Inf samples.
  """
  audio = decode_mono(path, sample_rate)
  if audio.size == 0:
    raise AudioError('empty', 'no samples')
  if not np.isfinite(audio).all():
    raise AudioError('non-finite samples', 'NaN or Inf samples')
  return audio


def rms_db(audio: np.ndarray) -> float:
  """Root-mean-square level in dB relative to full scale (a full-scale sine is -3 dB)."""
  # A float64 dot product: a third of np.mean(np.square(...))'s time on a 0.38-s excerpt, which
  # counts where a corpus of tiny files costs a few hundred microseconds of Python per excerpt.
  flat = np.ravel(audio).astype(np.float64)
  rms = math.sqrt(float(np.dot(flat, flat)) / flat.size) if flat.size else 0.0
  return 20.0 * math.log10(rms) if rms > 0.0 else SILENCE_FLOOR_DB


def normalise_loudness(audio: np.ndarray, target_db: float,
                       level: float | None = None) -> np.ndarray:
  """f32[T] scaled so that rms_db == target_db, then scaled down if a peak would exceed 1.

  level: rms_db(audio) when the caller has measured it already.
  DAC meters loudness in LUFS (K-weighted, gated, pyloudnorm); plain RMS dBFS is a close, cheap
  stand-in for speech. Scaling down (instead of clipping) keeps the waveform undistorted: such
  excerpts end up quieter than the target by their excess crest factor.
  """
  level = rms_db(audio) if level is None else level
  if level <= SILENCE_FLOOR_DB:
    return audio
  out = audio * np.float32(10.0 ** ((target_db - level) / 20.0))
  peak = float(np.max(np.abs(out)))
  if peak > 1.0:
    out = out / np.float32(peak)
  return out.astype(np.float32, copy=False)


# -------------------------------------------------------------------------------------------------
# The header index cached in the run directory, and the per-process decode cache.


def _probe_entry(path: pathlib.Path, stat: os.stat_result) -> dict[str, Any]:
  """One index row: header facts, or the reason the file is unusable."""
  entry = {'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns}
  try:
    info = probe(path)
  except AudioError as error:
    return entry | {'reason': error.reason, 'detail': error.detail}
  except OSError as error:
    return entry | {'reason': 'unreadable', 'detail': str(error)}
  return entry | dataclasses.asdict(info)


def _read_index(path: pathlib.Path, root: pathlib.Path) -> dict[str, dict[str, Any]]:
  try:
    data = json.loads(path.read_text())
  except (OSError, ValueError):
    return {}
  if data.get('version') != INDEX_VERSION or data.get('root') != str(root):
    return {}
  return data['files']


def _write_index(path: pathlib.Path, root: pathlib.Path, files: dict[str, dict[str, Any]]) -> None:
  """Atomic (write + rename), so a crash or a second reader never sees half a file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
  tmp.write_text(json.dumps({'version': INDEX_VERSION, 'root': str(root), 'files': files}))
  os.replace(tmp, path)


def index_path(cache_dir: str | os.PathLike, root: pathlib.Path) -> pathlib.Path:
  """Where the header index of `root` lives: one JSON file per data folder."""
  digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
  return pathlib.Path(cache_dir) / f'data_index_{digest}.json'


def index_files(root: pathlib.Path, rels: list[str], cache_dir: str | os.PathLike | None,
                write: bool) -> tuple[dict[str, dict[str, Any]], int]:
  """Header facts of `rels` (relative to root), re-probing only new files and changed ones (size or
  mtime); files no longer present drop out of the index. write: update the JSON in cache_dir.

  Returns (relative path -> row, number of files probed). A row holds size, mtime_ns and either the
  AudioInfo fields or `reason` and `detail` (unusable files are remembered too, not re-probed).
  """
  path = index_path(cache_dir, root) if cache_dir else None
  cached = _read_index(path, root) if path else {}
  entries, stale = {}, []
  for rel in rels:
    try:
      stat = os.stat(root / rel)
    except OSError as error:  # removed since the scan, or a dangling link
      entries[rel] = {'size': -1, 'mtime_ns': -1, 'reason': 'unreadable', 'detail': str(error)}
      continue
    old = cached.get(rel)
    if old and old['size'] == stat.st_size and old['mtime_ns'] == stat.st_mtime_ns:
      entries[rel] = old
    else:
      stale.append((rel, stat))
  # Header reads are I/O-bound and soundfile releases the GIL: threads overlap them.
  with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
    rows = pool.map(lambda item: _probe_entry(root / item[0], item[1]), stale)
    entries.update((rel, row) for (rel, _), row in zip(stale, rows))
  if path and write and (stale or len(entries) != len(cached)):
    _write_index(path, root, entries)
  return entries, len(stale)


class DecodeCache:
  """Per-process LRU of whole decoded, resampled files, bounded in bytes; thread-safe.

  Pickles as an empty cache, so each grain worker process starts its own.
  """

  def __init__(self, max_bytes: int):
    self.max_bytes = max_bytes
    self._items: collections.OrderedDict[str, np.ndarray | AudioError] = collections.OrderedDict()
    self._bytes = 0
    self._lock = threading.Lock()

  def __getstate__(self) -> dict[str, int]:
    return {'max_bytes': self.max_bytes}

  def __setstate__(self, state: dict[str, int]) -> None:
    self.__init__(state['max_bytes'])

  def get(self, key: str, load: Callable[[], np.ndarray]) -> np.ndarray:
    """The cached value of `key`, else load() (an AudioError it raises is cached and re-raised)."""
    with self._lock:
      value = self._items.get(key)
      if value is not None:
        self._items.move_to_end(key)
    if value is None:
      try:
        value = load()
      except AudioError as error:
        value = error  # deterministic: the file fails the same way every time
      self._put(key, value)
    if isinstance(value, AudioError):
      raise value
    return value

  def _put(self, key: str, value: np.ndarray | AudioError) -> None:
    size = value.nbytes if isinstance(value, np.ndarray) else 0
    if size > self.max_bytes:
      return
    with self._lock:
      if key in self._items:
        return
      self._items[key] = value
      self._bytes += size
      while self._bytes > self.max_bytes:
        _, old = self._items.popitem(last=False)
        self._bytes -= old.nbytes if isinstance(old, np.ndarray) else 0


# -------------------------------------------------------------------------------------------------
# Vetting a data folder: which files are usable, which are skipped and why.


@dataclasses.dataclass(frozen=True)
class Skip:
  rel: str
  reason: str  # short category, grouped in the summary: 'corrupt', 'empty', 'too short', ...
  detail: str


@dataclasses.dataclass(frozen=True)
class Corpus:
  root: pathlib.Path
  usable: list[str]  # relative paths, sorted
  entries: dict[str, dict[str, Any]]  # relative path -> index entry
  skips: list[Skip]
  n_found: int  # audio-extension files plus unsupported ones (text sidecars not counted)
  n_text: int
  n_probed: int  # headers read this start-up (the others came from the cache)


def model_length(entry: dict[str, Any], sample_rate: int) -> int:
  """Samples of an index row's file once resampled to sample_rate."""
  return resampled_length(entry['frames'], entry['sample_rate'], sample_rate)


def index_corpus(root: pathlib.Path, field: str, cache_dir: str | os.PathLike | None,
                 sample_rate: int, min_length: int, write: bool) -> Corpus:
  """Finds, indexes and vets every file under `root`.

  field: the config entry naming root, for error messages. min_length: samples at sample_rate
  below which a file is 'too short'. Raises ValueError if root holds no audio file at all.
  """
  audio, other = scan_files(root)
  text = [rel for rel in other if pathlib.PurePath(rel).suffix.lower() in TEXT_EXTENSIONS]
  unsupported = sorted(set(other) - set(text))
  if not audio:
    found = f'only {len(other)} other files' if other else 'no files'
    raise ValueError(
        f'{field}: {root} holds no audio files ({found}; looked for '
        f'{", ".join(sorted(AUDIO_EXTENSIONS))}): point --config.{field} at a folder of audio.')
  entries, n_probed = index_files(root, audio, cache_dir, write)
  skips = [Skip(rel, 'unsupported extension', pathlib.PurePath(rel).suffix or '(none)')
           for rel in unsupported]
  usable = []
  for rel in audio:
    entry = entries[rel]
    if 'reason' in entry:
      skips.append(Skip(rel, entry['reason'], entry['detail']))
    elif model_length(entry, sample_rate) < min_length:
      seconds = entry['frames'] / entry['sample_rate']
      skips.append(Skip(rel, 'too short', f'{seconds:.3f} s < one excerpt'))
    else:
      usable.append(rel)
  return Corpus(root, usable, entries, skips, len(audio) + len(unsupported), len(text), n_probed)


def warn_skips(skips: list[Skip], root: pathlib.Path) -> None:
  """One warning per file, naming it and the reason; past MAX_NAMED_WARNINGS, one for the rest."""
  for skip in skips[:MAX_NAMED_WARNINGS]:
    _LOG.warning('skipping %s: %s (%s)', root / skip.rel, skip.reason, skip.detail)
  if len(skips) > MAX_NAMED_WARNINGS:
    _LOG.warning('skipping %d more files under %s; the summary counts them by reason',
                 len(skips) - MAX_NAMED_WARNINGS, root)


def describe_skips(skips: list[Skip]) -> str:
  """'2 skipped: 1 corrupt (x.wav), 1 too short (y.flac)'."""
  if not skips:
    return '0 skipped'
  by_reason = collections.defaultdict(list)
  for skip in skips:
    by_reason[skip.reason].append(skip.rel)
  parts = []
  for reason, rels in sorted(by_reason.items(), key=lambda item: -len(item[1])):
    names = ', '.join(rels[:3]) + (', ...' if len(rels) > 3 else '')
    parts.append(f'{len(rels)} {reason} ({names})')
  return f'{len(skips)} skipped: ' + ', '.join(parts)
