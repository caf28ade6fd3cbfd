"""Recipe options of the GAN step that DAC does not have: a reconstruction-only phase before the
adversarial terms, a weight average of the generator used for evaluation and inference,
restarts of dead codes, and discriminator updates on a share of the steps."""
import functools

import jax
import numpy as np
import pytest

from codec import checkpoint
from codec import parallel
from codec import train
from conftest import tiny_config

EXCERPT = 1600  # tiny config: 0.1 s at 16 kHz
EMA_DECAY = 0.5
RESTART_STEPS = 2


@pytest.fixture(scope='module')
def setup():
  config = tiny_config(**{'loss.adversarial_start_step': 1, 'optim.ema_decay': EMA_DECAY,
                          'optim.codebook_restart_steps': RESTART_STEPS,
                          'model.quantizer_dropout': 0.0})
  models = train.make_models(config)
  init = jax.jit(functools.partial(train.create_train_state, models, excerpt_samples=EXCERPT))
  state, other = init(jax.random.key(0)), init(jax.random.key(5))
  step = jax.jit(functools.partial(train.train_step, models))
  audio = np.asarray(jax.random.normal(jax.random.key(1), (4, EXCERPT))) * 0.1
  return config, state, other, step, audio


def _max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_generator_ignores_the_discriminators_before_the_adversarial_start(setup):
  """Before loss.adversarial_start_step the generator's update does not depend on the
  discriminators' weights; from it on, it does. The discriminators train from the first step."""
  _, state, other, step, audio = setup
  rng = jax.random.key(2)
  swapped = state.replace(disc_params=other.disc_params, disc_opt_state=other.disc_opt_state)
  new, _ = step(state, audio, rng)
  new_swapped, _ = step(swapped, audio, rng)
  assert _max_diff(new.disc_params, state.disc_params) > 0
  assert _max_diff(new.gen_params, new_swapped.gen_params) == 0.0
  # Step 2 (state.step == 1) is adversarial: other discriminators, another generator update.
  later, _ = step(new, audio, rng)
  later_swapped, _ = step(new.replace(disc_params=other.disc_params), audio, rng)
  assert _max_diff(later.gen_params, later_swapped.gen_params) > 0


def test_weight_average_follows_the_generator_and_is_what_inference_loads(setup, tmp_path):
  config, state, _, step, audio = setup
  np.testing.assert_array_equal(jax.tree.leaves(state.gen_ema)[0],
                                jax.tree.leaves(state.gen_params)[0])
  new, _ = step(state, audio, jax.random.key(2))
  expected = jax.tree.map(lambda e, p: EMA_DECAY * e + (1 - EMA_DECAY) * p, state.gen_ema,
                          new.gen_params)
  assert _max_diff(new.gen_ema, expected) < 1e-7
  assert _max_diff(new.gen_ema, new.gen_params) > 0
  assert new.eval_params is new.gen_ema
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)
  ckpt.save(1, new, {'next_batch': 1}, [], wait=True)
  ckpt.close()
  gen_params, _, _ = checkpoint.restore_params(str(tmp_path))
  assert _max_diff(gen_params, new.gen_ema) == 0.0
  # Resuming a run across a change of the average's presence is refused by the fingerprint.
  assert checkpoint.fingerprint(config) != checkpoint.fingerprint(tiny_config())


