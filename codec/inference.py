"""A trained codec as a tool: load a run, encode audio to codes, decode codes to audio.

`load(run_dir)` gives a `Codec`: the generator, its parameters on this machine's default device,
and two jitted functions (encode, decode) that only ever see a few fixed window shapes, so each
compiles once per shape and number of codebooks.

Chunking: an input of N frames (N = ceil(T / hop)) is cut into windows of W = C + 2X frames, C
central frames kept and X frames of context on each side. X is at least the receptive-field halo
of the encoder (audio -> codes) or of the decoder (codes -> audio), computed from the layer sizes
(`encoder_halo_frames`, `decoder_halo_frames`), so every kept frame sees exactly what it would
see in one pass over the whole input: chunked and unchunked results agree up to float rounding,
with no seams and no crossfade. Windows at the ends of the input are shifted inwards rather than
padded, so the convolutions' own zero padding at the file edges is the same as in one pass.
Memory is bounded by one batch of windows whatever the input's length.

Inputs shorter than one window are zero-padded (codes: edge-padded) on the right to the next
bucket of a short ladder (16, 24, 32, 48, ... frames, capped at W): few shapes, at most 1.5x the
work. The padding is trailing silence, so only the last few frames differ, slightly, from a pass
over the exact length.

Shapes use dimension letters: B windows per call, T samples, N frames, Q codebooks used, W frames
per window, C kept frames per window.
"""
import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np

from codec import audio_io
from codec import checkpoint
from codec import codefile
from codec import generator

# Seconds of kept audio per window: long windows waste less on context (2X / C), and memory
# grows only linearly with them (about 1 GB of activations for 10 s of the 16 kHz model).
DEFAULT_CHUNK_SECONDS = 10.0
_MIN_BUCKET_FRAMES = 16
_RESIDUAL_HALO = 3 * (1 + 3 + 9)  # three kernel-7 convs at dilations 1, 3, 9


class CodecError(ValueError):
  """A user error (bad run directory, bad option, incompatible codes): printed, no traceback."""


# -------------------------------------------------------------------------------------------------
# Identity of a codec: what code files are checked against.


def codec_fingerprint(model: ml_collections.ConfigDict) -> str:
  """A hash of config.model less quantizer_dropout (training-only) and kernels (how, not what, it
  computes): same hash, same code format.

  Not checkpoint.fingerprint: that one also hashes the discriminator, which plays no part in
  encoding or decoding.
  """
  fields = {k: v for k, v in model.to_dict().items() if k not in ('quantizer_dropout', 'kernels')}
  return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_id(gen_params) -> str:
  """A hash of the quantizer's parameters: tells checkpoints of one architecture apart, cheaply
  (the codebooks move with every training step, and are a tiny part of the weights)."""
  digest = hashlib.sha256()
  flat = jax.tree_util.tree_flatten_with_path(gen_params['quantizer'])[0]
  for path, leaf in sorted(flat, key=lambda item: jax.tree_util.keystr(item[0])):
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.asarray(leaf, np.float32).tobytes())
  return digest.hexdigest()[:16]


# -------------------------------------------------------------------------------------------------
# Receptive fields and the window plan.


def encoder_halo_frames(model: ml_collections.ConfigDict) -> int:
  """Frames on each side of a frame that can change its codes (Encoder in generator.py)."""
  halo, scale = 3, 1  # first conv: kernel 7; scale: input samples per step at the current depth
  for stride in model.encoder_rates:
    halo += _RESIDUAL_HALO * scale
    halo += math.ceil(stride / 2) * scale  # kernel 2s, padding ceil(s/2): reaches ceil(s/2) out
    scale *= stride
  halo += 1 * scale  # last conv: kernel 3
  return math.ceil(halo / scale)


