"""Metrics against independent numpy/librosa computations, plus their invariances."""
import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from codec import losses, metrics

SR = 16000
T = 4000
WINDOWS = (64, 256)
N_MELS = (8, 32)


def _audio(seed, shape=(3, T)):
  return np.random.default_rng(seed).uniform(-0.5, 0.5, shape).astype(np.float32)


def _noisy(seed, scale=0.1):
  x = _audio(seed)
  return x, x + scale * _audio(seed + 100)


@pytest.fixture(scope='module')
def jitted():
  return {
      'snr': jax.jit(metrics.snr_db),
      'si_sdr': jax.jit(metrics.si_sdr_db),
      'amp': jax.jit(metrics.amplitude_ratio),
      'mel': jax.jit(lambda x, y: metrics.mel_distance(x, y, sample_rate=SR, windows=WINDOWS,
                                                       n_mels=N_MELS)),
      'usage': jax.jit(metrics.codebook_usage, static_argnums=1),
  }


def test_snr_matches_numpy(jitted):
  x, y = _noisy(0)
  want = 10 * np.log10(np.sum(x ** 2, -1) / np.sum((x - y) ** 2, -1))
  got = jitted['snr'](x, y)
  assert got.shape == (3,)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(metrics.snr_db(x[0], y[0]), want[0], rtol=1e-5)  # f32[T] input
  assert np.all(np.asarray(jitted['snr'](x, x)) > 60)


def _np_si_sdr(x, y):
  x = x - x.mean(-1, keepdims=True)
  y = y - y.mean(-1, keepdims=True)
  target = (np.sum(x * y, -1, keepdims=True) / np.sum(x * x, -1, keepdims=True)) * x
  return 10 * np.log10(np.sum(target ** 2, -1) / np.sum((y - target) ** 2, -1))


def test_si_sdr_matches_numpy(jitted):
  x, y = _noisy(1, scale=0.3)
  y = 0.6 * y + 0.05  # a gain and a DC offset the metric must ignore
  got = jitted['si_sdr'](x, y)
  assert got.shape == (3,)
  np.testing.assert_allclose(got, _np_si_sdr(x.astype(np.float64), y.astype(np.float64)),
                             rtol=1e-4)
  np.testing.assert_allclose(metrics.si_sdr_db(x[1], y[1]), got[1], rtol=1e-5)


def test_si_sdr_scale_invariant(jitted):
  x, y = _noisy(2, scale=0.5)
  base = jitted['si_sdr'](x, y)
  for gain in (0.1, 3.0):
    np.testing.assert_allclose(jitted['si_sdr'](x, gain * y), base, rtol=1e-4)
  assert np.all(np.asarray(jitted['si_sdr'](x, x)) > 60)
  # Differs from SNR: SNR punishes the gain.
  assert np.all(np.asarray(jitted['snr'](x, 0.5 * x)) < 7)


def test_amplitude_ratio(jitted):
  x, y = _noisy(3)
  np.testing.assert_allclose(jitted['amp'](x, x), 100.0, rtol=1e-6)
  np.testing.assert_allclose(jitted['amp'](x, 0.5 * x), 50.0, rtol=1e-6)
  want = 100 * np.sqrt(np.mean(y ** 2, -1)) / np.sqrt(np.mean(x ** 2, -1))
  np.testing.assert_allclose(jitted['amp'](x, y), want, rtol=1e-5)
  assert np.all(np.isfinite(metrics.amplitude_ratio(np.zeros((2, 8)), np.zeros((2, 8)))))


def test_mel_distance_matches_librosa(jitted):
  x, y = _noisy(4, scale=0.5)
  want = np.zeros(3)
  for window, mels in zip(WINDOWS, N_MELS):
    for b in range(3):
      m = [librosa.feature.melspectrogram(y=s[b], sr=SR, n_fft=window, hop_length=window // 4,
                                          power=1.0, center=True, pad_mode='reflect', n_mels=mels,
                                          htk=False, norm='slaney') for s in (x, y)]
      want[b] += np.mean(np.abs(np.log10(np.maximum(m[0], 1e-5))
                                - np.log10(np.maximum(m[1], 1e-5))))
  got = jitted['mel'](x, y)
  assert got.shape == (3,)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  # The loss is the batch mean of the same per-item distance.
  loss = losses.multiscale_mel_loss(x, y, sample_rate=SR, windows=WINDOWS, n_mels=N_MELS)
  np.testing.assert_allclose(loss, np.mean(np.asarray(got)), rtol=1e-6)
  np.testing.assert_allclose(jitted['mel'](x, x), 0.0)