def test_dead_codes_restart_on_latents_of_the_batch_every_n_steps(setup):
  """Codes no level picked over RESTART_STEPS steps move onto z_e rows of the restart step's
  batch, in the weights and their average; picked codes stay where the optimizer put them."""
  config, state, _, step, audio = setup
  rng = jax.random.key(3)
  first, metrics = step(state, audio, rng)
  assert float(metrics['codes_restarted']) == 0.0  # not due at step 1
  np.testing.assert_array_equal(first.code_use, metrics['code_counts'])
  second, metrics = step(first, audio, rng)
  use = np.asarray(first.code_use + metrics['code_counts'])
  dead = use == 0
  assert 0 < dead.sum() < dead.size and float(metrics['codes_restarted']) == dead.sum()
  np.testing.assert_array_equal(second.code_use, 0.0)
  _, inter = train.make_models(config).gen.apply(
      {'params': first.gen_params}, audio, mutable=['intermediates'])
  unrestarted, _ = step(first.replace(code_use=first.code_use + 1), audio, rng)
  for i in range(config.model.n_codebooks):
    name = f'levels_{i}'
    z_e = np.asarray(inter['intermediates']['quantizer'][name]['z_e'][0]).reshape(
        -1, config.model.codebook_dim)
    book = np.asarray(second.gen_params['quantizer'][name]['codebook'])
    distance = np.abs(book[dead[i]][:, None] - z_e[None]).max(-1).min(-1)  # to nearest latent
    np.testing.assert_allclose(distance, 0.0, atol=1e-6)
    np.testing.assert_array_equal(second.gen_ema['quantizer'][name]['codebook'][dead[i]],
                                  book[dead[i]])
    np.testing.assert_array_equal(
        book[~dead[i]], unrestarted.gen_params['quantizer'][name]['codebook'][~dead[i]])


def test_discriminators_update_on_a_share_of_steps_and_report_their_loss_on_the_others():
  """optim.discriminator_update_probability=0.5: the steps the seeded draw picks update the
  discriminators and their optimizer; the others leave both as they were, still train the
  generator, and report the loss of the discriminators as they stand on the step's audio."""
  config = tiny_config(**{'optim.discriminator_update_probability': 0.5,
                          'model.quantizer_dropout': 0.0})
  models = train.make_models(config)
  state = jax.jit(functools.partial(train.create_train_state, models, excerpt_samples=EXCERPT))(
      jax.random.key(0))
  step = jax.jit(functools.partial(train.train_step, models),
                 static_argnames=('update_discriminators',))
  audio = np.asarray(jax.random.normal(jax.random.key(1), (4, EXCERPT))) * 0.1
  loss = jax.jit(lambda disc_params, gen_params: train.discriminator_objective(
      models, disc_params, audio, models.gen.apply({'params': gen_params}, audio).audio)[1])
  for update in (True, False):
    new, metrics = step(state, audio, jax.random.key(2), update_discriminators=update)
    assert float(metrics['disc_updated']) == float(update)
    assert (_max_diff(new.disc_params, state.disc_params) > 0) == update
    assert (_max_diff(new.disc_opt_state, state.disc_opt_state) > 0) == update
    assert _max_diff(new.gen_params, state.gen_params) > 0  # the generator learns every step
    expected = loss(state.disc_params, state.gen_params)
    for key in ('disc_loss', 'real_logit_mean', 'fake_logit_mean'):
      np.testing.assert_allclose(metrics[key], expected[key], rtol=1e-4, atol=1e-6)
  # The draw: fixed by seed and step, near the probability over many steps, always at 1.
  draws = [train.updates_discriminators(0.5, 0, s) for s in range(400)]
  assert draws == [train.updates_discriminators(0.5, 0, s) for s in range(400)]
  assert draws != [train.updates_discriminators(0.5, 1, s) for s in range(400)]
  assert 0.4 < np.mean(draws) < 0.6
  assert all(train.updates_discriminators(1.0, 0, s) for s in range(400))


def test_weights_set_before_the_first_step_give_the_average_buffers_of_its_own(setup):
  """init_from (start_from) restarts the average at the weights it loads; the jitted step donates
  the state, which fails on a buffer held twice (f(donate(a), donate(a)))."""
  config, state, other, _, _ = setup
  models = train.make_models(config)
  started = train.start_from(models, state, other.gen_params, None,
                             parallel.replicated(parallel.make_mesh()))
  assert _max_diff(started.gen_ema, other.gen_params) == 0.0
  donated = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
  jax.block_until_ready(donated(started))
