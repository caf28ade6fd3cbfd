"""Building blocks shared by the generator and the discriminators: weight-normalised convs, Snake.

Layout is channels-last throughout: 1-D signals are f32[B, T, C], 2-D maps f32[B, H, W, C].
Every convolution is weight-normalised like PyTorch's `weight_norm`: the kernel is stored as a
direction `v` and a per-channel scale `g`, initialised to ||v|| so the effective kernel at init is `v`.
How convolutions and Snake are computed is a static `kernels` field (codec/compute.py decides it
per backend): XLA's own ops, or the CPU kernels of codec/cpu_kernels.py.
"""
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from codec import compute
from codec import cpu_kernels

Initializer = Callable[..., jax.Array]
# Initial values, as PyTorch DAC's nets start (tests/test_dac_init.py holds us to them):
# - conv kernels: PyTorch's default, U(+-1/sqrt(fan_in)) with fan_in = C_in * prod(K), which is
#   also flax's fan-in for our [*K, C_in, C_out] kernels. DAC's `init_weights` draws
#   trunc_normal(0.02) into `conv.weight`, but under weight_norm that tensor is recomputed from
#   (g, v) at every forward, so only its zeroed biases survive. (A real std-0.02 init shrinks the
#   signal ~20x per layer, the encoder's latent drowns in its biases within a few hundred steps,
#   and every frame maps to the same code.)
# - biases: zero in the generator's convs (`init_weights` zeroes every nn.Conv1d bias), PyTorch's
#   default U(+-1/sqrt(fan_in)) in the discriminators' (DAC never applies `init_weights` to them).
# - transposed convs (not nn.Conv1d, so `init_weights` skips them): PyTorch's default for kernel
#   and bias, with PyTorch's fan-in of a [C_in, C_out, K] weight: C_out * K (dim 1 times the
#   taps), not flax's K * C_in for our [K, C_in, C_out] kernel.
# config.dac_init=False (WNConvTranspose1d.torch_init, WNConv.torch_bias) departs from the last
# two: zero biases in the discriminators, flax's fan-in and a zero bias in the transposed convs.
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_uniform(fan_in: int) -> Initializer:
  """U(+-1/sqrt(fan_in)): PyTorch's default for a conv's weight (kaiming_uniform with a =
  sqrt(5)) and for its bias."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda rng, shape, dtype=jnp.float32: jax.random.uniform(rng, shape, dtype, -bound, bound)


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


def conv(x: jax.Array, w: jax.Array, strides=None, dilation=None, padding=None,
         kernels: compute.Kernels = compute.XLA) -> jax.Array:
  """Cross-correlation of x: [B, *S, C_in] with w: [*K, C_in, C_out] (PyTorch's Conv1d/2d maths),
  by XLA's `conv_general_dilated` or, with kernels.cpu_convs, by cpu_kernels.conv's paths."""
  if kernels.cpu_convs:
    return cpu_kernels.conv(x, w, strides, dilation, padding)
  nd = w.ndim - 2
  spatial = 'HW'[:nd] if nd == 2 else 'W'
  return jax.lax.conv_general_dilated(
      x, w, window_strides=tuple(strides or (1,) * nd),
      padding=tuple(tuple(p) for p in (padding or ((0, 0),) * nd)),
      rhs_dilation=tuple(dilation or (1,) * nd),
      dimension_numbers=(f'N{spatial}C', f'{spatial}IO', f'N{spatial}C'))


class WNConv(nn.Module):
  """Weight-normalised N-d convolution with explicit (PyTorch-style) padding.

  x: f32[B, *S, C_in] -> f32[B, *S', features]; `g` has one entry per output channel.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | None = None
  dilation: Sequence[int] | None = None
  padding: Sequence[tuple[int, int]] | None = None  # None: no padding
  # False: zero bias (the generator's convs); True: PyTorch's default (the discriminators').
  torch_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  kernels: compute.Kernels = compute.XLA

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = math.prod(self.kernel_size) * x.shape[-1]
    v = self.param('kernel', torch_default_init, (*self.kernel_size, x.shape[-1], self.features))
    g = self.param('scale', _norm_init(v, -1))
    b = self.param('bias', torch_uniform(fan_in) if self.torch_bias else nn.initializers.zeros,
                   (self.features,))
    x = x.astype(self.dtype)
    out_shape = jax.eval_shape(
        lambda x, v: conv(x, v, self.strides, self.dilation, self.padding), x, v.astype(self.dtype))
    if math.prod(out_shape.shape) < v.size:
      # conv(x, v * s) = conv(x, v) * s for a per-output-channel s = g / ||v||: scaling the
      # (smaller) output instead of materialising the normalised kernel saves a pass over the
      # kernel each step (the period discriminators' and the decoder's first kernels are 5-11 M).
      norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1))))
      y = conv(x, v.astype(self.dtype), self.strides, self.dilation, self.padding, self.kernels)
      return y * (g / norm).astype(self.dtype) + b.astype(self.dtype)
    w = _weight_norm(v, g, -1)
    y = conv(x, w.astype(self.dtype), self.strides, self.dilation, self.padding, self.kernels)
    return y + b.astype(self.dtype)


class WNConvTranspose1d(nn.Module):
  """Weight-normalised transposed conv with kernel 2*stride, upsampling length L to exactly L*stride.

  DAC pads by ceil(s/2) (and PyTorch then loses a sample per odd stride); here the output is
  always L*s. As in PyTorch's weight_norm of a ConvTranspose1d, `g` has one entry per *input* channel.

  The transposed conv is computed as a 2-tap conv producing s*C_out channels per input frame,
  then interleaved ("phase decomposition"): no multiplications by the zeros a dilated input would hold.
  Two matrix products of the FLOPs of the transposed conv itself, on every backend.
  x: f32[B, L, C_in] -> f32[B, L*s, features]
  """
  features: int
  stride: int
  dtype: jnp.dtype = jnp.float32
  # True: PyTorch's default for a ConvTranspose1d (DAC's). False: our other convs' fan-in (K x
  # C_in) for the kernel, and a zero bias.
  torch_init: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s, c_in, c_out = self.stride, x.shape[-1], self.features
    if self.torch_init:
      init = bias_init = torch_uniform(c_out * 2 * s)  # PyTorch's fan-in here: C_out * K
    else:
      init, bias_init = torch_default_init, nn.initializers.zeros
    v = self.param('kernel', init, (2 * s, c_in, c_out))
    g = self.param('scale', _norm_init(v, 1))
    b = self.param('bias', bias_init, (c_out,))
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


def snake(x: jax.Array, alpha: jax.Array, kernels: compute.Kernels = compute.XLA) -> jax.Array:
  """x + sin^2(alpha x) / alpha. x: f32[..., C], alpha: f32[C]. With kernels.cpu_snake by
  cpu_kernels.snake (polynomial sine, hand-written backward), else jnp.sin and XLA's gradient."""
  if kernels.cpu_snake:
    return cpu_kernels.snake(x, alpha)
  return x + jnp.square(jnp.sin(alpha * x)) / (alpha + 1e-9)


class Snake(nn.Module):
  """Snake activation x + sin^2(alpha x) / alpha with a learnable alpha per channel (init 1).

  x: f32[..., C] -> f32[..., C]
  """
  kernels: compute.Kernels = compute.XLA

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    alpha = self.param('alpha', nn.initializers.ones, (x.shape[-1],)).astype(x.dtype)
    return snake(x, alpha, self.kernels)
