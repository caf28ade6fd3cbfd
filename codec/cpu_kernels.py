"""Convolution and Snake kernels written for XLA's CPU backend, chosen by codec/compute.py.

XLA's CPU backend computes a convolution as a loop nest much slower than its matrix products, its
gradients through strided or dilated inputs slower still, and its `sin` an order of magnitude
slower than a few multiply-adds. The kernels here recast the codec's layers as matrix products
(im2col, Winograd, polyphase) and Snake as a polynomial with a hand-written backward pass; each
was measured at the codec's shapes on a 2-core CPU (figures below and in docs/performance.md).

They are used only where codec/compute.py chooses them: by default on the CPU backend in float32.
On GPUs and TPUs one cuDNN or XLA convolution does what takes a k=7 Winograd conv about 14 matrix
products and 30 intermediate arrays, and in bfloat16 the Winograd transforms lose accuracy (the
bounds measured for every path are in tests/test_model.py and README.md). All paths compute the
same maths as `jax.lax.conv_general_dilated` and `x + sin^2(alpha x) / alpha` up to rounding.

Layout is channels-last: x: f32[B, *S, C_in], w: f32[*K, C_in, C_out].
"""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np


# How conv() computes 1-D stride-1 convs as Winograd F(m, k): (outputs per tile m, kernel
# pieces), or absent. Every piece keeps m + taps - 1 <= 8 interpolation points (0, +-1, +-2,
# +-1/2 and infinity), whose float32 rounding stays within ~4e-6 of the largest output at
# 1024 channels (F(2, 5) at 6 points: 3e-6); +-3 in place of +-1/2 costs an order of magnitude.
# Larger tiles need fewer products per output (F(3, 5): 7/3 instead of F(2, 5)'s 3) but leave
# fewer rows per product: F(4, 5) was slower, its ~100-row products (the period
# discriminators at batch 4) run at half the matrix rate. A k=7 kernel is two pieces of 4 and
# 3 taps over the same tiles of 4 outputs (13/4 products per output); k=2 serves the 2-tap
# phases of strided convs (polyphase_conv1d).
WINOGRAD_PLANS = {2: (3, (2,)), 3: (2, (3,)), 5: (3, (5,)), 7: (4, (4, 3))}

def _xla_conv(x: jax.Array, w: jax.Array, strides, dilation, padding) -> jax.Array:
  # The call codec/layers.py makes for XLA's own conv, repeated so this module needs no other.
  nd = w.ndim - 2
  spatial = 'HW'[:nd] if nd == 2 else 'W'
  return jax.lax.conv_general_dilated(
      x, w, window_strides=strides, padding=padding, rhs_dilation=dilation,
      dimension_numbers=(f'N{spatial}C', f'{spatial}IO', f'N{spatial}C'))


def im2col_conv(x: jax.Array, w: jax.Array, strides, dilation, padding) -> jax.Array:
  """The conv as one matrix product: y = [x at every kernel tap] @ w.reshape(taps * C_in, C_out).

  x: [B, *S, C_in], w: [*K, C_in, C_out]. The taps are strided slices of the padded input,
  concatenated along channels in w's (row-major) tap order. Its backward pass is two matrix
  products and a sum of padded slices: no strided or dilated XLA convolution.
  """
  nd = w.ndim - 2
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out = [(x.shape[1 + a] - dilation[a] * (w.shape[a] - 1) - 1) // strides[a] + 1 for a in range(nd)]
  taps = []
  for tap in itertools.product(*[range(k) for k in w.shape[:nd]]):
    start = [0] + [t * d for t, d in zip(tap, dilation)] + [0]
    limit = [x.shape[0]] + [b + (o - 1) * s + 1 for b, o, s in zip(start[1:], out, strides)] + [
        x.shape[-1]]
    taps.append(jax.lax.slice(x, start, limit, (1, *strides, 1)))
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  return patches @ w.reshape(-1, w.shape[-1])


@functools.cache
def winograd_matrices(taps: int, outputs: int) -> tuple[tuple, tuple, tuple]:
  """Transforms (A^T [m, n], G [n, taps], B^T [n, n]) of Winograd's F(m, taps), n = m + taps - 1.

  Toom-Cook at the first n - 1 of the points 0, 1, -1, 2, -2, 1/2, -1/2 and at infinity: with
  V_k the n x k Vandermonde matrix of those points (infinity's row picks the leading
  coefficient), the correlation y[i] = sum_k w[k] d[i + k] of a tile d of n inputs gives its
  m outputs as y = V_m^T [(V_taps w) * (V_n^-T d)], with n multiplications instead of m * taps.
  """
  n = outputs + taps - 1
  points = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5][:n - 1]
  if len(points) < n - 1:
    raise ValueError(f'Winograd F({outputs}, {taps}) needs {n} points; 8 are defined')

  def vandermonde(cols):
    rows = [[p ** j for j in range(cols)] for p in points]
    return rows + [[0.0] * (cols - 1) + [1.0]]

  bt = np.linalg.inv(np.array(vandermonde(n))).T
  to_tuple = lambda m: tuple(tuple(float(v) for v in row) for row in np.asarray(m))
  return (to_tuple(np.array(vandermonde(outputs)).T), to_tuple(vandermonde(taps)),
          to_tuple(np.where(np.abs(bt) < 1e-12, 0.0, bt)))


