"""STFT and mel utilities in jax.numpy, matching the audiotools/torch behaviour DAC relies on.

Shapes use dimension letters: B batch (any leading dims), T samples, N frames, F frequency bins
(window_length // 2 + 1), M mel bands. Window sizes and hops are static Python ints, so every
function traces under jax.jit and is differentiable.
"""
import functools
import warnings

import jax
import jax.numpy as jnp
import librosa
import numpy as np


@functools.lru_cache(maxsize=None)
def hann_window(window_length: int) -> np.ndarray:
  """Periodic Hann window, as torch.hann_window and scipy.signal.get_window('hann').

  w[n] = 0.5 - 0.5 cos(2 pi n / W), n = 0..W-1 -> f32[W]
  """
  n = np.arange(window_length, dtype=np.float64)
  window = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / window_length)).astype(np.float32)
  window.setflags(write=False)  # cached: must not be mutated by a caller
  return window


def _frame(x: jax.Array, *, window_length: int, hop_length: int, n_frames: int) -> jax.Array:
  """Frames n = 0..N-1 of x, frame n = x[..., n*hop : n*hop + W].

  x: f32[B, L] with (N - 1) * hop + W <= L -> f32[B, N, W]

  Built from K = ceil(W / hop) shifted slices of x reshaped to hop-sized chunks rather than a
  gather, so both the forward pass and its gradient are plain slices/concats (fast on every
  backend).
  """
  k = -(-window_length // hop_length)
  needed = (n_frames + k - 1) * hop_length
  x = x[..., :needed]
  # Samples past L only land in the tail that is cut off below (offset >= W in every frame).
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, needed - x.shape[-1])])
  chunks = x.reshape(x.shape[:-1] + (n_frames + k - 1, hop_length))
  frames = jnp.concatenate([chunks[..., j:j + n_frames, :] for j in range(k)], axis=-1)
  return frames[..., :window_length]


def _reflect_pad(x: jax.Array, left: int, right: int) -> jax.Array:
  """torch.nn.functional.pad(..., mode='reflect') on the last axis (edge sample not repeated)."""
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(left, right)], mode='reflect')


def stft(audio: jax.Array, *, window_length: int, hop_length: int,
         match_stride: bool = False) -> jax.Array:
  """Complex STFT with a periodic Hann window and no normalisation.

  audio: f32[B, T] -> complex64[B, N, F],  X[b, n, f] = sum_w x[b, n*hop + w] hann[w] e^{-2 pi i f w / W}
  (x the padded signal).

  match_stride=False: torch.stft(center=True, pad_mode='reflect'): reflect-pad W//2 on both sides,
    N = 1 + T // hop (DAC's mel and STFT losses).
  match_stride=True: audiotools `AudioSignal.stft(match_stride=True)` (DAC's complex-STFT
    discriminators): reflect-pad (p, p + r) with p = (W - hop) // 2, r = ceil(T/hop)*hop - T, then
    the centre reflect padding, then drop the first and last two frames -> N = ceil(T / hop), so
    frames line up with a conv of stride hop. Requires hop == W // 4, as audiotools asserts.
  Reflect padding needs every pad < the padded-so-far length (T > W // 2 suffices).
  """
  audio = jnp.asarray(audio).astype(jnp.float32)  # rfft has no bf16; losses stay f32
  length = audio.shape[-1]
  if match_stride:
    if hop_length != window_length // 4:
      raise ValueError(f'match_stride needs hop == window // 4, got {hop_length}, {window_length}')
    n_frames = -(-length // hop_length)
    right_pad = n_frames * hop_length - length
    pad = (window_length - hop_length) // 2
    audio = _reflect_pad(audio, pad, pad + right_pad)
  x = _reflect_pad(audio, window_length // 2, window_length // 2)
  if match_stride:
    # The two dropped leading frames are skipped by starting the framing 2 hops in.
    x = x[..., 2 * hop_length:]
  else:
    n_frames = 1 + (x.shape[-1] - window_length) // hop_length
  frames = _frame(x, window_length=window_length, hop_length=hop_length, n_frames=n_frames)
  return jnp.fft.rfft(frames * hann_window(window_length), axis=-1)


@functools.lru_cache(maxsize=None)
def mel_filterbank(*, sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
  """librosa.filters.mel (Slaney scale and norm, as DAC/audiotools), transposed -> f32[F, M].

  A numpy constant at trace time; cached because the loss asks for it on every trace.
  """
  with warnings.catch_warnings():
    # DAC's smallest scales (e.g. W=32 with 5 mels) have empty filters; librosa warns each time
    # but DAC uses them as they are, so do we.
    warnings.filterwarnings('ignore', message='.*Empty filters.*')
    fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
  fb = np.ascontiguousarray(fb.T, dtype=np.float32)
  fb.setflags(write=False)
  return fb


def mel_spectrogram(audio: jax.Array, *, sample_rate: int, window_length: int, n_mels: int,
                    fmin: float = 0.0, fmax: float | None = None,
                    hop_length: int | None = None) -> jax.Array:
  """Magnitude mel spectrogram, as audiotools `AudioSignal.mel_spectrogram` (power 1).

  audio: f32[B, T] -> f32[B, N, M],  mel = |stft(audio)| @ fb,  fb: f32[F, M]; hop defaults to W // 4.
  """
  hop_length = window_length // 4 if hop_length is None else hop_length
  spec = stft(audio, window_length=window_length, hop_length=hop_length, match_stride=False)
  fb = mel_filterbank(sample_rate=sample_rate, n_fft=window_length, n_mels=n_mels, fmin=fmin,
                      fmax=fmax)
  # HIGHEST: the default on TPU/GPU (bf16/TF32 passes) would blur the log of quiet bands.
  return jnp.matmul(jnp.abs(spec), fb, precision=jax.lax.Precision.HIGHEST)
