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


def code_counts(codes: jax.Array, codebook_size: int, mask: jax.Array | None = None,
                weights: jax.Array | None = None) -> jax.Array:
  """How often each level picked each code, over batch and frames.

  codes: int32[B, Q, N] in [0, K); mask: bool[B, Q] (levels item b used, e.g. under quantizer
  dropout; default all); weights: f32[B] (e.g. 0 for padding rows; default 1) -> f32[Q, K].
  Counts add up over batches and steps, so statistics can cover a whole evaluation or log interval.
  """
  codes = jnp.asarray(codes).astype(jnp.int32)
  batch, levels, _ = codes.shape
  w = jnp.ones((batch, levels), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
  if weights is not None:
    w = w * jnp.asarray(weights, jnp.float32)[:, None]
  w = jnp.broadcast_to(w[:, :, None], codes.shape)
  # One histogram over (level, code) pairs: segment_sum avoids a [B, Q, N, K] one-hot.
  segment = jnp.arange(levels, dtype=jnp.int32)[None, :, None] * codebook_size + codes
  counts = jax.ops.segment_sum(w.reshape(-1), segment.reshape(-1),
                               num_segments=levels * codebook_size)
  return counts.reshape(levels, codebook_size)


def codebook_statistics(counts: jax.Array, frame_rate: float) -> dict[str, jax.Array]:
  """Per-level statistics of accumulated code counts: f32[Q, K] -> dict of f32[Q] (and scalars).

  p_q[k] = count_q[k] / sum_k count_q[k];  entropy_bits_q = -sum_k p_q[k] log2 p_q[k];
  perplexity_q = 2^entropy_bits_q in [1, K];  usage_q = #{k : count_q[k] > 0} / K;
  dead_codes_q = K - #{used};  entropy_kbps = frame_rate * sum_q entropy_bits_q / 1000, the rate
  an ideal entropy coder would need, next to nominal_kbps = frame_rate * Q * log2(K) / 1000.
  frames: f32[Q], the count per level. A level never used reports 0 usage and perplexity.
  """
  counts = jnp.asarray(counts, jnp.float32)
  levels, codebook_size = counts.shape
  frames = jnp.sum(counts, axis=-1)
  p = counts / jnp.maximum(frames, 1.0)[:, None]
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
  used = jnp.sum(counts > 0, axis=-1).astype(jnp.float32)
  return {
      'usage': used / codebook_size,
      'perplexity': jnp.where(frames > 0, jnp.exp2(entropy), 0.0),
      'dead_codes': codebook_size - used,
      'entropy_bits': entropy,
      'frames': frames,
      'entropy_kbps': frame_rate * jnp.sum(entropy) / 1000.0,
      'nominal_kbps': jnp.asarray(frame_rate * levels * jnp.log2(codebook_size) / 1000.0),
  }


def codebook_usage(codes: jax.Array, codebook_size: int,
                   mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(perplexity f32[Q], fraction_used f32[Q]) of one batch's codes: int32[B, Q, N].

  See code_counts and codebook_statistics; one batch uses at most B * N codes per level, so
  prefer statistics over accumulated counts.
  """
  stats = codebook_statistics(code_counts(codes, codebook_size, mask), frame_rate=1.0)
  return stats['perplexity'], stats['usage']