def _combine(coefficients, terms):
  """sum_i c[i] * terms[i] over the non-zero c[i] (python constants: XLA fuses it into one pass)."""
  out = None
  for c, t in zip(coefficients, terms):
    if c == 0.0:
      continue
    term = t if c == 1.0 else (-t if c == -1.0 else t * c)
    out = term if out is None else out + term
  return out


def _winograd_tiles(x: jax.Array, taps: int, padding, dilation: int, outputs: int):
  """Pads x: [B, L, C] for tiles of m = `outputs` outputs (spaced by the dilation d).

  Tile (q, r) holds outputs q*m*d + r + j*d, j < m, and reads inputs q*m*d + r + i*d of the padded
  x. Returns (plane, output length, Q) where plane(i): [B*Q*d, C] is input i of every tile.
  """
  batch, length, channels = x.shape
  out_length = length + padding[0] + padding[1] - dilation * (taps - 1)
  block = outputs * dilation
  tiles = -(-out_length // block)
  # Zeros past the end feed outputs that are dropped, and keep every plane a whole reshape.
  total = tiles * block + (taps + outputs - 2) * dilation
  x = jnp.pad(x, ((0, 0), (padding[0], total - length - padding[0]), (0, 0)))

  def plane(i):
    start = i * dilation
    blocks = x[:, start:start + tiles * block].reshape(batch, tiles, outputs, dilation, channels)
    return blocks[:, :, 0].reshape(batch * tiles * dilation, channels)

  return plane, out_length, tiles


def _winograd_inputs(plane, outputs: int, pieces) -> list[list[jax.Array]]:
  """Per kernel piece, its n transformed input planes B^T d: n x [B*Q*d, C_in]."""
  planes, transformed, offset = {}, [], 0
  for taps in pieces:
    _, _, bt = winograd_matrices(taps, outputs)
    inputs = [planes.setdefault(offset + i, plane(offset + i)) for i in range(len(bt))]
    transformed.append([_combine(row, inputs) for row in bt])
    offset += taps
  return transformed


def winograd_conv1d(x: jax.Array, w: jax.Array, padding, dilation: int, outputs: int,
                     pieces) -> jax.Array:
  """Stride-1 1-D conv as Winograd F(m, k): n = m + k - 1 products per tile of m outputs, not m*k.

  x: [B, L, C_in], w: [k, C_in, C_out]. The kernel may be split into `pieces` (tap counts summing
  to k), each its own F(m, taps) over the same tiles, their outputs summed. Each transformed input
  plane meets the matching transformed kernel in one matrix product, and fixed sums of the
  products give the tile's outputs. A dilation d tiles each of the d interleaved phases.
  (Separate 2-D products measured faster than one batched einsum on XLA's CPU backend.)
  """
  batch, c_out = x.shape[0], w.shape[-1]
  plane, length, tiles = _winograd_tiles(x, w.shape[0], padding, dilation, outputs)
  tile_outputs = [None] * outputs
  offset = 0
  for taps, inputs in zip(pieces, _winograd_inputs(plane, outputs, pieces)):
    at, g, _ = winograd_matrices(taps, outputs)
    kernels = [_combine(row, list(w[offset:offset + taps])) for row in g]  # n x [C_in, C_out]
    products = [u @ kernel for u, kernel in zip(inputs, kernels)]
    for j, row in enumerate(at):
      y = _combine(row, products)
      tile_outputs[j] = y if tile_outputs[j] is None else tile_outputs[j] + y
    offset += taps
  y = jnp.stack([t.reshape(batch, tiles, dilation, c_out) for t in tile_outputs], axis=2)
  return y.reshape(batch, tiles * outputs * dilation, c_out)[:, :length]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def winograd_conv1d_fast_grad(x, w, padding, dilation, outputs, pieces):
  """winograd_conv1d with a backward pass that is Winograd too: dx as the same fast correlation
  of the output gradient, dw from the n products' kernel gradients. Faster than autodiff's
  (transposed slices summed into padded planes) when rows are many and channels few, the
  generator's 128-384-channel residual convs. Needs padding <= (k - 1) * dilation on each side."""
  return winograd_conv1d(x, w, padding, dilation, outputs, pieces)


def _winograd_fast_grad_fwd(x, w, padding, dilation, outputs, pieces):
  return winograd_conv1d(x, w, padding, dilation, outputs, pieces), (x, w)


def _winograd_fast_grad_bwd(padding, dilation, outputs, pieces, residuals, g):
  x, w = residuals
  taps, c_out = w.shape[0], w.shape[-1]
  # dx is the correlation of g with the flipped, transposed kernel.
  reach = (taps - 1) * dilation
  dx = winograd_conv1d(g, jnp.flip(w, 0).swapaxes(1, 2),
                        (reach - padding[0], reach - padding[1]), dilation, outputs, pieces)
  # dw: the products' kernel gradients U^T dP (dP = A g, the tile outputs' gradient spread over
  # the n products), taken back through the kernel transform G.
  plane, length, tiles = _winograd_tiles(x, taps, padding, dilation, outputs)
  g = jnp.pad(g, ((0, 0), (0, tiles * outputs * dilation - length), (0, 0)))
  g = g.reshape(g.shape[0], tiles, outputs, dilation, c_out)
  g_outputs = [g[:, :, j].reshape(-1, c_out) for j in range(outputs)]
  dw = []
  for taps_i, inputs in zip(pieces, _winograd_inputs(plane, outputs, pieces)):
    at, gm, _ = winograd_matrices(taps_i, outputs)
    d_kernels = [u.T @ _combine(column, g_outputs) for u, column in zip(inputs, zip(*at))]
    dw += [_combine(column, d_kernels) for column in zip(*gm)]
  return dx, jnp.stack(dw)


winograd_conv1d_fast_grad.defvjp(_winograd_fast_grad_fwd, _winograd_fast_grad_bwd)


def _interleave(phases: dict, strides, axis: int) -> jax.Array:
  """phases[(r_0, r_1, ..)]: [B, *Q, C] -> [B, *(Q * s), C] with out[.., q*s + r, ..] = phases[r][.., q, ..]."""
  def build(prefix, a):
    if a == len(strides):
      return phases[prefix]
    parts = [build(prefix + (r,), a + 1) for r in range(strides[a])]
    if strides[a] == 1:
      return parts[0]
    stacked = jnp.stack(parts, axis=axis + a + 1)
    shape = list(parts[0].shape)
    shape[axis + a] *= strides[a]
    return stacked.reshape(shape)
  return build((), 0)


def _strided_conv_input_grad(g: jax.Array, w: jax.Array, in_shape, strides, padding) -> jax.Array:
  """d(loss)/dx of y = conv(pad(x), w, strides) (no dilation) from g = d(loss)/dy, polyphase.

  Padded input sample q*s + r receives sum_i g[q - i] w[r + i*s]: for each phase r one stride-1
  convolution of g with the sub-kernel w[r::s] (flipped, in/out swapped), then the phases are
  interleaved. XLA would instead convolve an input dilated with s-1 zeros per sample, a path its
  CPU backend runs several times slower than the forward pass (and multiplying by zeros).
  """
  nd = w.ndim - 2
  padded = [n + p[0] + p[1] for n, p in zip(in_shape, padding)]
  frames = [-(-n // s) for n, s in zip(padded, strides)]
  phases = {}
  for phase in itertools.product(*[range(s) for s in strides]):
    sub = w[tuple(slice(r, None, s) for r, s in zip(phase, strides))]
    taps = sub.shape[:nd]
    if 0 in taps:  # a kernel shorter than its stride: this phase receives nothing
      phases[phase] = jnp.zeros((g.shape[0], *frames, w.shape[-2]), g.dtype)
      continue
    flipped = jnp.flip(sub, axis=tuple(range(nd))).swapaxes(-1, -2)
    pads = tuple((k - 1, q - o) for k, q, o in zip(taps, frames, g.shape[1:1 + nd]))
    phases[phase] = _xla_conv(g, flipped, (1,) * nd, (1,) * nd, pads)
  dx = _interleave(phases, strides, axis=1)
  return dx[(slice(None), *(slice(p[0], p[0] + n) for p, n in zip(padding, in_shape)), slice(None))]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def strided_conv(x: jax.Array, w: jax.Array, strides, padding) -> jax.Array:
  """XLA's strided conv, with the input gradient computed polyphase (see above)."""
  return _xla_conv(x, w, strides, (1,) * len(strides), padding)


def _strided_conv_fwd(x, w, strides, padding):
  return strided_conv(x, w, strides, padding), (x, w)


def _strided_conv_bwd(strides, padding, residuals, g):
  x, w = residuals
  _, weight_vjp = jax.vjp(lambda w: _xla_conv(x, w, strides, (1,) * len(strides), padding), w)
  (dw,) = weight_vjp(g)
  return _strided_conv_input_grad(g, w, x.shape[1:-1], strides, padding), dw


strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


def polyphase_conv1d(x: jax.Array, w: jax.Array, stride: int, padding) -> jax.Array:
  """Strided 1-D conv as the sum of `stride` stride-1 convs, one per phase, each by conv().

  y[t] = sum_k w[k] xp[s t + k] = sum_r sum_j w[r + j s] xp[s (t + j) + r]: phase r correlates
  x_r[m] = xp[s m + r] with the sub-kernel w[r::s] at stride 1, where Winograd applies (the period
  discriminators' 512 -> 1024, k=5, stride-3 layer: phases of 2, 2 and 1 taps).
  x: [B, L, C_in], w: [k, C_in, C_out] -> [B, L', C_out]
  """
  taps = w.shape[0]
  batch, length, channels = x.shape
  out_length = (length + padding[0] + padding[1] - taps) // stride + 1
  frames = out_length + (taps - 1) // stride  # enough for the longest sub-kernel
  total = frames * stride
  x = jnp.pad(x, ((0, 0), (padding[0], max(0, total - length - padding[0])), (0, 0)))
  phases = x[:, :total].reshape(batch, frames, stride, channels)
  y = None
  for r in range(min(stride, taps)):
    part = conv(phases[:, :, r], w[r::stride])[:, :out_length]
    y = part if y is None else y + part
  return y


def conv(x: jax.Array, w: jax.Array, strides=None, dilation=None, padding=None) -> jax.Array:
  """Cross-correlation of x: [B, *S, C_in] with w: [*K, C_in, C_out] (PyTorch's Conv1d/2d maths).

  One function, several ways of computing it, picked by shape for speed on XLA's CPU backend
  (measured at the codec's shapes, docs/performance.md); all give the same result up to float32
  rounding (a test checks each against a float64 direct sum, gradients included):
  - 1x1: a matrix product;
  - a (k, 1) kernel on a width-1 input: the 1-D conv it is;
  - k=7, 1-D, stride 1, 128+ channels in and out, at least as many rows (B * L) as output
    channels (the generator's residual convs, any dilation): Winograd F(4, 4) + F(4, 3), 54%
    fewer multiplications; its backward pass is Winograd too from 8 rows per output channel,
    autodiff's below (the weight gradient's kernel-sized terms weigh more with fewer rows; with
    fewer rows than output channels, the decoder's 1536-channel input conv, im2col is faster);
  - wide (C_out >= 512), 1-D, stride 1, undilated, k = 3 or 5 (the period discriminators'
    1024-channel k=5 layer, the encoder's k=3 head): Winograd F(3, 5) / F(2, 3), 53% / 33%
    fewer multiplications, autodiff's backward pass (measured faster than Winograd's at these few
    rows); k = 2 (the strided convs' phases, below) likewise as F(3, 2);
  - wide (C_out >= 512), 1-D, strided, undilated, with at least a quarter as many output rows
    as output channels (the period discriminators' stride-3 layers): one stride-1 conv per
    stride phase, by the rules here (Winograd F(3, 2) for the 2-tap phases); 10-15% faster
    than im2col there, 1.7x slower with fewer rows (the encoder's last down-sampling conv);
  - other wide outputs (C_out >= 512): im2col + one matrix product, whose backward is matrix
    products too (XLA's own gradients of these convs are up to 2x slower);
  - strided 2-D (the complex-STFT discriminators' (3, 9) stride (1, 2)): XLA's forward, with a
    polyphase input gradient;
  - otherwise XLA's convolution (the generator's narrow and strided convs).
  """
  nd = w.ndim - 2
  strides = tuple(strides or (1,) * nd)
  dilation = tuple(dilation or (1,) * nd)
  padding = tuple(tuple(p) for p in (padding or ((0, 0),) * nd))
  if nd == 2 and x.shape[2] == 1 and w.shape[1] == 1 and padding[1] == (0, 0):
    # A (k, 1) kernel on a width-1 map is a 1-D conv (the period discriminators, which fold
    # their columns into the batch): XLA's 1-D convs are much faster than its 2-D ones here.
    y = conv(x[:, :, 0], w[:, 0], strides[:1], dilation[:1], padding[:1])
    return y[:, :, None]
  kernel, c_in, c_out = w.shape[:nd], w.shape[-2], w.shape[-1]
  strided = any(s != 1 for s in strides)
  if all(k == 1 for k in kernel) and not strided and not any(p != (0, 0) for p in padding):
    return x @ w.reshape(c_in, c_out)
  if nd == 1 and not strided and kernel[0] in WINOGRAD_PLANS:
    outputs, pieces = WINOGRAD_PLANS[kernel[0]]
    rows = x.shape[0] * x.shape[1]
    if kernel[0] == 7 and min(c_in, c_out) >= 128 and rows >= c_out:
      if rows >= 8 * c_out and max(padding[0]) <= (kernel[0] - 1) * dilation[0]:
        return winograd_conv1d_fast_grad(x, w, padding[0], dilation[0], outputs, pieces)
      return winograd_conv1d(x, w, padding[0], dilation[0], outputs, pieces)
    if kernel[0] != 7 and c_out >= 512 and dilation == (1,):
      return winograd_conv1d(x, w, padding[0], 1, outputs, pieces)
  if (nd == 1 and strided and dilation == (1,) and c_out >= 512 and
      4 * x.shape[0] * (x.shape[1] // strides[0]) >= c_out):
    return polyphase_conv1d(x, w, strides[0], padding[0])
  if c_out >= 512:
    return im2col_conv(x, w, strides, dilation, padding)
  if strided and nd == 2 and all(d == 1 for d in dilation):
    return strided_conv(x, w, strides, padding)
  return _xla_conv(x, w, strides, dilation, padding)


def sin_cos(y: jax.Array) -> tuple[jax.Array, jax.Array]:
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
  """x + sin^2(alpha x) / alpha with sin_cos's sine and a backward pass for XLA's CPU backend.

  x: f32[..., C], alpha: f32[C].
  """
  s, _ = sin_cos(alpha * x)
  return x + jnp.square(s) / (alpha + 1e-9)


def _snake_fwd(x, alpha):
  return snake(x, alpha), (x, alpha)


def _snake_bwd(residuals, g):
  # Recomputing sin and cos is cheaper than storing them: only x is kept for the backward pass.
  x, alpha = residuals
  s, c = sin_cos(alpha * x)
  inv = 1 / (alpha + 1e-9)
  two_sc = 2 * s * c  # sin(2 alpha x)
  dx = g * (1 + two_sc * alpha * inv)
  per_sample = g * (two_sc * x * inv - jnp.square(s * inv))
  # The sum over every axis but channels as a product with a ones vector: XLA's CPU backend
  # fuses a plain sum with the elementwise maths above into one scalar (unvectorised) loop, 5x
  # slower than this Snake's whole forward pass; the product reads the materialised terms.
  rows = per_sample.reshape(-1, per_sample.shape[-1])
  dalpha = jax.lax.dot(jnp.ones((1, rows.shape[0]), rows.dtype), rows,
                       preferred_element_type=jnp.float32)
  return dx, dalpha.reshape(alpha.shape).astype(alpha.dtype)


snake.defvjp(_snake_fwd, _snake_bwd)
