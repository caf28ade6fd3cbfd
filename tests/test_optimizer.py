"""The fused AdamW against optax's clip + adamw + exponential decay + apply_if_finite chain."""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from codec import optimizer

OPTIM = ml_collections.ConfigDict(dict(learning_rate=1e-2, lr_decay=0.9, b1=0.8, b2=0.99,
                                       weight_decay=0.01, warmup_steps=0,
                                       cooldown_steps=0))
CLIP = 3.0


def _params(seed):
  """Small arrays and one large: global_norm concatenates the small ones only."""
  keys = jax.random.split(jax.random.key(seed), 4)
  return {'conv': {'kernel': jax.random.normal(keys[0], (3, 4, 5)),
                   'bias': jax.random.normal(keys[1], (5,))},
          'large': jax.random.normal(keys[2], (3, 150, 150)) * 0.1,
          'scale': jax.random.normal(keys[3], ())}


def test_global_norm():
  params = _params(0)
  assert [x.size >= optimizer.SMALL for x in jax.tree.leaves(params)] == [
      False, False, True, False]
  np.testing.assert_allclose(optimizer.global_norm(params), optax.global_norm(params), rtol=1e-6)


def _optax_chain():
  schedule = optax.exponential_decay(OPTIM.learning_rate, transition_steps=1,
                                     decay_rate=OPTIM.lr_decay)
  return optax.apply_if_finite(optax.chain(
      optax.clip_by_global_norm(CLIP),
      optax.adamw(schedule, b1=OPTIM.b1, b2=OPTIM.b2, eps=optimizer.EPS,
                  weight_decay=OPTIM.weight_decay)), max_consecutive_errors=100)


def test_matches_optax_over_steps_with_clipping_and_a_skipped_step():
  opt = optimizer.AdamW.from_config(OPTIM, CLIP)
  reference = _optax_chain()
  params = ref_params = _params(0)
  state, ref_state = opt.init(params), reference.init(params)
  update = jax.jit(opt.update)
  # Gradient scales: under the clip, far over it (clipped), not finite (skipped), under again.
  for i, scale in enumerate([0.1, 50.0, np.nan, 0.3, 20.0]):
    grads = jax.tree.map(lambda x: x * scale, _params(i + 1))
    params_before, mu_before, nu_before = params, state.mu, state.nu
    count_before = int(state.count)
    params, state, grad_norm = update(grads, state, params)
    updates, ref_state = reference.update(grads, ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, updates)
    np.testing.assert_allclose(grad_norm, optax.global_norm(grads), rtol=1e-6)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    for got, want in zip(jax.tree.leaves((state.mu, state.nu)),
                         jax.tree.leaves((ref_state.inner_state[1][0].mu,
                                          ref_state.inner_state[1][0].nu))):
      # atol: entries where b1 * mu and (1 - b1) * g cancel keep only float32 round-off.
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if np.isnan(scale):
      assert int(state.count) == count_before
      for got, before in zip(jax.tree.leaves((params, state.mu, state.nu)),
                             jax.tree.leaves((params_before, mu_before, nu_before))):
        np.testing.assert_array_equal(got, before)
    else:
      assert int(state.count) == count_before + 1
  assert int(state.count) == 4


@pytest.mark.parametrize('warmup', [0, 4])
def test_clipped_first_step_moves_each_entry_by_the_learning_rate(warmup):
  """Adam's first step is lr * g / |g| (+ weight decay) whatever the gradient's scale; with a
  warm-up over W updates, lr / W."""
  opt = optimizer.AdamW.from_config(OPTIM, CLIP)
  opt = dataclasses.replace(opt, warmup=warmup)
  rate = OPTIM.learning_rate / max(warmup, 1)
  params = _params(0)
  grads = jax.tree.map(lambda x: 1e3 * jnp.sign(x), _params(7))
  new, _, _ = opt.update(grads, opt.init(params), params)
  for p, g, p_new in zip(*(jax.tree.leaves(t) for t in (params, grads, new))):
    expected = p - rate * (jnp.sign(g) + OPTIM.weight_decay * p)
    np.testing.assert_allclose(p_new, expected, rtol=1e-5, atol=1e-6)


def test_warmup_rises_linearly_then_decays():
  opt = dataclasses.replace(optimizer.AdamW.from_config(OPTIM, CLIP), warmup=4)
  np.testing.assert_allclose(
      [opt.learning_rate_at(n) for n in (0, 1, 3, 4, 10)],
      [1e-2 / 4, 1e-2 * 0.9 * 2 / 4, 1e-2 * 0.9 ** 3, 1e-2 * 0.9 ** 4, 1e-2 * 0.9 ** 10], rtol=1e-6)


def test_cooldown_falls_linearly_over_the_last_updates():
  cooldown = ml_collections.ConfigDict({**OPTIM.to_dict(), 'cooldown_steps': 4})
  opt = optimizer.AdamW.from_config(cooldown, CLIP, updates=10)
  np.testing.assert_allclose(
      [opt.learning_rate_at(n) for n in (0, 6, 7, 9, 10)],
      [1e-2, 1e-2 * 0.9 ** 6, 1e-2 * 0.9 ** 7 * 3 / 4, 1e-2 * 0.9 ** 9 / 4, 0.0], rtol=1e-6)
  with pytest.raises(ValueError, match=r'optim\.cooldown_steps=4 needs the run\'s total steps'):
    optimizer.AdamW.from_config(cooldown, CLIP)


def test_learning_rate_decays_per_update():
  opt = optimizer.AdamW.from_config(OPTIM, CLIP)
  np.testing.assert_allclose([opt.learning_rate_at(n) for n in (0, 1, 10)],
                             [1e-2, 9e-3, 1e-2 * 0.9 ** 10], rtol=1e-6)
