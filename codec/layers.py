"""Building blocks shared by the generator and the discriminators.

Layout is channels-last throughout: 1-D signals are f32[B, T, C], 2-D maps f32[B, H, W, C].
Every convolution is weight-normalised like PyTorch's `weight_norm`: the kernel is stored as a
direction `v` and a per-channel scale `g`, initialised to ||v|| so the effective kernel at init is `v`.
"""
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

# PyTorch's default conv init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)). It is also DAC's effective
# init: DAC's `init_weights` draws trunc_normal(0.02) into `conv.weight`, but under weight_norm that
# tensor is recomputed from (g, v) at every forward, so only its zeroed biases survive. A real
# std-0.02 init shrinks the signal ~20x per layer, the encoder's latent drowns in its biases within
# a few hundred steps, and every frame maps to the same code.
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


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
    if all(k == 1 for k in self.kernel_size) and not any(
        s != 1 for s in self.strides or ()) and not self.padding:
      # A 1x1 conv is a matrix product; as such its backward pass is several times faster on CPU.
      return x.astype(self.dtype) @ w.reshape(w.shape[-2:]).astype(self.dtype) + b.astype(self.dtype)
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
    # Output sample q*s + r - p receives x[q] @ w[r] + x[q-1] @ w[r+s], for phase r in [0, s):
    # two matrix products over frames q in [0, L], then interleaved. (Plain matmuls also make the
    # backward pass fast on CPU, where XLA's conv weight-gradient is slow for this shape.)
    x = jnp.pad(x.astype(self.dtype), ((0, 0), (1, 1), (0, 0)))  # x[-1] = x[L] = 0
    current = w[:s].transpose(1, 0, 2).reshape(c_in, s * c_out)
    previous = w[s:].transpose(1, 0, 2).reshape(c_in, s * c_out)
    z = x[:, 1:] @ current + x[:, :-1] @ previous  # [B, L+1, s*C_out]
    batch, frames = z.shape[:2]
    z = z.reshape(batch, frames * s, c_out)
    p = (s + 1) // 2
    return z[:, p:p + (frames - 1) * s] + b.astype(self.dtype)


def _sin_cos(y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """sin(y) and cos(y) by range reduction to [-pi/2, pi/2] and Taylor polynomials.

  XLA's CPU `sin` is an order of magnitude slower than these multiply-adds, and Snake evaluates
  it on every activation of the generator: this makes Snake as cheap as the convolutions around it.
  Absolute error below 3e-7 for |y| < 1e4 (the two-part pi keeps the reduction exact enough).
  """
  n = jnp.round(y * (1.0 / math.pi))
  r = (y - n * 3.140625) - n * 9.676535897932e-4  # pi = 3.140625 + 9.676535897932e-4
  r2 = r * r
  sin = r * (1 + r2 * (-1 / 6 + r2 * (1 / 120 + r2 * (-1 / 5040 + r2 * (
      1 / 362880 + r2 * (-1 / 39916800))))))
  cos = 1 + r2 * (-1 / 2 + r2 * (1 / 24 + r2 * (-1 / 720 + r2 * (1 / 40320 + r2 * (
      -1 / 3628800 + r2 * (1 / 479001600))))))
  sign = 1 - 2 * (n - 2 * jnp.floor(0.5 * n))  # (-1)^n
  return sign * sin, sign * cos


@jax.custom_vjp
def snake(x: jax.Array, alpha: jax.Array) -> jax.Array:
  """x + sin^2(alpha x) / alpha. x: f32[..., C], alpha: f32[C]."""
  s, _ = _sin_cos(alpha * x)
  return x + jnp.square(s) / (alpha + 1e-9)


def _snake_fwd(x, alpha):
  return snake(x, alpha), (x, alpha)


def _snake_bwd(residuals, g):
  # Recomputing sin and cos is cheaper than storing them: only x is kept for the backward pass.
  x, alpha = residuals
  s, c = _sin_cos(alpha * x)
  inv = 1 / (alpha + 1e-9)
  two_sc = 2 * s * c  # sin(2 alpha x)
  dx = g * (1 + two_sc * alpha * inv)
  dalpha = jnp.sum(g * (two_sc * x * inv - jnp.square(s * inv)), axis=tuple(range(x.ndim - 1)))
  return dx, dalpha.astype(alpha.dtype)


snake.defvjp(_snake_fwd, _snake_bwd)


class Snake(nn.Module):
  """Snake activation x + sin^2(alpha x) / alpha with a learnable alpha per channel (init 1).

  x: f32[..., C] -> f32[..., C]
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    alpha = self.param('alpha', nn.initializers.ones, (x.shape[-1],)).astype(x.dtype)
    return snake(x, alpha)
