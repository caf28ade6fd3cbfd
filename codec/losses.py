"""Loss functions: pure, jit-friendly, each documented with shapes and formula.

Shapes use dimension letters: B batch, T samples, N frames, C channels, D discriminators.
"""
import jax
import jax.numpy as jnp


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
