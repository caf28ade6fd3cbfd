"""DAC's 8 discriminators: multi-period (5) and multi-band multi-scale complex STFT (3).

Each discriminator maps audio f32[B, T] to (logits, features): `features` is the list of its
intermediate activations used for feature matching, `logits` its last output.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from codec import compute
from codec import layers
from codec import spectral


def _leaky_relu(x: jax.Array) -> jax.Array:
  return jnp.where(x >= 0, x, 0.1 * x)


# With dac_init every conv here keeps PyTorch's default bias (torch_bias): DAC's `init_weights`,
# which zeroes biases, is applied to its generator only.


class PeriodDiscriminator(nn.Module):
  """Folds audio into T/p rows of p columns and convolves along time with (5, 1) kernels.

  DAC's map is [B, C, T/p, p]; here each of the p columns is its own 1-D signal, f32[B * p, T/p,
  1, C] (a (k, 1) kernel never mixes columns, and XLA's 1-D convs are several times faster than
  its 2-D ones). Features and logits come out as f32[B, p, T', C]: the same values as DAC's, in
  another order, which the losses (means over all elements) do not see.
  """
  period: int
  channels: Sequence[int]  # all but the last conv stride 3 along time
  dtype: jnp.dtype = jnp.float32
  kernels: compute.Kernels = compute.XLA
  torch_bias: bool = True  # layers.WNConv.torch_bias

  @nn.compact
  def __call__(self, audio: jax.Array):
    batch, length = audio.shape
    # DAC always pads, a full period when the length is already a multiple.
    x = jnp.pad(audio, ((0, 0), (0, self.period - length % self.period)), mode='reflect')
    x = x.reshape(batch, -1, self.period).transpose(0, 2, 1).reshape(batch * self.period, -1, 1, 1)
    unfold = lambda y: y.reshape(batch, self.period, y.shape[1], y.shape[-1])
    features = []
    for i, ch in enumerate(self.channels):
      stride = 1 if i == len(self.channels) - 1 else 3
      x = layers.WNConv(ch, (5, 1), strides=(stride, 1), padding=((2, 2), (0, 0)),
                        dtype=self.dtype, kernels=self.kernels, torch_bias=self.torch_bias)(x)
      x = _leaky_relu(x)
      features.append(unfold(x))
    logits = layers.WNConv(1, (3, 1), padding=((1, 1), (0, 0)), dtype=self.dtype,
                           kernels=self.kernels, torch_bias=self.torch_bias)(x)
    return unfold(logits).astype(jnp.float32), features


class BandDiscriminator(nn.Module):
  """Complex STFT (real, imaginary as 2 channels) split into frequency bands, one conv stack each.

  The spectrogram is f32[B, N(time), F(freq), 2]; kernels are (time, freq), striding frequency.
  """
  window_length: int
  bands: Sequence[tuple[float, float]]
  channels: int
  dtype: jnp.dtype = jnp.float32
  kernels: compute.Kernels = compute.XLA
  torch_bias: bool = True  # layers.WNConv.torch_bias

  @nn.compact
  def __call__(self, audio: jax.Array):
    spec = spectral.stft(audio, window_length=self.window_length,
                         hop_length=self.window_length // 4, match_stride=True)
    x = jnp.stack([spec.real, spec.imag], axis=-1)
    n_bins = x.shape[2]
    features, outputs = [], []
    for lo, hi in self.bands:
      band = x[:, :, int(lo * n_bins):int(hi * n_bins)]
      stack = [((3, 9), (1, 1), ((1, 1), (4, 4)))] + [((3, 9), (1, 2), ((1, 1), (4, 4)))] * 3 + [
          ((3, 3), (1, 1), ((1, 1), (1, 1)))]
      for kernel, strides, padding in stack:
        band = layers.WNConv(self.channels, kernel, strides=strides, padding=padding,
                             dtype=self.dtype, kernels=self.kernels,
                             torch_bias=self.torch_bias)(band)
        band = _leaky_relu(band)
        # Every layer, the first included, as in descript-audio-codec 1.0.0 (its later sources
        # skip the first; tests/test_dac_parity.py holds us to the release).
        features.append(band)
      outputs.append(band)
    x = jnp.concatenate(outputs, axis=2)
    logits = layers.WNConv(1, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                           kernels=self.kernels, torch_bias=self.torch_bias)(x)
    return logits.astype(jnp.float32), features


class Discriminators(nn.Module):
  """All discriminators. audio f32[B, T] -> list over D of (logits, features)."""
  periods: Sequence[int]
  period_channels: Sequence[int]
  fft_sizes: Sequence[int]
  bands: Sequence[tuple[float, float]]
  band_channels: int
  dtype: jnp.dtype = jnp.float32
  kernels: compute.Kernels = compute.XLA
  dac_init: bool = True  # config.dac_init: the initial weights only

  @classmethod
  def from_config(cls, disc: ml_collections.ConfigDict, dtype=jnp.float32,
                  kernels: compute.Kernels | None = None,
                  dac_init: bool = True) -> 'Discriminators':
    """kernels: how to compute (default: what 'auto' picks on jax's default backend)."""
    if kernels is None:
      kernels = compute.choose('auto', jax.default_backend(), jnp.dtype(dtype).name)
    return cls(periods=tuple(disc.periods), period_channels=tuple(disc.period_channels),
               fft_sizes=tuple(disc.fft_sizes), bands=tuple(tuple(b) for b in disc.bands),
               band_channels=disc.band_channels, dtype=dtype, kernels=kernels, dac_init=dac_init)

  @property
  def count(self) -> int:
    return len(self.periods) + len(self.fft_sizes)

  @nn.compact
  def __call__(self, audio: jax.Array):
    # Remove DC and peak-normalise to 0.8, so the discriminators judge shape, not level.
    audio = audio - jnp.mean(audio, axis=-1, keepdims=True)
    audio = 0.8 * audio / (jnp.max(jnp.abs(audio), axis=-1, keepdims=True) + 1e-9)
    results = [PeriodDiscriminator(p, self.period_channels, dtype=self.dtype, kernels=self.kernels,
                                   torch_bias=self.dac_init)(audio) for p in self.periods]
    results += [BandDiscriminator(n, self.bands, self.band_channels, dtype=self.dtype,
                                  kernels=self.kernels, torch_bias=self.dac_init)(audio)
                for n in self.fft_sizes]
    return results
