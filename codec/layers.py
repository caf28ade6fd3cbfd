"""Building blocks shared by the generator and the discriminators.

Layout is channels-last throughout: 1-D signals are f32[B, T, C], 2-D maps f32[B, H, W, C].
Every convolution is weight-normalised like PyTorch's `weight_norm`: the kernel is stored as a
direction `v` and a per-channel scale `g`, initialised to ||v|| so the effective kernel at init is `v`.
"""
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

# PyTorch's default conv init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
# DAC re-initialises its generator's Conv1d weights with a truncated normal of std 0.02.
dac_generator_init = nn.initializers.truncated_normal(0.02)


def _weight_norm(v: jax.Array, g: jax.Array, keep_axis: int) -> jax.Array:
  """Returns g * v / ||v||, the norm taken over every axis of v but `keep_axis`."""
  axes = tuple(a for a in range(v.ndim) if a != keep_axis % v.ndim)
  norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))
  shape = [1] * v.ndim
  shape[keep_axis] = -1
  return v * (g.reshape(shape) / norm)


def _norm_init(v: jax.Array, keep_axis: int) -> Callable[..., jax.Array]:
  axes = tuple(a for a in range(v.ndim) if a != keep_axis % v.ndim)
  return lambda _rng: jnp.sqrt(jnp.sum(jnp.square(v), axis=axes))


class WNConv(nn.Module):
  """Weight-normalised N-d convolution with explicit (PyTorch-style) padding.

  x: f32[B, *S, C_in] -> f32[B, *S', features]; `g` has one entry per output channel.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | None = None
  dilation: Sequence[int] | None = None
  padding: Sequence[tuple[int, int]] | None = None  # None: no padding
  kernel_init: Initializer = torch_default_init
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    nd = len(self.kernel_size)
    v = self.param('kernel', self.kernel_init, (*self.kernel_size, x.shape[-1], self.features))
    g = self.param('scale', _norm_init(v, -1))
    b = self.param('bias', nn.initializers.zeros, (self.features,))
    w = _weight_norm(v, g, -1)
    spatial = 'HW'[:nd] if nd == 2 else 'W'
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), w.astype(self.dtype),
        window_strides=self.strides or (1,) * nd,
        padding=self.padding or ((0, 0),) * nd,
        rhs_dilation=self.dilation or (1,) * nd,
        dimension_numbers=(f'N{spatial}C', f'{spatial}IO', f'N{spatial}C'))
    return y + b.astype(self.dtype)


class WNConvTranspose1d(nn.Module):
  """Weight-normalised transposed conv with kernel 2*stride, upsampling length L to exactly L*stride.

  DAC pads by ceil(s/2) (and PyTorch then loses a sample per odd stride); here the output is
  always L*s. As in PyTorch's weight_norm of a ConvTranspose1d, `g` has one entry per *input* channel.

  The transposed conv is computed as a 2-tap conv producing s*C_out channels per input frame,
  then interleaved ("phase decomposition"): no multiplications by the zeros a dilated input would hold.
  x: f32[B, L, C_in] -> f32[B, L*s, features]
  """
  features: int
  stride: int
  kernel_init: Initializer = torch_default_init
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s, c_in, c_out = self.stride, x.shape[-1], self.features
    v = self.param('kernel', self.kernel_init, (2 * s, c_in, c_out))
    g = self.param('scale', _norm_init(v, 1))
    b = self.param('bias', nn.initializers.zeros, (c_out,))
    w = _weight_norm(v, g, 1).astype(self.dtype)
    # Output sample q*s + r - p receives x[q] @ w[r] + x[q-1] @ w[r+s], for phase r in [0, s).
    taps = jnp.stack([w[s:], w[:s]])  # [2, s, C_in, C_out]: tap 0 meets x[q-1], tap 1 meets x[q]
    taps = taps.transpose(0, 2, 1, 3).reshape(2, c_in, s * c_out)
    z = jax.lax.conv_general_dilated(
        x.astype(self.dtype), taps, window_strides=(1,), padding=((1, 1),),
        dimension_numbers=('NWC', 'WIO', 'NWC'))  # [B, L+1, s*C_out]
    batch, frames = z.shape[:2]
    z = z.reshape(batch, frames * s, c_out)
    p = (s + 1) // 2
    return z[:, p:p + (frames - 1) * s] + b.astype(self.dtype)


class Snake(nn.Module):
  """Snake activation x + sin^2(alpha x) / alpha with a learnable alpha per channel (init 1).

  x: f32[..., C] -> f32[..., C]
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    alpha = self.param('alpha', nn.initializers.ones, (x.shape[-1],)).astype(x.dtype)
    return x + jnp.reciprocal(alpha + 1e-9) * jnp.square(jnp.sin(alpha * x))