def decoder_halo_frames(model: ml_collections.ConfigDict) -> int:
  """Frames on each side of a frame whose codes can change its audio (Decoder in generator.py)."""
  halo, steps_per_frame = 3.0, 1  # first conv: kernel 7 at the frame rate
  for stride in model.decoder_rates:
    halo += 1 / steps_per_frame  # transposed conv: output block of x[q] also sees x[q - 1], x[q + 1]
    steps_per_frame *= stride
    halo += _RESIDUAL_HALO / steps_per_frame
  halo += 3 / steps_per_frame  # last conv: kernel 7
  return math.ceil(halo)


def bucket_frames(frames: int, window: int) -> int:
  """The padded length of a short input: the next of 16, 24, 32, 48, 64, ... frames, at most W."""
  size = _MIN_BUCKET_FRAMES
  while size < frames:
    size = size * 3 // 2 if size & (size - 1) == 0 else size // 3 * 4  # 2^k -> 1.5 * 2^k -> 2^(k+1)
  return min(size, window)


@dataclasses.dataclass(frozen=True)
class Window:
  start: int  # first frame of the window in the input
  keep_start: int  # kept frames [keep_start, keep_stop) of the window's output
  keep_stop: int


def plan_windows(frames: int, chunk: int, context: int) -> tuple[int, list[Window]]:
  """(W, windows) covering frames [0, N) once; each kept frame has >= `context` frames of real
  input on both sides, or reaches the input's edge (where a one-pass run sees the same padding)."""
  window = chunk + 2 * context
  if frames <= window:
    return bucket_frames(frames, window), [Window(0, 0, frames)]
  windows = []
  for first in range(0, frames, chunk):
    kept = min(chunk, frames - first)
    start = min(max(first - context, 0), frames - window)
    windows.append(Window(start, first - start, first - start + kept))
  return window, windows


# -------------------------------------------------------------------------------------------------
# The codec.


def _encode_fn(gen: generator.Generator, params, audio: jax.Array, n_quantizers: int) -> jax.Array:
  """audio f32[B, W * hop] -> codes int32[B, Q, W]."""
  return gen.apply({'params': params}, audio, n_quantizers, method=gen.encode)


def _decode_fn(gen: generator.Generator, params, codes: jax.Array) -> jax.Array:
  """codes int32[B, Q, W] -> audio f32[B, W * hop]."""
  return gen.apply({'params': params}, codes, method=gen.decode)


def _batched(items: list, size: int) -> Iterator[list]:
  for i in range(0, len(items), size):
    yield items[i:i + size]


