"""The DAC generator: convolutional encoder, residual VQ, convolutional decoder.

audio: f32[B, T] in [-1, 1]; internally channels-last f32[B, T, C]; codes int32[B, Q, N] with
N = ceil(T / hop) frames, hop = prod(encoder_rates).
"""
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from codec import compute
from codec import layers
from codec import quantizer as rvq


class ResidualUnit(nn.Module):
  """Snake -> Conv(k7, dilation d) -> Snake -> Conv(k1), plus the input. Length-preserving."""
  dim: int
  dilation: int
  dtype: jnp.dtype = jnp.float32
  kernels: compute.Kernels = compute.XLA

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = 3 * self.dilation
    y = layers.Snake(self.kernels)(x)
    y = layers.WNConv(self.dim, (7,), dilation=(self.dilation,), padding=((pad, pad),),
                      dtype=self.dtype, kernels=self.kernels)(y)
    y = layers.Snake(self.kernels)(y)
    y = layers.WNConv(self.dim, (1,), dtype=self.dtype, kernels=self.kernels)(y)
    return x + y


def _residual_stack(x: jax.Array, dim: int, dtype, kernels: compute.Kernels) -> jax.Array:
  for dilation in (1, 3, 9):
    x = ResidualUnit(dim, dilation, dtype=dtype, kernels=kernels)(x)
  return x


class Encoder(nn.Module):
  """f32[B, T, 1] -> f32[B, T / prod(rates), latent_dim]; T must be a multiple of the hop."""
  dim: int
  rates: tuple[int, ...]
  latent_dim: int
  dtype: jnp.dtype = jnp.float32
  kernels: compute.Kernels = compute.XLA

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = self.dim
    x = layers.WNConv(dim, (7,), padding=((3, 3),), dtype=self.dtype, kernels=self.kernels)(x)
    for stride in self.rates:
      x = _residual_stack(x, dim, self.dtype, self.kernels)
      x = layers.Snake(self.kernels)(x)
      dim *= 2
      pad = math.ceil(stride / 2)
      x = layers.WNConv(dim, (2 * stride,), strides=(stride,), padding=((pad, pad),),
                        dtype=self.dtype, kernels=self.kernels)(x)
    x = layers.Snake(self.kernels)(x)
    return layers.WNConv(self.latent_dim, (3,), padding=((1, 1),),
                         dtype=self.dtype, kernels=self.kernels)(x)


class Decoder(nn.Module):
  """f32[B, N, latent_dim] -> f32[B, N * prod(rates)] in (-1, 1)."""
  dim: int
  rates: tuple[int, ...]
  dtype: jnp.dtype = jnp.float32
  kernels: compute.Kernels = compute.XLA
  torch_upsample_init: bool = True  # layers.WNConvTranspose1d.torch_init

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = layers.WNConv(self.dim, (7,), padding=((3, 3),), dtype=self.dtype, kernels=self.kernels)(z)
    for i, stride in enumerate(self.rates):
      out_dim = self.dim // 2 ** (i + 1)
      x = layers.Snake(self.kernels)(x)
      x = layers.WNConvTranspose1d(out_dim, stride, dtype=self.dtype,
                                   torch_init=self.torch_upsample_init)(x)
      x = _residual_stack(x, out_dim, self.dtype, self.kernels)
    x = layers.Snake(self.kernels)(x)
    x = layers.WNConv(1, (7,), padding=((3, 3),), dtype=self.dtype, kernels=self.kernels)(x)
    return jnp.tanh(x[..., 0].astype(jnp.float32))


@flax.struct.dataclass
class GeneratorOutput:
  audio: jax.Array  # f32[B, T], same length as the input
  codes: jax.Array  # int32[B, Q, N]
  level_mask: jax.Array  # bool[B, Q]
  commitment_loss: jax.Array  # f32[]
  codebook_loss: jax.Array  # f32[]


