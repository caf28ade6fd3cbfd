"""Codebooks initialised from k-means of the first batches' latents (codec/codebook_init.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codec import checkpoint
from codec import codebook_init
from codec import config_rules
from codec import data
from codec import parallel
from codec import train
from conftest import tiny_config

EXCERPT = 1600  # tiny config: 0.1 s at 16 kHz


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_spherical_kmeans_converges_to_cosine_clusters_centred_on_their_mean():
  """Points around 16 directions at norms 0.5-3 (some codes start in the same cluster, so no
  exact recovery is asked): the result is a fixed point of the algorithm (each centroid is the
  plain mean, not the mean direction, of the points most similar to it by cosine), and it fits
  the points better than the draw it starts from."""
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(16), 40)
  directions = _unit(rng.normal(size=(16, 8)))[labels]
  norms = rng.uniform(0.5, 3.0, size=(16,))[labels]
  points = directions * norms[:, None] + 0.05 * rng.normal(size=(labels.size, 8))
  fit = lambda iterations: np.asarray(codebook_init.spherical_kmeans(
      jnp.asarray(points, jnp.float32), 16, iterations, jax.random.key(0)))
  drawn, centroids = fit(0), fit(30)
  chosen = np.argmax(_unit(points) @ _unit(centroids).T, axis=1)
  for c in np.unique(chosen):
    np.testing.assert_allclose(centroids[c], points[chosen == c].mean(axis=0), atol=1e-5)
  similarity = lambda books: np.mean(np.max(_unit(points) @ _unit(books).T, axis=1))
  assert similarity(centroids) > similarity(drawn) + 0.01


def test_spherical_kmeans_needs_as_many_points_as_codes():
  with pytest.raises(ValueError, match='need at least 16'):
    codebook_init.spherical_kmeans(jnp.ones((10, 4)), 16, 2, jax.random.key(0))


@pytest.fixture(scope='module')
def fitted():
  config = tiny_config()
  models = train.make_models(config)
  state = jax.jit(functools.partial(train.create_train_state, models, excerpt_samples=EXCERPT))(
      jax.random.key(0))
  audio = jnp.asarray(np.random.default_rng(1).normal(size=(8, EXCERPT)) * 0.1, jnp.float32)
  latents = codebook_init.encode_latents(models.gen, state.gen_params, audio)
  fit = jax.jit(functools.partial(codebook_init.fit_codebooks, models.gen))
  return models, state, audio, latents, fit(state.gen_params, latents, jax.random.key(3))


def _quantised(models, gen_params, audio):
  q, _ = models.gen.apply({'params': gen_params}, audio, method=models.gen.latents_by_level)
  return q


def test_fitted_codebooks_use_more_codes_and_leave_a_smaller_residual(fitted):
  """On the latents they were fitted to, the k-means codebooks pick more distinct codes at every
  level than DAC's N(0, 1) codes, and the 3 levels leave a smaller residual."""
  models, state, audio, latents, params = fitted
  q_random = _quantised(models, state.gen_params, audio)
  q_kmeans = _quantised(models, params, audio)
  for level in range(models.gen.n_codebooks):
    used_random = len(np.unique(np.asarray(q_random.codes[:, level])))
    used_kmeans = len(np.unique(np.asarray(q_kmeans.codes[:, level])))
    assert used_kmeans > used_random, (level, used_kmeans, used_random)
  error = lambda q: float(jnp.mean(jnp.square(latents - q.z_q)))
  assert error(q_kmeans) < error(q_random)


def test_fitting_changes_only_the_codebooks(fitted):
  _, state, _, _, params = fitted
  flat_before = dict(jax.tree_util.tree_leaves_with_path(state.gen_params))
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    changed = not np.array_equal(np.asarray(leaf), np.asarray(flat_before[path]))
    assert changed == (path[-1].key == 'codebook'), path


def test_codebooks_from_data_fits_the_next_batches_and_rewinds_the_iterator(tiny_corpus):
  config = tiny_config(tiny_corpus, **{'optim.ema_decay': 0.9})
  models = train.make_models(config)
  mesh = parallel.make_mesh()
  state = jax.jit(functools.partial(train.create_train_state, models, excerpt_samples=EXCERPT))(
      jax.random.key(0))
  datasets = data.make_datasets(config.data, sample_rate=16000, global_batch_size=4, seed=0,
                                cache_dir=None)
  train_iter = datasets.train_iterator()
  fresh = datasets.train_iterator()
  batches = [next(fresh) for _ in range(2)]
  new = train.codebooks_from_data(models, state, train_iter, 2, jax.random.key(3), mesh)
  np.testing.assert_array_equal(next(train_iter), batches[0])  # training starts at batch 0
  latents = codebook_init.encode_latents(models.gen, state.gen_params,
                                         jnp.asarray(np.concatenate(batches)))
  expected = codebook_init.fit_codebooks(models.gen, state.gen_params, latents, jax.random.key(3))
  for i in range(models.gen.n_codebooks):
    book = new.gen_params['quantizer'][f'levels_{i}']['codebook']
    np.testing.assert_allclose(book, expected['quantizer'][f'levels_{i}']['codebook'], atol=1e-5)
    np.testing.assert_array_equal(new.gen_ema['quantizer'][f'levels_{i}']['codebook'], book)


def test_a_run_starts_from_the_fitted_codebooks(tiny_corpus, tmp_path, capsys):
  """The loop fits the codebooks before its first step: one step later they are still close to
  the fit (one AdamW step moves a code by about the learning rate) and far from the N(0, 1) draw
  a run without the option starts from. With a weight average, which restarts at the fit."""
  config = tiny_config(tiny_corpus, max_steps=1, **{'optim.codebook_kmeans_batches': 2,
                                                     'optim.ema_decay': 0.9})
  train.train_and_evaluate(config, str(tmp_path))
  assert 'Codebooks from k-means of the latents of the first 2 batches' in capsys.readouterr().out
  gen_params, _, _ = checkpoint.restore_params(str(tmp_path))
  models = train.make_models(config)
  init_rng, _ = jax.random.split(jax.random.key(config.seed))
  state = jax.jit(functools.partial(train.create_train_state, models, excerpt_samples=EXCERPT))(
      init_rng)
  datasets = data.make_datasets(config.data, sample_rate=16000, global_batch_size=4, seed=0,
                                cache_dir=None)
  fitted = train.codebooks_from_data(models, state, datasets.train_iterator(), 2,
                                     jax.random.fold_in(init_rng, 1), parallel.make_mesh())
  for i in range(models.gen.n_codebooks):
    trained = np.asarray(gen_params['quantizer'][f'levels_{i}']['codebook'])
    fit = np.asarray(fitted.gen_params['quantizer'][f'levels_{i}']['codebook'])
    drawn = np.asarray(state.gen_params['quantizer'][f'levels_{i}']['codebook'])
    assert np.max(np.abs(trained - fit)) < 0.01 < np.max(np.abs(trained - drawn))


def test_too_few_latents_for_the_codes_fail_before_anything_is_built():
  config = tiny_config(**{'optim.codebook_kmeans_batches': 1, 'model.codebook_size': 32})
  [problem] = config_rules.problems(config)
  assert '--config.optim.codebook_kmeans_batches' in problem
  assert '20 latents' in problem and 'give at least 2' in problem
  config = tiny_config(init_from='runs/x', **{'optim.codebook_kmeans_batches': 2})
  [problem] = config_rules.problems(config)
  assert 'loads trained codebooks' in problem
