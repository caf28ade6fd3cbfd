"""Residual vector quantizer with factorised, cosine-similarity codebooks (DAC / Improved RVQGAN).

Each level projects the residual to a low-dimensional space (`codebook_dim`, 8 in DAC), picks the
nearest code by cosine similarity, and projects the raw code back. Shapes: B batch, N frames,
C latent channels, D codebook dim, Q levels, K codebook size.
"""
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from codec import compute
from codec import layers
from codec import losses


@flax.struct.dataclass
class QuantizerOutput:
  z_q: jax.Array  # f32[B, N, C] quantised latent (straight-through)
  codes: jax.Array  # int32[B, Q, N]
  level_mask: jax.Array  # bool[B, Q]: which levels each item used (quantizer dropout)
  commitment_loss: jax.Array  # f32[]
  codebook_loss: jax.Array  # f32[]


def l2_normalize(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), 1e-24))


class VectorQuantizer(nn.Module):
  """One level: in_proj -> cosine nearest code -> straight-through -> out_proj."""
  latent_dim: int
  codebook_size: int
  codebook_dim: int
  kernels: compute.Kernels = compute.XLA

  def setup(self):
    self.in_proj = layers.WNConv(self.codebook_dim, (1,), kernels=self.kernels)
    self.out_proj = layers.WNConv(self.latent_dim, (1,), kernels=self.kernels)
    self.codebook = self.param(
        'codebook', nn.initializers.normal(1.0), (self.codebook_size, self.codebook_dim))

  def nearest(self, z_e: jax.Array) -> jax.Array:
    """z_e: f32[B, N, D] -> int32[B, N], the code of highest cosine similarity."""
    sim = jnp.einsum('bnd,kd->bnk', l2_normalize(z_e), l2_normalize(self.codebook))
    return jnp.argmax(sim, axis=-1).astype(jnp.int32)

  def embed(self, codes: jax.Array) -> jax.Array:
    """codes: int32[B, N] -> f32[B, N, C]."""
    return self.out_proj(jnp.take(self.codebook, codes, axis=0))

  def project(self, residual: jax.Array) -> jax.Array:
    """residual: f32[B, N, C] -> z_e: f32[B, N, D], what the codes are compared with."""
    return self.in_proj(residual.astype(jnp.float32))

  def __call__(self, residual: jax.Array):
    """residual: f32[B, N, C] -> (out f32[B, N, C], codes int32[B, N], commit f32[B], cb f32[B])."""
    z_e = self.project(residual)
    # Diagnostics (read with mutable=['intermediates']; a no-op otherwise): the commitment loss
    # compares raw z_e and code rows, so their norms explain it. f32[B], mean over frames.
    self.sow('intermediates', 'z_e_norm', jnp.mean(jnp.linalg.norm(z_e, axis=-1), axis=-1))
    self.sow('intermediates', 'z_e', z_e)  # f32[B, N, D]: what a dead code restarts from
    codes = self.nearest(z_e)
    z_q = jnp.take(self.codebook, codes, axis=0)
    commit = losses.commitment_loss(z_e, z_q)
    cb = losses.codebook_loss(z_e, z_q)
    z_q = z_e + jax.lax.stop_gradient(z_q - z_e)  # straight-through estimator
    return self.out_proj(z_q), codes, commit, cb


def restart_dead_codes(codebook: jax.Array, counts: jax.Array, latents: jax.Array,
                       rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Moves the codes nothing picked onto projected latents of the current batch.

  Random restarts (Dhariwal et al. 2020, Jukebox, arXiv:2005.00341, sec. 3.2; Defossez et al.
  2022, EnCodec, arXiv:2210.13438, replaces codes the same way): a code far from every latent is
  never picked, so its row gets no gradient and the level spends ten bits on the few codes
  that are; placed on a latent, a code is picked at once and learns from there.

  codebook: f32[K, D]; counts: f32[K], picks since the last restart; latents: f32[M, D], the
  level's z_e over batch and frames. Returns (codebook f32[K, D], restarted bool[K]).
  """
  dead = counts <= 0
  picks = jax.random.randint(rng, counts.shape, 0, latents.shape[0])
  return jnp.where(dead[:, None], latents[picks].astype(codebook.dtype), codebook), dead


class ResidualVectorQuantizer(nn.Module):
  latent_dim: int
  n_codebooks: int
  codebook_size: int
  codebook_dim: int
  quantizer_dropout: float
  kernels: compute.Kernels = compute.XLA

  def setup(self):
    self.levels = [
        VectorQuantizer(self.latent_dim, self.codebook_size, self.codebook_dim, self.kernels)
        for _ in range(self.n_codebooks)
    ]

  def __call__(self, z: jax.Array, *, n_quantizers: int | None = None,
               dropout_rng: jax.Array | None = None) -> QuantizerOutput:
    """Quantises z: f32[B, N, C] with the first `n_quantizers` levels (all by default).

    With `dropout_rng` (training), the first int(B * quantizer_dropout) items of the batch use a
    random number of levels in [1, n_codebooks] so one model serves every bitrate; the residual is
    still updated by every level, as in DAC, but dropped levels add nothing to the output or losses.
    """
    batch = z.shape[0]
    n_levels = self.n_codebooks if n_quantizers is None else n_quantizers
    if not 1 <= n_levels <= self.n_codebooks:
      raise ValueError(f'n_quantizers must be in [1, {self.n_codebooks}], got {n_levels}')
    n_used = jnp.full((batch,), n_levels, jnp.int32)
    if dropout_rng is not None:
      random_n = jax.random.randint(dropout_rng, (batch,), 1, self.n_codebooks + 1)
      n_dropped = int(batch * self.quantizer_dropout)
      n_used = jnp.where(jnp.arange(batch) < n_dropped, random_n, n_used)

    residual, z_q = z.astype(jnp.float32), jnp.zeros(z.shape, jnp.float32)
    commitment = codebook = jnp.zeros((), jnp.float32)
    all_codes, masks = [], []
    for i in range(n_levels):
      out, codes, commit_i, cb_i = self.levels[i](residual)
      mask = i < n_used  # [B]
      z_q = z_q + out * mask[:, None, None]
      residual = residual - out
      commitment = commitment + jnp.mean(commit_i * mask)
      codebook = codebook + jnp.mean(cb_i * mask)
      all_codes.append(codes)
      masks.append(mask)
    return QuantizerOutput(
        z_q=z_q, codes=jnp.stack(all_codes, axis=1), level_mask=jnp.stack(masks, axis=1),
        commitment_loss=commitment, codebook_loss=codebook)

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    """codes: int32[B, Q, N] (Q <= n_codebooks) -> z_q: f32[B, N, C]."""
    return sum(self.levels[i].embed(codes[:, i]) for i in range(codes.shape[1]))
