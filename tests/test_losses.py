"""Losses and spectral utilities against independent numpy/librosa computations."""
import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from codec import losses, spectral

SR = 16000
T = 4000
WINDOWS = (64, 256)
N_MELS = (8, 32)


def _audio(seed, shape=(2, T)):
  return np.random.default_rng(seed).uniform(-0.5, 0.5, shape).astype(np.float32)


def _np_stft(x, window, hop):
  """librosa's centred, reflect-padded STFT -> complex[B, N, F]."""
  return np.stack([librosa.stft(xi, n_fft=window, hop_length=hop, window='hann', center=True,
                                pad_mode='reflect') for xi in x]).transpose(0, 2, 1)


def _np_stft_match_stride(x, window, hop):
  """Independent audiotools match_stride STFT: explicit padding, framing loop, np.fft."""
  length = x.shape[-1]
  right_pad = int(np.ceil(length / hop)) * hop - length
  pad = (window - hop) // 2
  x = np.pad(x, [(0, 0), (pad, pad + right_pad)], mode='reflect')
  x = np.pad(x, [(0, 0), (window // 2, window // 2)], mode='reflect')
  n = 1 + (x.shape[-1] - window) // hop
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)
  frames = np.stack([x[:, i * hop:i * hop + window] * hann for i in range(n)], axis=1)
  return np.fft.rfft(frames.astype(np.float64), axis=-1)[:, 2:-2]


def _np_mel(x, window, mels):
  return np.stack([librosa.feature.melspectrogram(
      y=xi, sr=SR, n_fft=window, hop_length=window // 4, power=1.0, center=True,
      pad_mode='reflect', n_mels=mels, htk=False, norm='slaney') for xi in x]).transpose(0, 2, 1)


def _np_mel_loss(x, y, windows, n_mels, clamp=1e-5):
  total = 0.0
  for window, mels in zip(windows, n_mels):
    lx = np.log10(np.maximum(_np_mel(x, window, mels), clamp))
    ly = np.log10(np.maximum(_np_mel(y, window, mels), clamp))
    total += np.mean(np.abs(lx - ly))
  return total


@pytest.fixture(scope='module')
def mel_loss():
  return jax.jit(lambda x, y: losses.multiscale_mel_loss(x, y, sample_rate=SR, windows=WINDOWS,
                                                         n_mels=N_MELS))


@pytest.fixture(scope='module')
def stft_loss():
  return jax.jit(lambda x, y: losses.multires_stft_loss(x, y, windows=WINDOWS))


# ---- spectral


@pytest.mark.parametrize('window', [32, 256, 2048])
def test_stft_matches_librosa(window):
  x = _audio(0)
  got = np.asarray(spectral.stft(x, window_length=window, hop_length=window // 4))
  want = _np_stft(x, window, window // 4)
  assert got.dtype == np.complex64
  assert got.shape == want.shape == (2, 1 + T // (window // 4), window // 2 + 1)
  np.testing.assert_allclose(got, want, atol=2e-6 * np.abs(want).max())


def test_stft_odd_hop_matches_librosa():
  x = _audio(1, (1, 1001))
  got = np.asarray(spectral.stft(x, window_length=100, hop_length=30))
  want = _np_stft(x, 100, 30)
  np.testing.assert_allclose(got, want, atol=2e-6 * np.abs(want).max())


@pytest.mark.parametrize('length', [4000, 4001, 3967])
@pytest.mark.parametrize('window', [256, 2048])
def test_stft_match_stride(window, length):
  hop = window // 4
  x = _audio(2, (2, length))
  got = np.asarray(spectral.stft(x, window_length=window, hop_length=hop, match_stride=True))
  assert got.shape == (2, -(-length // hop), window // 2 + 1)
  want = _np_stft_match_stride(x, window, hop)
  np.testing.assert_allclose(got, want, atol=2e-6 * np.abs(want).max())


def test_stft_match_stride_rejects_other_hops():
  with pytest.raises(ValueError):
    spectral.stft(_audio(0), window_length=256, hop_length=128, match_stride=True)


def test_stft_leading_dims_and_bf16():
  x = _audio(3, (2, 3, 1000))
  got = spectral.stft(jnp.asarray(x, jnp.bfloat16), window_length=64, hop_length=16)
  assert got.shape == (2, 3, 1 + 1000 // 16, 33) and got.dtype == jnp.complex64


def test_mel_filterbank_matches_librosa():
  fb = spectral.mel_filterbank(sample_rate=SR, n_fft=512, n_mels=40)
  assert fb.shape == (257, 40) and fb.dtype == np.float32
  np.testing.assert_allclose(fb, librosa.filters.mel(sr=SR, n_fft=512, n_mels=40).T, rtol=1e-6)
  assert spectral.mel_filterbank(sample_rate=SR, n_fft=512, n_mels=40) is fb  # cached


@pytest.mark.parametrize('window,mels', [(32, 5), (512, 80)])
def test_mel_spectrogram_matches_librosa(window, mels):
  x = _audio(4)
  got = np.asarray(spectral.mel_spectrogram(x, sample_rate=SR, window_length=window, n_mels=mels))
  want = _np_mel(x, window, mels)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * want.max())


# ---- reconstruction losses


def test_mel_loss_matches_numpy(mel_loss):
  x, y = _audio(5), _audio(6)
  y = 0.7 * x + 0.3 * y
  np.testing.assert_allclose(mel_loss(x, y), _np_mel_loss(x, y, WINDOWS, N_MELS), rtol=1e-4)


def test_mel_loss_dac_defaults_match_numpy():
  windows, n_mels = (32, 64, 128, 256, 512, 1024, 2048), (5, 10, 20, 40, 80, 160, 320)
  x, y = _audio(7, (1, T)), _audio(8, (1, T))
  got = losses.multiscale_mel_loss(x, y, sample_rate=SR, windows=windows, n_mels=n_mels)
  np.testing.assert_allclose(got, _np_mel_loss(x, y, windows, n_mels), rtol=1e-4)


def test_mel_loss_properties(mel_loss):
  x, y = _audio(9), _audio(10)
  assert float(mel_loss(x, x)) == 0.0
  np.testing.assert_allclose(mel_loss(x, y), mel_loss(y, x), rtol=1e-6)
  assert float(mel_loss(x, y)) > 0.1


def test_mel_loss_clamps_silence(mel_loss):
  # log10(max(0, 1e-5)) = -5 per bin: silent vs silent is 0, finite and with finite gradient.
  zeros = np.zeros((2, T), np.float32)
  assert float(mel_loss(zeros, zeros)) == 0.0
  grad = jax.grad(lambda y: mel_loss(zeros, y))(zeros)
  assert np.all(np.isfinite(grad))


def test_waveform_l1():
  x, y = _audio(11), _audio(12)
  np.testing.assert_allclose(losses.waveform_l1_loss(x, y), np.mean(np.abs(x - y)), rtol=1e-6)
  assert float(losses.waveform_l1_loss(x, x)) == 0.0


def test_stft_loss_matches_numpy(stft_loss):
  x, y = _audio(13), _audio(14)
  want = 0.0
  for window in WINDOWS:
    mx, my = np.abs(_np_stft(x, window, window // 4)), np.abs(_np_stft(y, window, window // 4))
    lx = np.log10(np.maximum(mx, 1e-5) ** 2)
    ly = np.log10(np.maximum(my, 1e-5) ** 2)
    want += np.mean(np.abs(lx - ly)) + np.mean(np.abs(mx - my))
  np.testing.assert_allclose(stft_loss(x, y), want, rtol=1e-4)
  assert float(stft_loss(x, x)) == 0.0


@pytest.mark.parametrize('name', ['mel', 'stft', 'l1'])
def test_reconstruction_gradients_finite(name, mel_loss, stft_loss):
  fn = {'mel': mel_loss, 'stft': stft_loss, 'l1': losses.waveform_l1_loss}[name]
  x, y = _audio(15), _audio(16)
  for target in (y, x):  # also at the (non-smooth) optimum estimate == reference
    grad = jax.grad(lambda e: fn(x, e))(target)
    assert grad.shape == x.shape and np.all(np.isfinite(grad))
  assert np.abs(jax.grad(lambda e: fn(x, e))(y)).max() > 0


# ---- GAN losses


def _logits(seed):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.standard_normal(s).astype(np.float32)) for s in [(2, 1, 7), (2, 5, 3, 1)]]


def test_discriminator_loss_values():
  real, fake = _logits(0), _logits(1)
  lsgan = losses.discriminator_loss(real_logits=real, fake_logits=fake)
  hinge = losses.discriminator_loss(real_logits=real, fake_logits=fake, gan='hinge')
  r, f = [np.asarray(a) for a in real], [np.asarray(a) for a in fake]
  want_ls = [np.mean(f[d] ** 2) + np.mean((1 - r[d]) ** 2) for d in range(2)]
  want_hi = [np.mean(np.maximum(1 - r[d], 0)) + np.mean(np.maximum(1 + f[d], 0)) for d in range(2)]
  assert lsgan.shape == hinge.shape == (2,)
  np.testing.assert_allclose(lsgan, want_ls, rtol=1e-6)
  np.testing.assert_allclose(hinge, want_hi, rtol=1e-6)


def test_generator_loss_values():
  fake = _logits(2)
  f = [np.asarray(a) for a in fake]
  np.testing.assert_allclose(losses.generator_adversarial_loss(fake_logits=fake),
                             [np.mean((1 - a) ** 2) for a in f], rtol=1e-6)
  np.testing.assert_allclose(losses.generator_adversarial_loss(fake_logits=fake, gan='hinge'),
                             [-np.mean(a) for a in f], rtol=1e-6)


@pytest.mark.parametrize('gan,constant', [('lsgan', 0.5), ('hinge', 0.0)])
def test_no_learning_value(gan, constant):
  logits = [jnp.full((2, 1, 9), constant), jnp.full((2, 4, 3), constant)]
  got = losses.discriminator_loss(real_logits=logits, fake_logits=logits, gan=gan)
  np.testing.assert_allclose(got, [losses.no_learning_value(gan)] * 2, rtol=1e-6)
  # lsgan: 0.5 is the minimum over constant outputs.
  if gan == 'lsgan':
    for c in (0.3, 0.7):
      off = [jnp.full((3,), c)]
      assert float(losses.discriminator_loss(real_logits=off, fake_logits=off)[0]) > 0.5


def test_unknown_gan_raises():
  with pytest.raises(ValueError):
    losses.no_learning_value('wgan')
  with pytest.raises(ValueError):
    losses.generator_adversarial_loss(fake_logits=_logits(0), gan='wgan')


def test_gan_losses_jit_and_grad():
  real, fake = _logits(3), _logits(4)
  for gan in ('lsgan', 'hinge'):
    d = jax.jit(lambda r, f: jnp.sum(losses.discriminator_loss(real_logits=r, fake_logits=f,
                                                               gan=gan)))
    g_real, g_fake = jax.grad(d, argnums=(0, 1))(real, fake)
    g = jax.grad(lambda f: jnp.sum(losses.generator_adversarial_loss(fake_logits=f, gan=gan)))(fake)
    for leaf in jax.tree_util.tree_leaves((g_real, g_fake, g)):
      assert np.all(np.isfinite(leaf))


def _features(seed):
  rng = np.random.default_rng(seed)
  return [[jnp.asarray(rng.standard_normal(s).astype(np.float32)) for s in layers]
          for layers in [[(2, 4, 10), (2, 8, 5)], [(2, 3, 6, 2)]]]


def test_feature_matching_values():
  real, fake = _features(0), _features(1)
  got = losses.feature_matching_loss(real_features=real, fake_features=fake)
  want = [sum(np.mean(np.abs(np.asarray(f) - np.asarray(r))) for r, f in zip(rl, fl))
          for rl, fl in zip(real, fake)]
  assert got.shape == (2,)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(losses.feature_matching_loss(real_features=real, fake_features=real),
                             [0.0, 0.0])


def test_feature_matching_stops_real_gradient():
  real, fake = _features(2), _features(3)
  loss = lambda r, f: jnp.sum(losses.feature_matching_loss(real_features=r, fake_features=f))
  g_real, g_fake = jax.grad(loss, argnums=(0, 1))(real, fake)
  for leaf in jax.tree_util.tree_leaves(g_real):
    assert np.all(leaf == 0)
  assert all(np.abs(leaf).max() > 0 for leaf in jax.tree_util.tree_leaves(g_fake))