class Generator(nn.Module):
  """The DAC codec. Build it with `Generator.from_config(config.model)`."""
  sample_rate: int
  encoder_dim: int
  encoder_rates: tuple[int, ...]
  latent_dim: int
  decoder_dim: int
  decoder_rates: tuple[int, ...]
  n_codebooks: int
  codebook_size: int
  codebook_dim: int
  quantizer_dropout: float
  dtype: jnp.dtype = jnp.float32
  kernels: compute.Kernels = compute.XLA
  dac_init: bool = True  # config.dac_init: the initial weights only

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict, dtype=jnp.float32,
                  kernels: compute.Kernels | None = None, dac_init: bool = True) -> 'Generator':
    """kernels: how to compute (default: what `model.kernels` picks on jax's default backend)."""
    if kernels is None:
      kernels = compute.choose(compute.configured(model), jax.default_backend(),
                               jnp.dtype(dtype).name)
    if math.prod(model.encoder_rates) != math.prod(model.decoder_rates):
      raise ValueError(f'config.model: encoder_rates {tuple(model.encoder_rates)} and decoder_rates '
                       f'{tuple(model.decoder_rates)} must have the same product (the hop length)')
    return cls(
        sample_rate=model.sample_rate, encoder_dim=model.encoder_dim,
        encoder_rates=tuple(model.encoder_rates), latent_dim=model.latent_dim,
        decoder_dim=model.decoder_dim, decoder_rates=tuple(model.decoder_rates),
        n_codebooks=model.n_codebooks, codebook_size=model.codebook_size,
        codebook_dim=model.codebook_dim, quantizer_dropout=model.quantizer_dropout, dtype=dtype,
        kernels=kernels, dac_init=dac_init)

  @property
  def hop_length(self) -> int:
    return math.prod(self.encoder_rates)

  def setup(self):
    self.encoder = Encoder(self.encoder_dim, self.encoder_rates, self.latent_dim, dtype=self.dtype,
                           kernels=self.kernels)
    self.quantizer = rvq.ResidualVectorQuantizer(
        self.latent_dim, self.n_codebooks, self.codebook_size, self.codebook_dim,
        self.quantizer_dropout, kernels=self.kernels)
    self.decoder = Decoder(self.decoder_dim, self.decoder_rates, dtype=self.dtype,
                           kernels=self.kernels, torch_upsample_init=self.dac_init)

  def encode_latent(self, audio: jax.Array) -> jax.Array:
    """audio: f32[B, T] -> f32[B, ceil(T / hop), latent]; right-pads T to a multiple of the hop."""
    pad = -audio.shape[-1] % self.hop_length
    audio = jnp.pad(audio, ((0, 0), (0, pad)))
    return self.encoder(audio[..., None])

  def __call__(self, audio: jax.Array, *, dropout_rng: jax.Array | None = None,
               n_quantizers: int | None = None) -> GeneratorOutput:
    """The training forward: reconstruction, quantizer losses and codes, same length as `audio`."""
    q = self.quantizer(self.encode_latent(audio), n_quantizers=n_quantizers,
                       dropout_rng=dropout_rng)
    recon = self.decoder(q.z_q)[:, :audio.shape[-1]]
    return GeneratorOutput(audio=recon, codes=q.codes, level_mask=q.level_mask,
                           commitment_loss=q.commitment_loss, codebook_loss=q.codebook_loss)

  def latents_by_level(self, audio: jax.Array) -> tuple[rvq.QuantizerOutput, jax.Array]:
    """The rate-distortion forward: (quantizer output with every level, z_q of levels 1..n for
    each n, f32[Q, B, N, C]); decode_latent of entry n-1 is the reconstruction at n levels."""
    q = self.quantizer(self.encode_latent(audio))
    parts = [self.quantizer.levels[i].embed(q.codes[:, i]) for i in range(self.n_codebooks)]
    return q, jnp.cumsum(jnp.stack(parts), axis=0)

  def decode_latent(self, z_q: jax.Array) -> jax.Array:
    """z_q: f32[B, N, C] -> audio f32[B, N * hop]."""
    return self.decoder(z_q)

  def encode(self, audio: jax.Array, n_quantizers: int | None = None) -> jax.Array:
    """audio: f32[B, T] -> codes: int32[B, Q, ceil(T / hop)]."""
    return self.quantizer(self.encode_latent(audio), n_quantizers=n_quantizers).codes

  def decode(self, codes: jax.Array, length: int | None = None) -> jax.Array:
    """codes: int32[B, Q, N] -> audio: f32[B, length or N * hop]."""
    audio = self.decoder(self.quantizer.decode_codes(codes))
    return audio if length is None else audio[:, :length]