class Codec:
  """A generator with parameters, and chunked, jitted encode/decode of whole signals."""

  def __init__(self, config: ml_collections.ConfigDict, gen_params, *, step: int = -1,
               chunk_seconds: float = DEFAULT_CHUNK_SECONDS, batch_size: int = 1,
               encoder_context: int | None = None, decoder_context: int | None = None):
    self.config = config
    self.gen = generator.Generator.from_config(config.model)
    # Committed to the default device once: numpy parameters would be copied at every call.
    self.params = jax.device_put(gen_params)
    self.step = step
    self.hop_length = self.gen.hop_length
    self.sample_rate = config.model.sample_rate
    self.n_codebooks = config.model.n_codebooks
    self.codebook_size = config.model.codebook_size
    self.chunk_frames = max(1, round(chunk_seconds * self.sample_rate / self.hop_length))
    self.batch_size = batch_size
    self.encoder_context = (encoder_halo_frames(config.model) if encoder_context is None
                            else encoder_context)
    self.decoder_context = (decoder_halo_frames(config.model) if decoder_context is None
                            else decoder_context)
    self.fingerprint = codec_fingerprint(config.model)
    self._weights_id = None
    self._encode = jax.jit(functools.partial(_encode_fn, self.gen), static_argnums=2)
    self._decode = jax.jit(functools.partial(_decode_fn, self.gen))

  @property
  def weights_id(self) -> str:
    if self._weights_id is None:
      self._weights_id = weights_id(self.params)
    return self._weights_id

  @property
  def frame_rate(self) -> float:
    return self.sample_rate / self.hop_length

  def bitrate(self, n_quantizers: int) -> float:
    """Nominal bits per second with the first n_quantizers codebooks."""
    return self.frame_rate * n_quantizers * math.log2(self.codebook_size)

  def check_n_quantizers(self, n_quantizers: int | None) -> int:
    if n_quantizers is None:
      return self.n_codebooks
    if not 1 <= n_quantizers <= self.n_codebooks:
      raise CodecError(f'--n_quantizers must be in [1, {self.n_codebooks}] for this codec, '
                       f'got {n_quantizers}')
    return n_quantizers

  def n_quantizers_for_kbps(self, kbps: float) -> int:
    """The most codebooks whose nominal bitrate is at most `kbps`."""
    per_codebook = self.bitrate(1) / 1000
    n = math.floor(kbps / per_codebook + 1e-9)
    if n < 1:
      raise CodecError(f'--kbps {kbps:g} is below one codebook ({per_codebook:g} kbps); this codec '
                       f'offers {per_codebook:g} to {self.n_codebooks * per_codebook:g} kbps in '
                       f'steps of {per_codebook:g}')
    return min(n, self.n_codebooks)

  # ---- Chunked encode / decode of one signal.

  def _run_windows(self, fn: Callable, windows: list[Window], cut: Callable,
                   progress) -> Iterator[tuple[Window, np.ndarray]]:
    """Applies fn to batches of windows; yields (window, its output as numpy), in order.

    One batch is dispatched before the previous one is fetched, so the host's slicing and
    copying overlap the device's work; the last batch is padded to the fixed batch size.
    """
    pending = None
    for group in _batched(windows, self.batch_size):
      inputs = np.stack([cut(w) for w in group] + [cut(group[-1])] * (self.batch_size - len(group)))
      result = fn(inputs)
      if pending is not None:
        yield from self._fetch(*pending, progress)
      pending = (group, result)
    if pending is not None:
      yield from self._fetch(*pending, progress)

  @staticmethod
  def _fetch(group, result, progress):
    out = np.asarray(result)
    if progress is not None:
      progress.update(len(group))
    for i, window in enumerate(group):
      yield window, out[i]

  def encode(self, audio: np.ndarray, n_quantizers: int | None = None,
             progress=None) -> np.ndarray:
    """audio f32[T] (T >= 1) at self.sample_rate -> codes int32[Q, ceil(T / hop)].

    progress: an optional tqdm-like object, advanced by one per window.
    """
    n_quantizers = self.check_n_quantizers(n_quantizers)
    audio = np.asarray(audio, np.float32)
    hop = self.hop_length
    frames = math.ceil(len(audio) / hop)
    width, windows = plan_windows(frames, self.chunk_frames, self.encoder_context)

    def cut(w: Window) -> np.ndarray:
      # Zeros past the end, as the generator pads; no padded copy of a long input is made.
      piece = audio[w.start * hop:(w.start + width) * hop]
      return np.pad(piece, (0, width * hop - len(piece))) if len(piece) < width * hop else piece

    fn = lambda x: self._encode(self.params, x, n_quantizers)
    codes = np.empty((n_quantizers, frames), np.int32)
    if progress is not None:
      progress.reset(total=len(windows))
    for w, out in self._run_windows(fn, windows, cut, progress):
      codes[:, w.start + w.keep_start:w.start + w.keep_stop] = out[:, w.keep_start:w.keep_stop]
    return codes

  def decode(self, codes: np.ndarray, length: int | None = None, progress=None) -> np.ndarray:
    """codes int[Q, N] -> audio f32[length or N * hop] at self.sample_rate."""
    n_quantizers, frames = codes.shape
    self.check_n_quantizers(n_quantizers)
    hop = self.hop_length
    width, windows = plan_windows(frames, self.chunk_frames, self.decoder_context)
    codes = np.asarray(codes, np.int32)
    if frames < width:
      # Repeating the last frame's codes looks like more of the signal's end to the decoder.
      codes = np.pad(codes, ((0, 0), (0, width - frames)), mode='edge')
    cut = lambda w: codes[:, w.start:w.start + width]
    fn = lambda x: self._decode(self.params, x)
    audio = np.empty(frames * hop, np.float32)
    if progress is not None:
      progress.reset(total=len(windows))
    for w, out in self._run_windows(fn, windows, cut, progress):
      audio[(w.start + w.keep_start) * hop:(w.start + w.keep_stop) * hop] = (
          out[w.keep_start * hop:w.keep_stop * hop])
    return audio if length is None else audio[:length]

  def reconstruct(self, audio: np.ndarray, n_quantizers: int | None = None) -> np.ndarray:
    """f32[T] -> f32[T]: encode then decode, chunked."""
    return self.decode(self.encode(audio, n_quantizers), len(audio))

  # ---- Whole files: loudness, headers, compatibility.

  def loudness_gain_db(self, audio: np.ndarray) -> float:
    """The gain that brings `audio` to the training loudness (config.data.loudness_db), less if
    a peak would pass full scale: quiet or loud inputs are coded as the model learned to."""
    level = audio_io.rms_db(audio)
    if level <= audio_io.SILENCE_FLOOR_DB:
      return 0.0
    peak_db = 20.0 * math.log10(float(np.max(np.abs(audio))))
    return min(self.config.data.loudness_db - level, -peak_db)

  def encode_audio(self, audio: np.ndarray, n_quantizers: int | None = None, *,
                   normalize: bool = True, channels: int = 1, source_sample_rate: int | None = None,
                   source: str = '', progress=None) -> tuple[np.ndarray, codefile.Header]:
    """f32[T] at the codec's rate -> (codes int32[Q, N], the header a code file needs)."""
    n_quantizers = self.check_n_quantizers(n_quantizers)
    gain_db = self.loudness_gain_db(audio) if normalize else 0.0
    scaled = audio * np.float32(10.0 ** (gain_db / 20.0)) if gain_db else audio
    codes = self.encode(scaled, n_quantizers, progress=progress)
    header = codefile.Header(
        sample_rate=self.sample_rate, hop_length=self.hop_length, n_quantizers=n_quantizers,
        n_codebooks=self.n_codebooks, codebook_size=self.codebook_size, frames=codes.shape[1],
        length=len(audio), channels=channels,
        source_sample_rate=source_sample_rate or self.sample_rate, gain_db=float(gain_db),
        codec_fingerprint=self.fingerprint, weights_id=self.weights_id, step=int(self.step),
        source=source)
    return codes, header

  def check_header(self, header: codefile.Header, path: str) -> list[str]:
    """Raises CodeFileError if this codec cannot decode the file; returns warnings."""
    if header.codec_fingerprint != self.fingerprint:
      raise codefile.CodeFileError(
          f'{path}: made by a different codec (config fingerprint {header.codec_fingerprint}, '
          f'{header.sample_rate} Hz, hop {header.hop_length}, {header.n_codebooks} x '
          f'{header.codebook_size} codebooks); this checkpoint is {self.fingerprint} '
          f'({self.sample_rate} Hz, hop {self.hop_length}, {self.n_codebooks} x '
          f'{self.codebook_size}). Decode it with the run that encoded it.')
    if header.n_quantizers > self.n_codebooks:
      raise codefile.CodeFileError(f'{path}: uses {header.n_quantizers} codebooks, this codec has '
                                   f'{self.n_codebooks}')
    if header.weights_id != self.weights_id:
      return [f'{path}: encoded with other weights (checkpoint step {header.step}) than this one '
              f'(step {self.step}) of the same architecture; the audio may be degraded']
    return []

  def decode_audio(self, codes: np.ndarray, header: codefile.Header, progress=None) -> np.ndarray:
    """Codes of a code file -> f32[header.length] at the codec's rate, loudness restored."""
    audio = self.decode(codes, header.length, progress=progress)
    if header.gain_db:
      audio = audio * np.float32(10.0 ** (-header.gain_db / 20.0))
    return audio

  def reconstruct_audio(self, audio: np.ndarray, n_quantizers: int | None = None, *,
                        normalize: bool = True) -> np.ndarray:
    """What encode + decode through code files gives: f32[T] -> f32[T]."""
    codes, header = self.encode_audio(audio, n_quantizers, normalize=normalize)
    return self.decode_audio(codes, header)


