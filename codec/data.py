"""Training and validation audio: a grain pipeline over excerpts of a folder of audio files.

Start-up (`make_datasets`): find the audio under `data.data_dir` (recursively), probe each file's
header (cached as JSON in the run directory, so a restart over 100k files only stats them), skip bad
input with one warning per file, split train/validation by a hash of the relative path, and cut the
fixed validation excerpts.

Training stream: epoch e covers every training file once. File f, of L_f samples at the model
rate, gives n_f = floor(L_f / E) non-overlapping excerpts of E samples starting at o_fe + k * E
(k < n_f), with a random offset o_fe in [0, L_f - n_f * E] per (seed, epoch, file). The count per
file is fixed, so steps_per_epoch = sum(n_f) // global_batch is known up front (the remainder,
less than one batch, is dropped and differs every epoch), and an epoch misses less than one
excerpt's worth of each file. With `data.salient_excerpts` (DAC's salient excerpts) the count per
file is the same, but excerpt x of epoch e starts at the first of `data.salient_tries` uniform
offsets in [0, L_f - E], drawn from (seed, e, x), that is at least `data.salient_db` loud (else at
the last one): long recordings with pauses train on sound. The excerpt order is grain's index
shuffle, reseeded per epoch.
Host p of P reads only rows [p * B/P, (p + 1) * B/P) of every global batch. Loudness normalisation
and the augmentations are seeded by (seed, epoch, position in the epoch), so every batch is a pure
function of its index: the iterator's state is the number of batches delivered, and a resumed run
sees identical batches.

An excerpt costs one seek and a window of the file at its own rate, resampled alone with enough
context on each side to equal resampling the whole file (audio_io.read_resampled); each worker
keeps its recently used files open (`data.open_files`), since opening an mp3 scans all of it.

Excerpts that are silent (below `data.silence_db`) or hold NaN/Inf samples, and files that turn out
unreadable at decode time, are replaced by the next excerpt of the epoch's order: deterministic, and
the batch shape and step count never change.

Shapes use dimension letters: B batch, T samples, F files, N excerpts.
"""
import dataclasses
import functools
import hashlib
import logging
import os
import pathlib
import threading
from typing import Any

from absl import flags
import grain
import ml_collections
import numpy as np

from codec import audio_io
from codec.audio_io import find_audio_files, load_audio  # pylint: disable=unused-import

DEMO_CORPUS_DIR = pathlib.Path(__file__).resolve().parent.parent / 'data' / 'telugu_demo'

_LOG = logging.getLogger('codec.data')
# How many later excerpts of the epoch's order are tried in place of a silent or broken one.
_MAX_REPLACEMENTS = 16
# A worker process hands its batches over this many bytes at a time. grain's hand-over between
# processes costs about a millisecond per element whatever its size, as long as reading a batch of
# 12 x 0.38 s takes: one batch per element made one worker slower than none (docs/performance.md).
_CHUNK_BYTES = 8 * 2**20
_MAX_CHUNK = 32  # batches: tiny test batches would otherwise wait for thousands to be read
# Independent random streams drawn from the same (seed, epoch, ...) key.
_OFFSET_STREAM, _AUGMENT_STREAM, _SHUFFLE_STREAM, _SALIENT_STREAM = 1, 2, 3, 4


# -------------------------------------------------------------------------------------------------
# The data folder and the train/validation split.


def _sha1(text: str) -> str:
  return hashlib.sha1(text.encode('utf-8')).hexdigest()


def _resolve_dir(path: str, field: str) -> pathlib.Path:
  """The folder `path` (field names the config entry) or a ValueError saying what to do."""
  root = pathlib.Path(path).expanduser().resolve() if path else DEMO_CORPUS_DIR
  if not root.is_dir():
    problem = 'is not a directory' if root.exists() else 'does not exist'
    hint = ('generate the demo corpus: python tools/make_demo_corpus.py --out data/telugu_demo'
            if root == DEMO_CORPUS_DIR else f'point --config.{field} at a folder of audio files')
    raise ValueError(f'{field}: {root} {problem}; {hint}.')
  return root


def split_fraction(rel: str) -> float:
  """A uniform number in [0, 1) fixed by the relative path alone: adding files moves no other."""
  return int(_sha1(rel)[:15], 16) / 16.0**15


