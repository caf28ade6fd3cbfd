"""Loss functions: pure, jit-friendly, each documented with shapes and formula.

Shapes use dimension letters: B batch, T samples, N frames, C channels, M mel bands,
D discriminators.
"""
import jax
import jax.numpy as jnp

from codec.spectral import mel_spectrogram, stft


def commitment_loss(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
  """Pulls the encoder towards its codes: mean_{N,C} (z_e - sg(z_q))^2 per item.

  z_e, z_q: f32[B, N, C] -> f32[B]
  """
  return jnp.mean(jnp.square(z_e - jax.lax.stop_gradient(z_q)), axis=(1, 2))


def codebook_loss(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
  """Pulls the codes towards the encoder: mean_{N,C} (sg(z_e) - z_q)^2 per item.

  z_e, z_q: f32[B, N, C] -> f32[B]
  """
  return jnp.mean(jnp.square(jax.lax.stop_gradient(z_e) - z_q), axis=(1, 2))


# ---- Reconstruction losses (DAC defaults: ../shared/REFERENCE.md).


def _log10_l1(x: jax.Array, y: jax.Array, clamp: float, axes) -> jax.Array:
  """mean over `axes` of |log10(max(x, clamp)) - log10(max(y, clamp))|.

  The clamp keeps silent bins finite with zero gradient. Computed as |ln - ln| / ln 10 rather
  than a difference of log10s: XLA fuses `ln(x) * c - ln(y) * c` into an FMA, which leaves
  ~1e-8 for x == y instead of exactly 0.
  """
  diff = jnp.log(jnp.maximum(x, clamp)) - jnp.log(jnp.maximum(y, clamp))
  return jnp.mean(jnp.abs(diff), axis=axes) / jnp.log(10.0)


def multiscale_mel_distance(reference: jax.Array, estimate: jax.Array, *, sample_rate: int,
                            windows: tuple[int, ...], n_mels: tuple[int, ...],
                            clamp: float = 1e-5) -> jax.Array:
  """Per-item multiscale log-mel L1 (DAC MelSpectrogramLoss, log_weight 1, mag_weight 0, pow 1).

  reference, estimate: f32[B, T] -> f32[B]
  d_b = sum_s mean_{N,M} |log10(max(mel_s(ref_b), clamp)) - log10(max(mel_s(est_b), clamp))|
  with mel_s the magnitude mel spectrogram at window windows[s] (hop W/4, n_mels[s] bands, fmin 0,
  fmax Nyquist). The loss is its batch mean; metrics.mel_distance reports it per item.
  """
  if len(windows) != len(n_mels):
    raise ValueError(f'{len(windows)} mel windows but {len(n_mels)} n_mels')
  # One spectrogram of the stacked pair per scale: one FFT and matmul instead of two, and half
  # the traced ops (compile time).
  both = jnp.stack([reference, estimate])
  total = 0.0
  for window, mels in zip(windows, n_mels):
    mel = mel_spectrogram(both, sample_rate=sample_rate, window_length=window, n_mels=mels)
    total = total + _log10_l1(mel[0], mel[1], clamp, axes=(-2, -1))
  return total


def multiscale_mel_loss(reference: jax.Array, estimate: jax.Array, *, sample_rate: int,
                        windows: tuple[int, ...], n_mels: tuple[int, ...],
                        clamp: float = 1e-5) -> jax.Array:
  """DAC multiscale mel loss: mean_B of multiscale_mel_distance.

  reference, estimate: f32[B, T] -> f32[]. Every item has the same number of frames, so the
  batch mean of per-item means equals DAC's mean over the whole batch.
  """
  return jnp.mean(multiscale_mel_distance(reference, estimate, sample_rate=sample_rate,
                                          windows=windows, n_mels=n_mels, clamp=clamp))


def waveform_l1_loss(reference: jax.Array, estimate: jax.Array) -> jax.Array:
  """mean_{B,T} |reference - estimate|.  reference, estimate: f32[B, T] -> f32[]"""
  return jnp.mean(jnp.abs(reference - estimate))


def multires_stft_loss(reference: jax.Array, estimate: jax.Array, *, windows: tuple[int, ...],
                       clamp: float = 1e-5) -> jax.Array:
  """DAC MultiScaleSTFTLoss (hop W/4, match_stride False, log_weight 1, mag_weight 1, pow 2).

  reference, estimate: f32[B, T] -> f32[]
  L = sum_s mean |log10(max(|X_s|, clamp)^2) - log10(max(|Y_s|, clamp)^2)| + mean ||X_s| - |Y_s||
  with X_s, Y_s the STFTs of reference and estimate at window windows[s].
  """
  both = jnp.stack([reference, estimate])  # one STFT for the pair, as in the mel loss
  total = jnp.zeros((), jnp.float32)
  for window in windows:
    mag = jnp.abs(stft(both, window_length=window, hop_length=window // 4))
    # DAC clamps before squaring, so log10(max(|X|, clamp)^2) = 2 log10(max(|X|, clamp)).
    log_term = 2.0 * _log10_l1(mag[0], mag[1], clamp, axes=None)
    total = total + log_term + jnp.mean(jnp.abs(mag[0] - mag[1]))
  return total


# ---- GAN losses over D discriminators. Each returns f32[D], one loss per discriminator: the
# trainer sums them for the gradient (as DAC does) and reports the mean.

_GANS = ('lsgan', 'hinge')


def _check_gan(gan: str) -> None:
  if gan not in _GANS:
    raise ValueError(f'unknown gan {gan!r}; expected one of {_GANS}')


def discriminator_loss(*, real_logits: list[jax.Array], fake_logits: list[jax.Array],
                       gan: str = 'lsgan') -> jax.Array:
  """Per-discriminator loss of the discriminators.

  real_logits, fake_logits: D arrays of any shape (the logits of each discriminator) -> f32[D]
  lsgan: mean(fake^2) + mean((1 - real)^2);  hinge: mean(relu(1 - real)) + mean(relu(1 + fake)).
  The caller passes fake logits computed from stop_gradient(reconstruction).
  """
  _check_gan(gan)
  if len(real_logits) != len(fake_logits):
    raise ValueError(f'{len(real_logits)} real but {len(fake_logits)} fake logits')
  losses = []
  for real, fake in zip(real_logits, fake_logits):
    real, fake = real.astype(jnp.float32), fake.astype(jnp.float32)
    if gan == 'lsgan':
      losses.append(jnp.mean(jnp.square(fake)) + jnp.mean(jnp.square(1.0 - real)))
    else:
      losses.append(jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))
  return jnp.stack(losses)


def generator_adversarial_loss(*, fake_logits: list[jax.Array], gan: str = 'lsgan') -> jax.Array:
  """Per-discriminator adversarial loss of the generator.

  fake_logits: D arrays of any shape -> f32[D]
  lsgan: mean((1 - fake)^2);  hinge: -mean(fake), the standard hinge generator loss (SAGAN,
  MelGAN); unlike mean(relu(1 - fake)) it keeps a gradient once fake logits pass 1.
  """
  _check_gan(gan)
  losses = []
  for fake in fake_logits:
    fake = fake.astype(jnp.float32)
    if gan == 'lsgan':
      losses.append(jnp.mean(jnp.square(1.0 - fake)))
    else:
      losses.append(-jnp.mean(fake))
  return jnp.stack(losses)


def feature_matching_loss(*, real_features: list[list[jax.Array]],
                          fake_features: list[list[jax.Array]]) -> jax.Array:
  """Per-discriminator feature-matching L1.

  real_features, fake_features: D lists of per-layer feature maps (logits excluded) -> f32[D]
  L_d = sum_l mean |f_fake[d][l] - sg(f_real[d][l])|: the real features are targets only, so no
  gradient flows into the discriminator's real branch.
  """
  if len(real_features) != len(fake_features):
    raise ValueError(f'{len(real_features)} real but {len(fake_features)} fake feature lists')
  losses = []
  for real_layers, fake_layers in zip(real_features, fake_features):
    if len(real_layers) != len(fake_layers):
      raise ValueError(f'{len(real_layers)} real but {len(fake_layers)} fake layers')
    loss = jnp.zeros((), jnp.float32)
    for real, fake in zip(real_layers, fake_layers):
      real = jax.lax.stop_gradient(real.astype(jnp.float32))
      loss = loss + jnp.mean(jnp.abs(fake.astype(jnp.float32) - real))
    losses.append(loss)
  return jnp.stack(losses)


def no_learning_value(gan: str) -> float:
  """Per-discriminator loss of a discriminator that has learned nothing (health monitor).

  lsgan: a constant output c minimises c^2 + (1 - c)^2 at c = 0.5, giving 0.5.
  hinge: a constant output c in [-1, 1] gives (1 - c) + (1 + c) = 2.0.
  """
  _check_gan(gan)
  return 0.5 if gan == 'lsgan' else 2.0


def initial_value(gan: str) -> float:
  """Per-discriminator loss at initialisation, outputs ~0 (health monitor).

  lsgan: 0^2 + (1 - 0)^2 = 1.0; hinge: (1 - 0) + (1 + 0) = 2.0 (its no-learning value too).
  """
  _check_gan(gan)
  return 1.0 if gan == 'lsgan' else 2.0