# -------------------------------------------------------------------------------------------------
# Runs and files.


def load_run_config(run_dir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The resolved config a run wrote (RUN_DIR/config.json)."""
  path = pathlib.Path(run_dir) / 'config.json'
  if not pathlib.Path(run_dir).is_dir():
    raise CodecError(f'--checkpoint {run_dir}: no such directory; pass a run directory written '
                     'by run_experiment.py')
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except FileNotFoundError:
    raise CodecError(f'--checkpoint {run_dir}: no config.json there; pass a run directory written '
                     'by run_experiment.py') from None
  except (OSError, ValueError) as error:
    raise CodecError(f'{path}: unreadable ({error})') from None


def load(run_dir: str | os.PathLike, step: int | None = None, **codec_options) -> Codec:
  """The codec of a run: its config and the best checkpoint's generator (or `step`'s)."""
  config = load_run_config(run_dir)
  try:
    gen_params, _, step = checkpoint.restore_params(str(run_dir), step=step, best=step is None)
  except FileNotFoundError as error:
    raise CodecError(str(error)) from None
  return Codec(config, gen_params, step=step, **codec_options)


@dataclasses.dataclass(frozen=True)
class SourceAudio:
  audio: np.ndarray  # f32[T], mono at the codec's rate
  channels: int
  sample_rate: int  # of the file


def read_audio(path: str | os.PathLike, sample_rate: int) -> SourceAudio:
  """A file mixed to mono and resampled; AudioError (naming the file) if it cannot be used."""
  try:
    audio, rate = audio_io.decode(path)
  except audio_io.AudioError as error:
    raise audio_io.AudioError(error.reason, f'{path}: {error.detail}') from None
  except OSError as error:
    raise audio_io.AudioError('unreadable', f'{path}: {error}') from None
  if audio.size == 0:
    raise audio_io.AudioError('empty', f'{path}: no samples')
  mono = audio_io.resample(audio_io.to_mono(audio), rate, sample_rate)
  if not np.isfinite(mono).all():
    raise audio_io.AudioError('non-finite samples', f'{path}: NaN or Inf samples')
  return SourceAudio(mono, int(audio.shape[1]), rate)


def expand_inputs(inputs: list[str], suffixes: frozenset[str] | None = None
                  ) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """Files and folders -> [(file, output path relative to the output folder, without suffix)].

  A folder contributes every matching file below it (recursive, sorted, hidden names skipped),
  its subfolders mirrored; a file contributes its own name. suffixes: None means audio files.
  Raises CodecError for a missing input or two inputs that would write the same output.
  """
  pairs = []
  for name in inputs:
    path = pathlib.Path(name)
    if path.is_dir():
      if suffixes is None:
        files = audio_io.find_audio_files(path)
      else:
        files = sorted(p for p in path.rglob('*') if p.suffix.lower() in suffixes and p.is_file()
                       and not any(audio_io.is_hidden(part) for part in p.relative_to(path).parts))
      if not files:
        raise CodecError(f'{path}: no {"audio" if suffixes is None else "/".join(suffixes)} files '
                         'in this folder')
      pairs += [(f, f.relative_to(path).with_suffix('')) for f in files]
    elif path.exists():
      pairs.append((path, pathlib.Path(path.stem)))
    else:
      raise CodecError(f'{path}: no such file or folder')
  seen = {}
  for source, rel in pairs:
    if rel in seen:
      raise CodecError(f'{seen[rel]} and {source} would both be written as {rel}.*; '
                       'rename one or run them separately')
    seen[rel] = source
  return pairs


def describe(params_tree: Any) -> str:
  """'N parameters on DEVICE', for the tools' first line."""
  leaves = jax.tree.leaves(params_tree)
  count = sum(int(np.prod(leaf.shape)) for leaf in leaves)
  device = next(iter(leaves[0].devices())) if leaves and hasattr(leaves[0], 'devices') else 'host'
  return f'{count:,} parameters on {device}'