def split_train_val(rels: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
  """(train, val): val holds files with split_fraction < val_fraction.

  Small corpora: if that is none while val_fraction > 0, the file with the smallest hash validates;
  if it is all of them, the one with the largest hash trains. Order of `rels` is kept.
  """
  val = {rel for rel in rels if split_fraction(rel) < val_fraction}
  if not val and val_fraction > 0 and len(rels) > 1:
    val = {min(rels, key=split_fraction)}
  if rels and len(val) == len(rels):
    val.discard(max(rels, key=split_fraction))
  return [rel for rel in rels if rel not in val], [rel for rel in rels if rel in val]


# -------------------------------------------------------------------------------------------------
# Excerpt plan, per-process decode cache and the batch loader that runs inside grain.


@dataclasses.dataclass(frozen=True)
class _Files:
  """The training files, as arrays indexed by file number f."""
  paths: tuple[str, ...]  # absolute
  native_rates: np.ndarray  # i64[F]
  native_frames: np.ndarray  # i64[F], per channel at the native rate (the header's count)
  seekable: np.ndarray  # bool[F]: soundfile reads it, so partial reads work
  lengths: np.ndarray  # i64[F], samples at the model rate


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Which file and sample each excerpt of an epoch comes from (see the module docstring)."""
  lengths: np.ndarray  # i64[F], samples at the model rate
  excerpt_length: int  # E
  seed: int
  counts: np.ndarray  # i64[F]: n_f = floor(L_f / E)
  ends: np.ndarray  # i64[F]: the excerpt numbers of file f are [ends[f] - n_f, ends[f])
  salient_tries: int  # 0: tiling; else random offsets, this many candidates per excerpt

  @classmethod
  def create(cls, lengths: np.ndarray, excerpt_length: int, seed: int,
             salient_tries: int = 0) -> '_Plan':
    counts = lengths // excerpt_length
    return cls(lengths, excerpt_length, seed, counts, np.cumsum(counts), salient_tries)

  @property
  def total(self) -> int:
    return int(self.ends[-1])

  def offset(self, epoch: int, file: int) -> int:
    slack = int(self.lengths[file] - self.counts[file] * self.excerpt_length)
    rng = np.random.default_rng((self.seed, epoch, file, _OFFSET_STREAM))
    return int(rng.integers(0, slack + 1))

  def file(self, excerpt: int) -> int:
    """Excerpt number in [0, total) -> the file it comes from."""
    return int(np.searchsorted(self.ends, excerpt, side='right'))

  def locate(self, epoch: int, excerpt: int) -> tuple[int, int]:
    """Excerpt number in [0, total) -> (file, first sample at the model rate), when tiling."""
    file = self.file(excerpt)
    k = excerpt - int(self.ends[file] - self.counts[file])
    return file, self.offset(epoch, file) + k * self.excerpt_length

  def starts(self, epoch: int, excerpt: int) -> tuple[int, list[int]]:
    """(file, candidate first samples in the order to try them): one when tiling; else
    salient_tries uniform offsets in [0, L_f - E], drawn from (seed, epoch, excerpt) alone."""
    if not self.salient_tries:
      file, start = self.locate(epoch, excerpt)
      return file, [start]
    file = self.file(excerpt)
    rng = np.random.default_rng((self.seed, epoch, excerpt, _SALIENT_STREAM))
    high = int(self.lengths[file]) - self.excerpt_length + 1
    return file, rng.integers(0, high, size=self.salient_tries).tolist()


@dataclasses.dataclass(frozen=True)
class _Levels:
  """Loudness and augmentation settings (from `data`)."""
  loudness_db: float
  random_gain_db: float
  phase_inversion: bool
  phase_shift: bool
  silence_db: float
  salient_db: float  # a salient candidate at least this loud is taken (unused when tiling)


_RUNTIME_SKIPS: dict[str, str] = {}
_RUNTIME_LOCK = threading.Lock()


def runtime_skips() -> dict[str, str]:
  """Files this process found bad while training (path -> reason); each worker keeps its own."""
  with _RUNTIME_LOCK:
    return dict(_RUNTIME_SKIPS)


def _note_runtime_skip(path: str, reason: str) -> None:
  """Warns once per file and process."""
  with _RUNTIME_LOCK:
    if path in _RUNTIME_SKIPS:
      return
    _RUNTIME_SKIPS[path] = reason
  _LOG.warning('skipping excerpts of %s: %s (found while decoding)', path, reason)


def shift_phase(audio: np.ndarray, angle: float) -> np.ndarray:
  """f32[T] -> f32[T]: every phase of the excerpt's spectrum rotated by `angle` (radians).

  DAC trains on audiotools' ShiftPhase (conf/base.yml's last transform): one uniform angle in
  [-pi, pi] added to every STFT phase, so its codec learns that a phase rotation changes the
  waveform, not the sound (the magnitudes, all the mel loss sees, stay); angle pi is the sign
  flip. Here the excerpt's whole spectrum (one FFT) is rotated rather than each STFT frame's,
  which leaves no frame seams; the DC and Nyquist bins, real in a real signal, scale by
  cos(angle). The result is cos(angle) * x - sin(angle) * H(x), H the (circular) Hilbert transform.
  """
  rotated = np.fft.rfft(audio.astype(np.float64)) * np.exp(1j * angle)
  return np.fft.irfft(rotated, n=audio.shape[-1]).astype(np.float32)


def augment(audio: np.ndarray, level: float, levels: _Levels,
            rng: np.random.Generator) -> np.ndarray:
  """f32[T] -> f32[T]: loudness (now `level` dB) to loudness_db + U(+-random_gain_db), then maybe
  a uniform phase rotation, then maybe a sign flip."""
  target = levels.loudness_db
  if levels.random_gain_db > 0:
    target += rng.uniform(-levels.random_gain_db, levels.random_gain_db)
  out = audio_io.normalise_loudness(audio, target, level)
  if levels.phase_shift:
    out = shift_phase(out, rng.uniform(-np.pi, np.pi))
  if levels.phase_inversion and rng.random() < 0.5:
    out = -out
  return out


class _BatchLoader:
  """grain map_with_index transform: (batch n, excerpt numbers i64[B_local]) -> f32[B_local, T].

  Batch n is global batch s = n % steps of epoch e = n // steps; its row r is excerpt position
  s * B + p * B_local + r of the epoch's order, which seeds the augmentation.
  """

  def __init__(self, files: _Files, plan: _Plan, order: grain.MapDataset, levels: _Levels, *,
               sample_rate: int, steps_per_epoch: int, global_batch: int, process_index: int,
               cache_bytes: int, open_files: int):
    self.files, self.plan, self.order, self.levels = files, plan, order, levels
    self.sample_rate = sample_rate
    self.steps_per_epoch = steps_per_epoch
    self.global_batch = global_batch
    self.process_index = process_index
    self.cache = audio_io.DecodeCache(cache_bytes)  # whole files, for those only librosa reads
    self.open_files = audio_io.OpenFiles(open_files)

  def __call__(self, batch: int, excerpts: np.ndarray) -> np.ndarray:
    epoch, step = divmod(int(batch), self.steps_per_epoch)
    first = step * self.global_batch + self.process_index * len(excerpts)
    rows = [self.excerpt(epoch, first + r, int(x)) for r, x in enumerate(excerpts)]
    return np.stack(rows)

  def excerpt(self, epoch: int, position: int, excerpt: int) -> np.ndarray:
    """f32[E]: excerpt `excerpt`, or if it is silent or broken the next usable one of the order."""
    total = self.plan.total
    for attempt in range(_MAX_REPLACEMENTS):
      if attempt:
        excerpt = int(self.order[epoch * total + (position + attempt) % total])
      audio, level = self.read(epoch, excerpt)
      if audio is not None and level >= self.levels.silence_db:
        rng = np.random.default_rng((self.plan.seed, epoch, position, _AUGMENT_STREAM))
        return augment(audio, level, self.levels, rng)
    return np.zeros(self.plan.excerpt_length, np.float32)  # a corpus of silence: nothing better

  def read(self, epoch: int, excerpt: int) -> tuple[np.ndarray | None, float]:
    """(f32[E] raw samples, their rms_db), or (None, silence) if the file or these samples are
    unusable. Each excerpt's loudness is measured once, here: on a corpus of tiny files the
    per-excerpt Python is the reading's cost.

    Salient excerpts: the first candidate at least salient_db loud, else the last one (as DAC).
    """
    file, starts = self.plan.starts(epoch, excerpt)
    for start in starts:
      audio = self.read_at(file, start)
      if audio is None:
        return None, audio_io.SILENCE_FLOOR_DB
      level = audio_io.rms_db(audio)
      if level >= self.levels.salient_db:
        break
    return audio, level

  def read_at(self, file: int, start: int) -> np.ndarray | None:
    """f32[E] raw samples of `file` from model-rate sample `start`, or None if unusable."""
    stop = start + self.plan.excerpt_length
    path = self.files.paths[file]
    try:
      if self.files.seekable[file]:
        # Only a window around the excerpt is decoded and resampled, whatever the file's length.
        audio = audio_io.read_resampled(
            path, start, stop, int(self.files.native_frames[file]),
            int(self.files.native_rates[file]), self.sample_rate, self.open_files)
      else:
        whole = self.cache.get(path, lambda: audio_io.decode_mono(path, self.sample_rate))
        audio = audio_io.fix_length(whole[start:stop], stop - start)  # in case the file shrank
    except audio_io.AudioError as error:
      _note_runtime_skip(path, str(error))
      return None
    if not np.isfinite(audio).all():
      _note_runtime_skip(path, 'NaN or Inf samples')
      return None
    return audio


def _build_batches(loader: _BatchLoader, order: grain.MapDataset, *, steps_per_epoch: int,
                   local_batch: int, process_index: int, process_count: int) -> grain.MapDataset:
  """Infinite MapDataset: element n = this host's f32[B_local, T] batch n.

  grain carries the epoch through every index (index e * len + i), so each op below is per epoch.
  """
  usable = order[:steps_per_epoch * local_batch * process_count]  # drop the remainder
  chunks = usable.batch(local_batch, drop_remainder=True)  # chunk c = rows of host c % P
  mine = chunks[process_index::process_count]  # i64[B_local] per global batch
  return mine.repeat(None).map_with_index(loader)


# -------------------------------------------------------------------------------------------------
# Validation excerpts.


def _val_starts(length: int, val_length: int, limit: int) -> list[int]:
  """Up to `limit` starts of a grid of non-overlapping excerpts centred in the file."""
  n = length // val_length
  first = (length - n * val_length) // 2
  return [first + k * val_length for k in range(min(n, limit))] if n else [0]


def _spread_order(n: int, first: int) -> list[int]:
  """0..n-1 with `first` evenly spaced ones in front."""
  head = sorted(set(np.linspace(0, n - 1, min(first, n)).round().astype(int).tolist()))
  rest = set(range(n)) - set(head)
  return head + sorted(rest)


def _val_audio(root: pathlib.Path, rels: list[str], sample_rate: int, val_length: int,
               max_excerpts: int, levels: _Levels) -> tuple[np.ndarray, list[audio_io.Skip]]:
  """Fixed validation excerpts: (f32[N, T_val], files skipped).

  Files in path order, max_excerpts of them evenly spaced over the list first (many speakers, not
  just the first folder's); each gives a grid of excerpts centred in the file, taken round-robin
  (excerpt 0 of every file, then excerpt 1, ...) up to max_excerpts. A file shorter than T_val
  gives one excerpt, zero-padded at the end. Loudness-normalised, not augmented: the numbers
  compare across epochs and runs.
  """
  per_file, skips = [], []
  rels = sorted(rels)
  for i in _spread_order(len(rels), max_excerpts):
    if sum(1 for clips in per_file if clips) >= max_excerpts:
      break
    try:
      audio = audio_io.load_audio(root / rels[i], sample_rate)
    except audio_io.AudioError as error:
      skips.append(audio_io.Skip(rels[i], error.reason, error.detail))
      continue
    clips = []
    for start in _val_starts(len(audio), val_length, max_excerpts):
      clip = audio[start:start + val_length]
      if audio_io.rms_db(clip) >= levels.silence_db:
        clips.append(audio_io.fix_length(audio_io.normalise_loudness(clip, levels.loudness_db),
                                         val_length))
    per_file.append(clips)
  chosen = []
  for k in range(max_excerpts):
    chosen += [clips[k] for clips in per_file if len(clips) > k]
  chosen = chosen[:max_excerpts]
  val = np.stack(chosen) if chosen else np.zeros((0, val_length), np.float32)
  return val, skips


# -------------------------------------------------------------------------------------------------
# Public API.


class TrainIterator:
  """Infinite iterator of this host's f32[B_local, T] numpy batches, over epochs.

  Batch n belongs to epoch n // steps_per_epoch. The state is the number of batches delivered, so it
  survives changing data.num_workers; set_state() restarts the grain pipeline at that batch.
  Worker processes hand over `chunk` consecutive batches at a time (f32[chunk, B_local, T]).
  """

  def __init__(self, batches: grain.MapDataset, *, steps_per_epoch: int, excerpts_per_epoch: int,
               num_workers: int, prefetch: int, chunk: int):
    self._batches = batches
    self.steps_per_epoch = steps_per_epoch
    self._excerpts_per_epoch = excerpts_per_epoch
    self._num_workers = num_workers
    self._prefetch = prefetch
    self._chunk = chunk if num_workers else 1
    self._next_batch = 0
    self._it = None
    self._rows = []  # batches of the current chunk not yet delivered

  @property
  def chunk(self) -> int:
    """Batches per hand-over from a worker process (1 without workers)."""
    return self._chunk

  @property
  def epoch(self) -> int:
    """The epoch of the next batch."""
    return self._next_batch // self.steps_per_epoch

  def _open(self) -> grain.DatasetIterator:
    """An iterator of f32[chunk, B_local, T] from batch self._next_batch on."""
    ds = self._batches[self._next_batch:]
    if self._num_workers == 0:
      # Threads overlap file reads (soundfile and numpy release the GIL).
      return iter(ds.map(functools.partial(np.expand_dims, axis=0)).to_iter_dataset(
          grain.ReadOptions(num_threads=self._prefetch, prefetch_buffer_size=self._prefetch)))
    if not flags.FLAGS.is_parsed():
      # grain's worker start-up reads absl flags; a script without absl.app has not parsed them.
      flags.FLAGS.mark_as_parsed()
    # drop_remainder: the stream is endless, and rounding its length up overflows an index.
    threads = _threads_per_worker(self._prefetch, self._num_workers, _cores())
    ds = ds.batch(self._chunk, drop_remainder=True).to_iter_dataset(grain.ReadOptions(
        num_threads=threads, prefetch_buffer_size=self._prefetch))
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=self._num_workers, per_worker_buffer_size=max(self._prefetch, 1)))
    # Own copies: grain hands over shared-memory arrays, which leak if still alive at exit.
    ds = ds.map(np.array)
    # A thread moves batches out of the worker queues while the training step runs.
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=self._prefetch)
    return iter(ds)

  def __iter__(self) -> 'TrainIterator':
    return self

  def __next__(self) -> np.ndarray:
    if not self._rows:
      if self._it is None:
        self._it = self._open()
      self._rows = list(next(self._it))
    self._next_batch += 1
    return self._rows.pop(0)

  def get_state(self) -> dict[str, int]:
    """JSON-serialisable; the corpus sizes let set_state notice a changed corpus."""
    return {'next_batch': self._next_batch, 'steps_per_epoch': self.steps_per_epoch,
            'excerpts_per_epoch': self._excerpts_per_epoch}

  def set_state(self, state: dict[str, int]) -> None:
    """Positions the iterator so that the next batch is batch state['next_batch']."""
    if (state.get('steps_per_epoch'), state.get('excerpts_per_epoch')) != (
        self.steps_per_epoch, self._excerpts_per_epoch):
      _LOG.warning('the training data changed since this state was saved (%d steps/epoch, %d '
                   'excerpts, now %d and %d): resuming at batch %d, but the batches differ',
                   state.get('steps_per_epoch', -1), state.get('excerpts_per_epoch', -1),
                   self.steps_per_epoch, self._excerpts_per_epoch, state['next_batch'])
    self.close()
    self._next_batch = int(state['next_batch'])

  def close(self) -> None:
    """Stops prefetch threads and worker processes (also done on garbage collection)."""
    it, self._it = self._it, None
    self._rows = []
    if it is not None:
      it.close()

  def __del__(self):
    if hasattr(self, '_it'):
      self.close()


@dataclasses.dataclass
class Datasets:
  """What make_datasets gives the trainer: the training stream, the validation set, a summary."""
  steps_per_epoch: int
  val_audio: np.ndarray  # f32[N, T_val], fixed validation excerpts
  summary: str  # one printable paragraph: files, skipped, hours, steps/epoch
  excerpts_per_epoch: int  # over all processes, before the remainder is dropped
  _iterator_args: dict[str, Any] = dataclasses.field(repr=False)

  def train_iterator(self) -> TrainIterator:
    """A fresh iterator at batch 0 (epoch 0); restore a saved position with set_state()."""
    return TrainIterator(**self._iterator_args)


def _threads_per_worker(prefetch: int, num_workers: int, cores: int) -> int:
  """Read threads in each worker process.

  One worker reads with as many threads as the training process does without workers (prefetch),
  so it delivers what no worker did; more workers share the cores rather than each taking prefetch
  threads: decoding threads beyond the cores only contend (docs/performance.md).
  """
  return max(1, min(prefetch, cores // num_workers))


def _cores() -> int:
  """CPU cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def _chunk(batch_samples: int) -> int:
  """Batches per hand-over from a worker process, for f32 batches of batch_samples samples."""
  return int(np.clip(_CHUNK_BYTES // (4 * batch_samples), 1, _MAX_CHUNK))


def _seconds_to_samples(seconds: float, sample_rate: int) -> int:
  return int(round(seconds * sample_rate))


def _plural(n: int, noun: str) -> str:
  return f'{n} {noun}' if n == 1 else f'{n} {noun}s'


def _hours(samples: int, sample_rate: int) -> str:
  hours = samples / sample_rate / 3600
  return f'{hours:.2f} h' if hours >= 0.1 else f'{hours * 60:.1f} min'


def _summary(corpora: list[audio_io.Corpus], val_skips: list[audio_io.Skip],
             train_rels: list[str], val_rels: list[str], files: _Files, plan: _Plan,
             val_audio: np.ndarray, *, data_config: ml_collections.ConfigDict, sample_rate: int,
             global_batch: int, steps: int, process_count: int, cached: bool) -> str:
  """One printable paragraph: files found and skipped, hours, excerpts, steps/epoch, validation."""
  n_text = sum(c.n_text for c in corpora)
  text_note = f' ({_plural(n_text, "text file")} ignored)' if n_text else ''
  skips = audio_io.describe_skips([s for c in corpora for s in c.skips] + val_skips)
  local = global_batch // process_count
  hosts = f' = {process_count} processes x {local}' if process_count > 1 else ''
  n_probed = sum(c.n_probed for c in corpora)
  return (
      f'{" + ".join(str(c.root) for c in corpora)}: '
      f'{_plural(sum(c.n_found for c in corpora), "file")}{text_note}, {skips}. '
      f'Training: {_plural(len(train_rels), "file")}, '
      f'{_hours(int(files.lengths.sum()), sample_rate)} -> '
      f'{plan.total} excerpts of {data_config.excerpt_seconds} s per epoch -> '
      f'{steps} steps/epoch at global batch {global_batch}{hosts} '
      f'({plan.total - steps * global_batch} excerpts left over per epoch). '
      f'Validation: {_plural(len(val_rels), "file")} -> {len(val_audio)} fixed excerpts of '
      f'{data_config.val_excerpt_seconds} s. Header index: {n_probed} probed, '
      f'{"the rest from the cache" if cached else "no cache_dir"}.')


def make_datasets(data_config: ml_collections.ConfigDict, *, sample_rate: int,
                  global_batch_size: int, seed: int, cache_dir: str | None,
                  process_index: int = 0, process_count: int = 1) -> Datasets:
  """Indexes the corpus, splits it and builds this host's training stream and the validation set.

  data_config: the `config.data` block. cache_dir: where the header index is kept (the run
  directory); None: no cache. process_index/process_count: this host's rows of each global batch.
  Raises ValueError for a missing or empty data folder, or too little usable audio.
  """
  if global_batch_size % process_count or not 0 <= process_index < process_count:
    raise ValueError(f'global batch {global_batch_size} must split evenly over {process_count} '
                     f'processes (process_index {process_index}).')
  excerpt_length = _seconds_to_samples(data_config.excerpt_seconds, sample_rate)
  if data_config.salient_excerpts and data_config.salient_tries < 1:
    raise ValueError(f'data.salient_tries ({data_config.salient_tries}) must be at least 1 with '
                     'data.salient_excerpts; set data.salient_excerpts=False to tile files instead.')
  if excerpt_length < 1 or data_config.val_excerpt_seconds * sample_rate < 1:
    raise ValueError(f'data.excerpt_seconds ({data_config.excerpt_seconds}) and '
                     f'data.val_excerpt_seconds ({data_config.val_excerpt_seconds}) must each give '
                     f'at least one sample at {sample_rate} Hz.')
  write = process_index == 0  # one writer for a run directory shared by all hosts
  index = functools.partial(audio_io.index_corpus, cache_dir=cache_dir, sample_rate=sample_rate,
                            min_length=excerpt_length, write=write)
  corpus = index(_resolve_dir(data_config.data_dir, 'data.data_dir'), 'data.data_dir')
  if data_config.val_dir:
    val_corpus = index(_resolve_dir(data_config.val_dir, 'data.val_dir'), 'data.val_dir')
    corpora, train_rels, val_rels = [corpus, val_corpus], corpus.usable, val_corpus.usable
  else:
    val_corpus, corpora = corpus, [corpus]
    train_rels, val_rels = split_train_val(corpus.usable, data_config.val_fraction)
  for c in corpora:
    audio_io.warn_skips(c.skips, c.root)
  if not train_rels:
    raise ValueError(f'data.data_dir: no usable training audio under {corpus.root} '
                     f'({audio_io.describe_skips(corpus.skips)}).')

  entries = [corpus.entries[rel] for rel in train_rels]
  files = _Files(
      paths=tuple(str(corpus.root / rel) for rel in train_rels),
      native_rates=np.array([e['sample_rate'] for e in entries], np.int64),
      native_frames=np.array([e['frames'] for e in entries], np.int64),
      seekable=np.array([e['seekable'] for e in entries], bool),
      lengths=np.array([audio_io.model_length(e, sample_rate) for e in entries], np.int64))
  plan = _Plan.create(files.lengths, excerpt_length, seed % 2**32,
                      data_config.salient_tries if data_config.salient_excerpts else 0)
  steps = plan.total // global_batch_size
  if steps == 0:
    raise ValueError(f'data.data_dir: {corpus.root} gives {plan.total} excerpts of '
                     f'{data_config.excerpt_seconds} s, fewer than one global batch '
                     f'({global_batch_size}).')
  levels = _Levels(data_config.loudness_db, data_config.random_gain_db,
                   data_config.phase_inversion, data_config.phase_shift, data_config.silence_db,
                   data_config.salient_db)
  shuffle_seed = int(np.random.SeedSequence((seed % 2**32, _SHUFFLE_STREAM)).generate_state(1)[0])
  order = grain.MapDataset.range(plan.total).shuffle(seed=shuffle_seed)  # reseeded per epoch
  loader = _BatchLoader(files, plan, order, levels, sample_rate=sample_rate, steps_per_epoch=steps,
                        global_batch=global_batch_size, process_index=process_index,
                        cache_bytes=int(data_config.decode_cache_mb * 2**20),
                        open_files=data_config.open_files)
  batches = _build_batches(loader, order, steps_per_epoch=steps,
                           local_batch=global_batch_size // process_count,
                           process_index=process_index, process_count=process_count)

  val_audio, val_skips = _val_audio(
      val_corpus.root, val_rels, sample_rate, _seconds_to_samples(data_config.val_excerpt_seconds,
                                                                  sample_rate),
      data_config.val_max_excerpts, levels)
  audio_io.warn_skips(val_skips, val_corpus.root)
  summary = _summary(corpora, val_skips, train_rels, val_rels, files, plan, val_audio,
                     data_config=data_config, sample_rate=sample_rate,
                     global_batch=global_batch_size, steps=steps, process_count=process_count,
                     cached=cache_dir is not None)
  _LOG.info('%s', summary)
  return Datasets(
      steps_per_epoch=steps, val_audio=val_audio, summary=summary, excerpts_per_epoch=plan.total,
      _iterator_args=dict(batches=batches, steps_per_epoch=steps, excerpts_per_epoch=plan.total,
                          num_workers=data_config.num_workers, prefetch=data_config.prefetch,
                          chunk=_chunk(excerpt_length * global_batch_size // process_count)))
