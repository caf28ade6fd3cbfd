"""Codebooks initialised from data: k-means of the first batches' latents, level by level.

SoundStream (Zeghidour et al. 2021, arXiv:2107.03312) and EnCodec (Defossez et al. 2022,
arXiv:2210.13438) start each codebook at the k-means centroids of the first batch's latents, so that
every code starts where latents are and is picked from the first step. DAC draws its codes from
N(0, 1), and on the demo k-means codebooks lost far behind DAC's (docs/results.md). Here the nearest
code is the one of highest cosine similarity (codec/quantizer.py), so points are assigned by cosine
and each centroid is the plain mean of its points: the raw code row is what the commitment and
codebook losses compare with z_e.

Levels are fitted in order: level i's points are the residual left by levels 0..i-1 quantised
with their new codebooks, as training will see them. Shapes: M points, D codebook dim, K codes,
B batch, T samples, N frames, C latent channels.
"""
import jax
import jax.numpy as jnp

from codec import generator as generator_lib
from codec import quantizer as rvq

ITERATIONS = 20  # Lloyd iterations per level


def spherical_kmeans(points: jax.Array, k: int, iterations: int, rng: jax.Array) -> jax.Array:
  """points: f32[M, D] (M >= k) -> centroids f32[K, D].

  Starts from k distinct points drawn at random; each iteration assigns every point to the
  centroid of highest cosine similarity and moves each centroid to the mean of its points. A
  centroid no point chose keeps its place (a point, so it is still a plausible code).
  """
  if points.shape[0] < k:
    raise ValueError(f'k-means of {points.shape[0]} points into {k} codes: need at least {k}')
  centroids = points[jax.random.permutation(rng, points.shape[0])[:k]]
  unit = rvq.l2_normalize(points)

  def lloyd(_, centroids):
    assign = jnp.argmax(unit @ rvq.l2_normalize(centroids).T, axis=-1)
    sums = jax.ops.segment_sum(points, assign, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones(points.shape[0], points.dtype), assign, num_segments=k)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centroids)

  return jax.lax.fori_loop(0, iterations, lloyd, centroids)


def encode_latents(gen: generator_lib.Generator, gen_params, audio: jax.Array) -> jax.Array:
  """audio: f32[B, T] -> the encoder's latents f32[B, N, C], before quantisation."""
  return gen.apply({'params': gen_params}, audio,
                   method=generator_lib.Generator.encode_latent).astype(jnp.float32)


def fit_codebooks(gen: generator_lib.Generator, gen_params, latents: jax.Array, rng: jax.Array,
                  iterations: int = ITERATIONS):
  """gen_params with every level's codebook replaced by k-means centroids of its z_e over
  `latents` f32[B, N, C] (encode_latents of the first batches); everything else unchanged."""
  level = rvq.VectorQuantizer(gen.latent_dim, gen.codebook_size, gen.codebook_dim, gen.kernels)
  levels = dict(gen_params['quantizer'])
  residual = latents
  for i, key in enumerate(jax.random.split(rng, gen.n_codebooks)):
    name = f'levels_{i}'
    z_e = level.apply({'params': levels[name]}, residual, method=rvq.VectorQuantizer.project)
    book = spherical_kmeans(z_e.reshape(-1, gen.codebook_dim), gen.codebook_size, iterations, key)
    levels[name] = {**levels[name], 'codebook': book.astype(levels[name]['codebook'].dtype)}
    out, *_ = level.apply({'params': levels[name]}, residual)
    residual = residual - out
  return {**gen_params, 'quantizer': levels}
