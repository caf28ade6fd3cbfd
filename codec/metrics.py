"""Evaluation metrics: pure jnp functions, usable on numpy arrays and inside jax.jit.

Audio inputs are f32[..., T] (typically f32[B, T]); every metric reduces over the last axis and
returns one value per item, f32[...] (the caller averages). Shapes use dimension letters:
B batch, T samples, Q quantizer levels, N frames, K codebook size.
"""
import jax
import jax.numpy as jnp

from codec.losses import multiscale_mel_distance

# DAC's mel-loss scales (../shared/REFERENCE.md), the paper's "mel distance".
DAC_MEL_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)
DAC_MEL_BINS = (5, 10, 20, 40, 80, 160, 320)


def _f32(x) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def snr_db(reference: jax.Array, estimate: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Signal-to-noise ratio in dB.

  reference, estimate: f32[..., T] -> f32[...]
  snr = 10 log10((sum_T ref^2 + eps) / (sum_T (ref - est)^2 + eps)); eps keeps identical inputs
  finite (large) and silence at 0 dB.
  """
  reference, estimate = _f32(reference), _f32(estimate)
  signal = jnp.sum(jnp.square(reference), axis=-1)
  noise = jnp.sum(jnp.square(reference - estimate), axis=-1)
  return 10.0 * jnp.log10((signal + eps) / (noise + eps))


def si_sdr_db(reference: jax.Array, estimate: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Scale-invariant SDR in dB (Le Roux et al. 2019), on zero-mean signals.

  reference, estimate: f32[..., T] -> f32[...]
  r, e zero-mean; alpha = <e, r> / ||r||^2; target = alpha r;
  si_sdr = 10 log10(||target||^2 / ||e - target||^2)  (eps in each ratio against 0/0).
  """
  reference, estimate = _f32(reference), _f32(estimate)
  reference = reference - jnp.mean(reference, axis=-1, keepdims=True)
  estimate = estimate - jnp.mean(estimate, axis=-1, keepdims=True)
  alpha = (jnp.sum(estimate * reference, axis=-1, keepdims=True)
           / (jnp.sum(jnp.square(reference), axis=-1, keepdims=True) + eps))
  target = alpha * reference
  signal = jnp.sum(jnp.square(target), axis=-1)
  noise = jnp.sum(jnp.square(estimate - target), axis=-1)
  return 10.0 * jnp.log10((signal + eps) / (noise + eps))


def amplitude_ratio(reference: jax.Array, estimate: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Loudness of the estimate relative to the reference, in percent.

  reference, estimate: f32[..., T] -> f32[...],  100 * RMS(est) / max(RMS(ref), eps)
  A codec that collapses towards silence shows up here before it shows up in the losses.
  """
  reference, estimate = _f32(reference), _f32(estimate)
  rms = lambda x: jnp.sqrt(jnp.mean(jnp.square(x), axis=-1))
  return 100.0 * rms(estimate) / jnp.maximum(rms(reference), eps)


def mel_distance(reference: jax.Array, estimate: jax.Array, *, sample_rate: int,
                 windows: tuple[int, ...] = DAC_MEL_WINDOWS,
                 n_mels: tuple[int, ...] = DAC_MEL_BINS, clamp: float = 1e-5) -> jax.Array:
  """Per-item multiscale log-mel L1, the same maths as losses.multiscale_mel_loss.

  reference, estimate: f32[..., T] -> f32[...]
  d = sum_s mean_{N,M} |log10(max(mel_s(ref), clamp)) - log10(max(mel_s(est), clamp))|.
  Reflect padding needs T > max(windows) // 2.
  """
  return multiscale_mel_distance(_f32(reference), _f32(estimate), sample_rate=sample_rate,
                                 windows=tuple(windows), n_mels=tuple(n_mels), clamp=clamp)


def codebook_usage(codes: jax.Array, codebook_size: int,
                   mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Per-level code statistics from the histogram of codes over batch and frames.

  codes: int32[B, Q, N] in [0, K); mask: bool[B, Q] (levels item b actually used, e.g. under quantizer
  dropout; default all) -> (perplexity f32[Q], fraction_used f32[Q])
  p_q[k] = count_q[k] / sum_k count_q[k];  perplexity_q = exp(-sum_k p_q[k] log p_q[k]) in
  [1, K];  fraction_used_q = #{k : count_q[k] > 0} / K. A level no item used reports 0 for both.
  """
  codes = jnp.asarray(codes).astype(jnp.int32)
  batch, levels, frames = codes.shape
  if mask is None:
    mask = jnp.ones((batch, levels), jnp.bool_)
  weights = jnp.broadcast_to(jnp.asarray(mask, jnp.float32)[:, :, None], codes.shape)
  # One histogram over (level, code) pairs: segment_sum avoids a [B, Q, N, K] one-hot.
  segment = jnp.arange(levels, dtype=jnp.int32)[None, :, None] * codebook_size + codes
  counts = jax.ops.segment_sum(weights.reshape(-1), segment.reshape(-1),
                               num_segments=levels * codebook_size)
  counts = counts.reshape(levels, codebook_size)
  total = jnp.sum(counts, axis=-1, keepdims=True)
  p = counts / jnp.maximum(total, 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
  used = total[:, 0] > 0
  perplexity = jnp.where(used, jnp.exp(entropy), 0.0)
  fraction_used = jnp.sum(counts > 0, axis=-1).astype(jnp.float32) / codebook_size
  return perplexity, fraction_used