def test_mel_distance_single_item_and_defaults():
  x, y = _noisy(5)
  got = metrics.mel_distance(x[0, :2048], y[0, :2048], sample_rate=SR)  # DAC scales, f32[T]
  assert got.shape == () and np.isfinite(got) and float(got) > 0


def _np_usage(codes, k, mask):
  perplexity, fraction = [], []
  for q in range(codes.shape[1]):
    counts = np.bincount(codes[mask[:, q], q].ravel(), minlength=k)
    p = counts[counts > 0] / counts.sum()
    perplexity.append(np.exp(-np.sum(p * np.log(p))))
    fraction.append(np.count_nonzero(counts) / k)
  return np.array(perplexity), np.array(fraction)


def test_codebook_usage_matches_bincount(jitted):
  rng = np.random.default_rng(6)
  k = 16
  codes = rng.integers(0, k, (5, 3, 20)).astype(np.int32)
  codes[:, 2] = rng.integers(0, 3, (5, 20))  # a level using few codes
  mask = np.ones((5, 3), bool)
  mask[:2, 1:] = False  # quantizer dropout: items 0, 1 used only the first level
  for m in (None, mask):
    perplexity, fraction = jitted['usage'](codes, k, m)
    want = _np_usage(codes, k, np.ones((5, 3), bool) if m is None else m)
    assert perplexity.shape == fraction.shape == (3,)
    np.testing.assert_allclose(perplexity, want[0], rtol=1e-5)
    np.testing.assert_allclose(fraction, want[1], rtol=1e-6)


def test_codebook_usage_extremes():
  k = 8
  one_code = np.zeros((2, 2, 10), np.int32)
  uniform = np.tile(np.arange(k, dtype=np.int32), (2, 2, 2))
  perplexity, fraction = metrics.codebook_usage(one_code, k)
  np.testing.assert_allclose(perplexity, 1.0)
  np.testing.assert_allclose(fraction, 1 / k)
  perplexity, fraction = metrics.codebook_usage(uniform, k)
  np.testing.assert_allclose(perplexity, k, rtol=1e-5)
  np.testing.assert_allclose(fraction, 1.0)
  # A level that no item used reports zeros, not NaN.
  perplexity, fraction = metrics.codebook_usage(uniform, k, np.array([[True, False]] * 2))
  np.testing.assert_allclose(perplexity, [k, 0.0], rtol=1e-5)
  np.testing.assert_allclose(fraction, [1.0, 0.0])


def test_metrics_accept_numpy_float64():
  x, y = _noisy(7)
  x64, y64 = x.astype(np.float64), y.astype(np.float64)
  for fn in (metrics.snr_db, metrics.si_sdr_db, metrics.amplitude_ratio):
    out = fn(x64, y64)
    assert out.dtype == jnp.float32 and out.shape == (3,)


def test_code_counts_add_up_over_batches_and_skip_padding_rows():
  rng = np.random.default_rng(8)
  k = 16
  codes = rng.integers(0, k, (6, 3, 20)).astype(np.int32)
  mask = np.ones((6, 3), bool)
  mask[0, 2] = False
  whole = metrics.code_counts(codes, k, mask)
  halves = metrics.code_counts(codes[:3], k, mask[:3]) + metrics.code_counts(codes[3:], k, mask[3:])
  np.testing.assert_array_equal(whole, halves)
  for q in range(3):
    np.testing.assert_array_equal(whole[q], np.bincount(codes[mask[:, q], q].ravel(), minlength=k))
  padded = metrics.code_counts(np.concatenate([codes, codes[:2]]), k,
                               weights=np.array([1.0] * 6 + [0.0] * 2))
  np.testing.assert_array_equal(padded, metrics.code_counts(codes, k))


def test_codebook_statistics_of_counts():
  counts = np.zeros((3, 8), np.float32)
  counts[0] = 5.0  # uniform: 3 bits, perplexity 8
  counts[1, :2] = [30.0, 10.0]  # two codes, p = 3/4, 1/4
  stats = metrics.codebook_statistics(counts, frame_rate=50.0)  # level 2 never used
  h = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))
  np.testing.assert_allclose(stats['entropy_bits'], [3.0, h, 0.0], rtol=1e-6)
  np.testing.assert_allclose(stats['perplexity'], [8.0, 2 ** h, 0.0], rtol=1e-5)
  np.testing.assert_allclose(stats['usage'], [1.0, 0.25, 0.0])
  np.testing.assert_allclose(stats['dead_codes'], [0, 6, 8])
  np.testing.assert_allclose(stats['frames'], [40, 40, 0])
  np.testing.assert_allclose(stats['entropy_kbps'], 50 * (3 + h) / 1000, rtol=1e-6)
  np.testing.assert_allclose(stats['nominal_kbps'], 50 * 3 * 3 / 1000, rtol=1e-6)
