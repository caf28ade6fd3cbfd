"""Generator, quantizer and discriminators: shapes, parameter parity with PyTorch DAC, maths."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codec import compute
from codec import cpu_kernels
from codec import discriminators
from codec import generator
from codec import layers
from codec import summary
from experiments import dac_16khz


def jit_apply(module, params, x, *static, method=None, **kwargs):
  """module.apply under jit: one compile, where op-by-op dispatch compiles every op (5x slower)."""
  fn = lambda p, x, **kw: module.apply({'params': p}, x, *static, method=method, **kw)
  return jax.jit(fn)(params, x, **kwargs)


def jit_init(module, x):
  return jax.jit(module.init)(jax.random.key(0), x)['params']


@pytest.fixture(scope='module')
def tiny():
  config = dac_16khz.get_config('tiny')
  gen = generator.Generator.from_config(config.model)
  return config, gen, jit_init(gen, jnp.zeros((2, 640)))


def test_reference_parameter_counts_match_pytorch_dac():
  gen_params, disc_params = summary.param_shapes(dac_16khz.get_config())
  assert summary.count(gen_params) == 74_175_906
  assert summary.count(disc_params) == 42_519_760


def test_summary_reports_bitrate_of_reference():
  hop, frame_rate, bps = summary.bitrate(dac_16khz.get_config().model)
  assert (hop, frame_rate, bps) == (320, 50.0, 6000.0)


@pytest.mark.parametrize('length', [320, 1919])
def test_output_length_equals_input_length(tiny, length):
  _, gen, params = tiny
  audio = jax.random.uniform(jax.random.key(1), (2, length), minval=-0.5, maxval=0.5)
  out = jit_apply(gen, params, audio)
  assert out.audio.shape == (2, length)
  assert out.codes.shape == (2, 3, math.ceil(length / 320))
  assert out.codes.dtype == jnp.int32
  assert bool(jnp.all(jnp.abs(out.audio) < 1.0))


@pytest.mark.parametrize('rates', [(3, 5), (7,)])
def test_odd_strides_keep_exact_length(rates):
  config = dac_16khz.get_config('tiny')
  config.model.encoder_rates = rates
  config.model.decoder_rates = tuple(reversed(rates))
  config.model.latent_dim = 8
  gen = generator.Generator.from_config(config.model)
  audio = jnp.zeros((1, 1001))
  params = jit_init(gen, audio)
  assert jit_apply(gen, params, audio).audio.shape == (1, 1001)
  codes = jit_apply(gen, params, audio, method=gen.encode)
  assert jit_apply(gen, params, codes, 1001, method=gen.decode).shape == (1, 1001)


def test_mismatched_rates_are_refused():
  config = dac_16khz.get_config('tiny')
  config.model.decoder_rates = (8, 5, 4)
  with pytest.raises(ValueError, match='same product'):
    generator.Generator.from_config(config.model)


def test_encode_decode_round_trip_matches_training_forward(tiny):
  _, gen, params = tiny
  audio = jax.random.normal(jax.random.key(2), (2, 960)) * 0.1
  out = jit_apply(gen, params, audio)
  codes = jit_apply(gen, params, audio, method=gen.encode)
  np.testing.assert_array_equal(codes, out.codes)
  decoded = jit_apply(gen, params, codes, 960, method=gen.decode)
  np.testing.assert_allclose(decoded, out.audio, atol=1e-5)


def test_n_quantizers_truncates_the_stack(tiny):
  _, gen, params = tiny
  audio = jax.random.normal(jax.random.key(3), (2, 640)) * 0.1
  full = jit_apply(gen, params, audio, method=gen.encode)
  two = jit_apply(gen, params, audio, 2, method=gen.encode)
  assert two.shape == (2, 2, 2)
  np.testing.assert_array_equal(two, full[:, :2])
  with pytest.raises(ValueError, match='n_quantizers'):
    jit_apply(gen, params, audio, 4, method=gen.encode)


def test_quantizer_dropout_masks_the_first_items_only(tiny):
  config, gen, params = tiny
  batch = 8
  audio = jax.random.normal(jax.random.key(4), (batch, 640)) * 0.1
  out = jit_apply(gen, params, audio, dropout_rng=jax.random.key(5))
  mask = np.asarray(out.level_mask)
  n_dropped = int(batch * config.model.quantizer_dropout)
  assert mask[n_dropped:].all()
  used = mask.sum(axis=1)
  assert ((used >= 1) & (used <= 3)).all()
  # Each row is a prefix of levels: level i used implies level i-1 used.
  assert (np.diff(mask.astype(int), axis=1) <= 0).all()
  no_dropout = jit_apply(gen, params, audio)
  assert np.asarray(no_dropout.level_mask).all()


def test_codes_are_the_cosine_nearest_codebook_rows(tiny):
  _, gen, params = tiny
  vq = params['quantizer']['levels_0']
  codebook = np.asarray(vq['codebook'])
  z_e = np.random.default_rng(0).normal(size=(2, 5, codebook.shape[1])).astype(np.float32)
  from codec import quantizer  # pylint: disable=g-import-not-at-top
  module = quantizer.VectorQuantizer(gen.latent_dim, gen.codebook_size, gen.codebook_dim)
  codes = module.apply({'params': vq}, jnp.asarray(z_e), method=module.nearest)
  cos = (z_e / np.linalg.norm(z_e, axis=-1, keepdims=True)) @ (
      codebook / np.linalg.norm(codebook, axis=-1, keepdims=True)).T
  np.testing.assert_array_equal(codes, cos.argmax(-1))


def test_straight_through_gradient_reaches_the_encoder(tiny):
  """A loss on the output audio alone reaches the encoder only through the straight-through
  estimator (the code choice has no gradient; the quantizer losses would reach it directly)."""
  _, gen, params = tiny
  audio = jnp.sin(jnp.arange(640) * 0.05)[None] * 0.1

  def loss(p):
    return jnp.mean((gen.apply({'params': p}, audio).audio - audio) ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  enc = jax.tree.leaves(grads['encoder'])
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert sum(float(jnp.sum(jnp.abs(g))) for g in enc) > 0


@pytest.mark.parametrize('stride', [2, 3, 5, 8])
def test_transposed_conv_matches_pytorch_definition(stride):
  """y[n] = sum over (j, k) with n = j*s + k - ceil(s/2) of x[j] w[k]; output length L*s."""
  rng = np.random.default_rng(stride)
  x = rng.normal(size=(2, 6, 3)).astype(np.float32)
  module = layers.WNConvTranspose1d(4, stride)
  params = module.init(jax.random.key(0), jnp.asarray(x))['params']
  params = dict(params, bias=jnp.asarray(rng.normal(size=4), jnp.float32))
  y = np.asarray(module.apply({'params': params}, jnp.asarray(x)))
  w = np.asarray(params['kernel'])  # [2s, C_in, C_out]; weight norm is the identity at init
  pad = math.ceil(stride / 2)
  expected = np.zeros((2, 6 * stride, 4), np.float32) + np.asarray(params['bias'])
  for j in range(6):
    for k in range(2 * stride):
      n = j * stride + k - pad
      if 0 <= n < 6 * stride:
        expected[:, n] += x[:, j] @ w[k]
  np.testing.assert_allclose(y, expected, atol=1e-5)


def _direct_conv(x, w, strides, dilation, padding, cotangent=None):
  """float64 numpy cross-correlation of x: [B, *S, C_in] with w: [*K, C_in, C_out].

  With a cotangent (shaped like the output): the gradients (dx, dw) of <cotangent, y> instead.
  """
  nd = w.ndim - 2
  xp = np.pad(x.astype(np.float64), ((0, 0), *padding, (0, 0)))
  out = [(xp.shape[1 + a] - dilation[a] * (w.shape[a] - 1) - 1) // strides[a] + 1 for a in range(nd)]
  y = np.zeros((x.shape[0], *out, w.shape[-1]))
  dxp, dw = np.zeros_like(xp), np.zeros(w.shape)
  for tap in np.ndindex(*w.shape[:nd]):
    index = (slice(None), *(slice(t * d, t * d + (o - 1) * s + 1, s)
                            for t, d, o, s in zip(tap, dilation, out, strides)))
    if cotangent is None:
      y += xp[index] @ w[tap].astype(np.float64)
    else:
      dxp[index] += cotangent @ w[tap].T.astype(np.float64)
      dw[tap] = xp[index].reshape(-1, w.shape[-2]).T @ cotangent.reshape(-1, w.shape[-1])
  if cotangent is None:
    return y
  crop = (slice(None), *(slice(lo, lo + n) for (lo, _), n in zip(padding, x.shape[1:-1])))
  return dxp[crop], dw


@pytest.mark.parametrize('x_shape, w_shape, strides, dilation, padding', [
    ((2, 9, 8), (1, 8, 16), (1,), (1,), ((0, 0),)),  # 1x1: a matrix product
    ((2, 9, 8), (5, 8, 512), (1,), (1,), ((2, 2),)),  # Winograd F(3, 5), whole tiles
    ((2, 12, 8), (5, 8, 512), (1,), (1,), ((0, 0),)),  # .. a partial last tile, no padding
    ((2, 4, 8), (3, 8, 512), (1,), (1,), ((1, 1),)),  # Winograd F(2, 3)
    ((2, 20, 8), (7, 8, 512), (1,), (3,), ((9, 9),)),  # wide, dilated: im2col
    ((2, 70, 128), (7, 128, 130), (1,), (3,), ((9, 9),)),  # k=7: F(4, 4) + F(4, 3), dilated
    ((2, 520, 128), (7, 128, 128), (1,), (3,), ((9, 9),)),  # .. many rows: Winograd backward
    ((2, 520, 130), (7, 130, 128), (1,), (1,), ((6, 2),)),  # .. undilated, uneven padding
    ((2, 200, 8), (5, 8, 512), (3,), (1,), ((2, 2),)),  # wide, strided: polyphase, F(3, 2)
    ((2, 205, 8), (5, 8, 512), (3,), (1,), ((2, 2),)),  # .. a length the stride does not divide
    ((2, 30, 8), (16, 8, 512), (8,), (1,), ((4, 4),)),  # .. few output rows: im2col
    ((2, 12, 8), (2, 8, 512), (1,), (1,), ((0, 1),)),  # Winograd F(3, 2)
    ((2, 20, 8), (7, 8, 16), (1,), (3,), ((9, 9),)),  # XLA's conv
    ((2, 6, 17, 4), (3, 9, 4, 8), (1, 2), (1, 1), ((1, 1), (4, 4))),  # strided 2-D: polyphase dx
    ((2, 20, 1, 4), (5, 1, 4, 8), (3, 1), (1, 1), ((2, 2), (0, 0))),  # (k, 1) on width 1: 1-D
])
def test_every_conv_path_computes_the_same_correlation_and_gradients(x_shape, w_shape, strides,
                                                                     dilation, padding):
  """conv() picks a method by shape; each must match a float64 direct sum, backward included."""
  rng = np.random.default_rng(len(x_shape) * 100 + w_shape[0])
  x = rng.normal(size=x_shape).astype(np.float32)
  w = (rng.normal(size=w_shape) / math.sqrt(np.prod(w_shape[:-1]))).astype(np.float32)
  fn = lambda x, w: cpu_kernels.conv(x, w, strides, dilation, padding)
  y, vjp = jax.vjp(fn, jnp.asarray(x), jnp.asarray(w))
  expected = _direct_conv(x, w, strides, dilation, padding)
  assert y.shape == expected.shape
  np.testing.assert_allclose(y, expected, atol=1e-5 * np.abs(expected).max())
  cotangent = rng.normal(size=expected.shape).astype(np.float32)
  dx, dw = vjp(jnp.asarray(cotangent))
  ref_dx, ref_dw = _direct_conv(x, w, strides, dilation, padding, cotangent.astype(np.float64))
  np.testing.assert_allclose(dx, ref_dx, atol=1e-5 * np.abs(ref_dx).max())
  np.testing.assert_allclose(dw, ref_dw, atol=1e-5 * np.abs(ref_dw).max())


@pytest.mark.parametrize('taps, outputs', sorted(
    {(taps, m) for m, pieces in cpu_kernels.WINOGRAD_PLANS.values() for taps in pieces}))
def test_winograd_transforms_are_exact_correlations(taps, outputs):
  """A^T [(G w) * (B^T d)] is the tile's correlation, exactly in float64, for every plan's piece."""
  at, g, bt = (np.array(m) for m in cpu_kernels.winograd_matrices(taps, outputs))
  rng = np.random.default_rng(taps * 10 + outputs)
  d, w = rng.normal(size=outputs + taps - 1), rng.normal(size=taps)
  direct = [np.dot(w, d[i:i + taps]) for i in range(outputs)]
  np.testing.assert_allclose(at @ ((g @ w) * (bt @ d)), direct, rtol=1e-10, atol=1e-10)


def test_winograd_refuses_tiles_beyond_its_points():
  with pytest.raises(ValueError, match='needs 9 points'):
    cpu_kernels.winograd_matrices(5, 5)


def test_weight_norm_scale_is_per_input_channel_for_transposed_conv():
  module = layers.WNConvTranspose1d(5, 2)
  params = module.init(jax.random.key(0), jnp.zeros((1, 4, 3)))['params']
  assert params['scale'].shape == (3,)
  np.testing.assert_allclose(params['scale'],
                             np.linalg.norm(np.asarray(params['kernel']), axis=(0, 2)), rtol=1e-6)


def test_weight_norm_effective_kernel_at_init_is_the_direction():
  module = layers.WNConv(6, (3,))
  x = jax.random.normal(jax.random.key(1), (1, 10, 4))
  params = module.init(jax.random.key(0), x)['params']
  assert params['scale'].shape == (6,)
  y = module.apply({'params': params}, x)
  ref = jax.lax.conv_general_dilated(x, params['kernel'], (1,), 'VALID',
                                     dimension_numbers=('NWC', 'WIO', 'NWC'))
  np.testing.assert_allclose(y, ref, atol=1e-5)


def test_snake_formula():
  x = jnp.linspace(-3, 3, 12).reshape(1, 3, 4)
  params = {'alpha': jnp.array([0.5, 1.0, 2.0, 3.0])}
  y = layers.Snake().apply({'params': params}, x)
  a = np.asarray(params['alpha'])
  np.testing.assert_allclose(y, x + np.sin(a * x) ** 2 / a, rtol=1e-5)


def test_discriminators_return_logits_and_features():
  config = dac_16khz.get_config('tiny')
  disc = discriminators.Discriminators.from_config(config.discriminator)
  audio = jax.random.normal(jax.random.key(0), (2, 1600))
  params = jit_init(disc, audio)
  results = jit_apply(disc, params, audio)
  assert len(results) == disc.count == 3
  for logits, features in results:
    assert logits.shape[0] == 2 and bool(jnp.all(jnp.isfinite(logits)))
    assert len(features) >= 2
  # Level-invariant: the discriminators see DC-free, peak-normalised audio.
  scaled = jit_apply(disc, params, 0.3 * audio + 0.1)
  np.testing.assert_allclose(scaled[0][0], results[0][0], atol=1e-4)


def test_reference_discriminator_layout():
  disc = discriminators.Discriminators.from_config(dac_16khz.get_config().discriminator)
  shapes = jax.eval_shape(disc.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8000), jnp.float32))
  results = jax.eval_shape(disc.apply, shapes, jax.ShapeDtypeStruct((1, 8000), jnp.float32))
  assert len(results) == 8
  # Band discriminators: 5 bands x 5 convs, the first included (DAC 1.0.0, tests/test_dac_parity.py).
  assert [len(f) for _, f in results] == [5] * 5 + [25] * 3


# Relative RMS error of each conv path (output, dx and dw) against a float64 direct sum of the
# same (dtype-rounded) inputs, at the codec's widths; the bounds are ~2x those measured
# (2026-12-02, CPU). bfloat16: XLA's conv, im2col and the strided 2-D path round once (1.7e-3,
# dx of im2col 3.6e-3); the 2-3 tap Winograd and polyphase paths reach 4.7e-3, the k=5 and k=7
# Winograd plans 2.1e-2: why compute.choose takes XLA's conv in bfloat16 (README.md).
CONV_PATHS = {  # name: (x, w, strides, dilation, padding, fn, float32 bound, bfloat16 bound)
    'xla k7 d3': ((1, 64, 256), (7, 256, 256), (1,), (3,), ((9, 9),),
                  lambda x, w: layers.conv(x, w, (1,), (3,), ((9, 9),)), 5e-6, 6e-3),
    'im2col k7 d3': ((1, 32, 256), (7, 256, 512), (1,), (3,), ((9, 9),),
                     lambda x, w: cpu_kernels.im2col_conv(x, w, (1,), (3,), ((9, 9),)), 5e-6, 8e-3),
    'winograd F(4,4)+F(4,3) d3': (
        (1, 64, 256), (7, 256, 256), (1,), (3,), ((9, 9),),
        lambda x, w: cpu_kernels.winograd_conv1d(x, w, (9, 9), 3, 4, (4, 3)), 5e-6, 4e-2),
    'winograd k7, Winograd backward': (
        (1, 64, 256), (7, 256, 256), (1,), (3,), ((9, 9),),
        lambda x, w: cpu_kernels.winograd_conv1d_fast_grad(x, w, (9, 9), 3, 4, (4, 3)), 5e-6, 4e-2),
    'winograd F(3,5)': ((1, 24, 1024), (5, 1024, 1024), (1,), (1,), ((2, 2),),
                        lambda x, w: cpu_kernels.winograd_conv1d(x, w, (2, 2), 1, 3, (5,)),
                        5e-6, 4e-2),
    'winograd F(2,3)': ((1, 16, 1024), (3, 1024, 512), (1,), (1,), ((1, 1),),
                        lambda x, w: cpu_kernels.winograd_conv1d(x, w, (1, 1), 1, 2, (3,)),
                        5e-6, 1e-2),
    'winograd F(3,2)': ((1, 24, 512), (2, 512, 1024), (1,), (1,), ((0, 1),),
                        lambda x, w: cpu_kernels.winograd_conv1d(x, w, (0, 1), 1, 3, (2,)),
                        5e-6, 1e-2),
    'polyphase k5 s3': ((1, 60, 512), (5, 512, 1024), (3,), (1,), ((2, 2),),
                        lambda x, w: cpu_kernels.polyphase_conv1d(x, w, 3, (2, 2)), 5e-6, 1e-2),
    'strided 2-D, polyphase dx': (
        (1, 8, 33, 32), (3, 9, 32, 32), (1, 2), (1, 1), ((1, 1), (4, 4)),
        lambda x, w: cpu_kernels.strided_conv(x, w, (1, 2), ((1, 1), (4, 4))), 5e-6, 6e-3),
}


def _relative_rms(got, want) -> float:
  got = np.asarray(got, np.float64)
  return float(np.sqrt(np.mean((got - want) ** 2) / np.mean(want ** 2)))


@pytest.mark.parametrize('name', CONV_PATHS)
def test_conv_paths_error_bounds_in_float32_and_bfloat16_at_codec_widths(name):
  x_shape, w_shape, strides, dilation, padding, fn, *bounds = CONV_PATHS[name]
  rng = np.random.default_rng(0)
  x = rng.normal(size=x_shape).astype(np.float32)
  w = (rng.normal(size=w_shape) / math.sqrt(np.prod(w_shape[:-1]))).astype(np.float32)
  for dtype, bound in zip((jnp.float32, jnp.bfloat16), bounds):
    xd, wd = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
    y, vjp = jax.vjp(jax.jit(fn), xd, wd)
    assert y.dtype == dtype
    x64, w64 = np.asarray(xd, np.float64), np.asarray(wd, np.float64)
    want = _direct_conv(x64, w64, strides, dilation, padding)
    cotangent = jnp.asarray(rng.normal(size=want.shape), dtype)
    dx, dw = vjp(cotangent)
    want_dx, want_dw = _direct_conv(x64, w64, strides, dilation, padding,
                                    np.asarray(cotangent, np.float64))
    for what, got, ref in (('y', y, want), ('dx', dx, want_dx), ('dw', dw, want_dw)):
      error = _relative_rms(got, ref)
      assert error < bound, f'{name}, {jnp.dtype(dtype).name}: {what} relative RMS error {error:.2e}'


@pytest.mark.parametrize('kernels', [compute.CPU, compute.XLA])
def test_snake_values_and_gradients_against_float64(kernels):
  x = np.random.default_rng(0).normal(size=(4, 64, 32)).astype(np.float32) * 3
  alpha = np.linspace(0.2, 3.0, 32).astype(np.float32)
  y, vjp = jax.vjp(jax.jit(lambda x, a: layers.snake(x, a, kernels)), jnp.asarray(x),
                   jnp.asarray(alpha))
  x64, a64 = x.astype(np.float64), alpha.astype(np.float64)
  np.testing.assert_allclose(y, x64 + np.sin(a64 * x64) ** 2 / a64, atol=2e-6)
  dx, dalpha = vjp(jnp.ones_like(y))
  s2 = np.sin(2 * a64 * x64)
  np.testing.assert_allclose(dx, 1 + s2, atol=2e-6)
  want = np.sum(x64 * s2 / a64 - np.sin(a64 * x64) ** 2 / a64 ** 2, axis=(0, 1))
  np.testing.assert_allclose(dalpha, want, rtol=1e-5, atol=1e-4)
