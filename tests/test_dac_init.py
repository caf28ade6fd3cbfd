"""Our nets start where PyTorch DAC's start: per layer, the same spread of weights and biases.

tests/fixtures/dac_init_stats.json (tools/make_dac_init_stats.py, with its torch and dac versions)
holds, per tensor of DAC's freshly built 16 kHz generator (narrow widths) and discriminators, the
count, mean, mean square and largest magnitude of its entries over 8 seeds. Ours, initialised with
8 seeds, must match every tensor: zero where DAC's is zero, the same constant where DAC's is one,
else the same mean square within 5 standard errors of the two estimates, and the same bound where
DAC's is uniform. A transposed conv's fan-in taken from its input channels, or zeroed biases where
DAC keeps PyTorch's default, fail it.
"""
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from codec import config as config_lib
from codec import dac_weights
from codec import discriminators
from codec import generator

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'dac_init_stats.json'
# Which of our leaves holds what a DAC tensor holds (its `weight_g` is ||weight_v||, our `scale`
# ||kernel||, by construction on both sides).
LEAVES = {'conv': {'weight_v': 'kernel', 'bias': 'bias'},
          'tconv': {'weight_v': 'kernel', 'bias': 'bias'},
          'snake': {'alpha': 'alpha'}, 'codebook': {'weight': 'codebook'}}


@pytest.fixture(scope='module')
def ref():
  return json.loads(FIXTURE.read_text())


def _disc_config(cfg: dict) -> ml_collections.ConfigDict:
  disc = config_lib.base_config().discriminator
  disc.update(periods=tuple(cfg['periods']), fft_sizes=tuple(cfg['fft_sizes']),
              bands=tuple(tuple(b) for b in cfg['bands']),
              period_channels=tuple(cfg['period_channels']), band_channels=cfg['band_channels'])
  return disc


def _stats(x: np.ndarray) -> dict:
  x = np.asarray(x, np.float64).ravel()
  return {'n': x.size, 'mean': float(np.mean(x)), 'mean_square': float(np.mean(x * x)),
          'max_abs': float(np.max(np.abs(x)))}


def _our_stats(module, length: int, entries, seeds: int) -> dict:
  """{DAC tensor name: stats of our matching leaf, pooled over `seeds` initialisations}."""
  # lazy_init: the parameters without the forward pass. The 'rbg' generator (one XLA op per
  # draw) compiles several times faster than the default threefry's unrolled rounds, and the
  # distributions drawn do not depend on it; nor do they on XLA's optimisations, which would
  # double the compile time of this one-off program.
  keys = jax.random.split(jax.random.key(0, impl='rbg'), seeds)
  init = jax.jit(lambda key: module.lazy_init(
      key, jax.ShapeDtypeStruct((1, length), jnp.float32))['params']).lower(keys[0]).compile(
          compiler_options={'xla_backend_optimization_level': 0,
                            'xla_llvm_disable_expensive_passes': True})
  draws = [init(key) for key in keys]
  params = jax.device_get(jax.tree.map(lambda *x: np.stack(x), *draws))
  out = {}
  for entry in entries:
    node = params
    for key in entry.flax_path:
      node = node[key]
    for torch_leaf, ours in LEAVES[entry.kind].items():
      out[f'{entry.torch_name}.{torch_leaf}'] = _stats(node[ours])
  return out


def _mismatch(ours: dict, theirs: dict) -> str | None:
  """Why the two samples' spreads differ, or None."""
  if theirs['max_abs'] == 0:
    return None if ours['max_abs'] == 0 else f'DAC starts at 0, ours max |x| {ours["max_abs"]:.3g}'
  if theirs['mean_square'] == theirs['mean'] ** 2:  # a constant (Snake's alpha)
    same = ours['max_abs'] == theirs['max_abs'] and ours['mean_square'] == theirs['mean_square']
    return None if same else f'DAC starts at {theirs["mean"]}, ours mean {ours["mean"]:.4g}'
  if ours['mean_square'] == 0:
    return f'ours starts at 0, DAC mean square {theirs["mean_square"]:.3g}'
  # The relative standard error of a mean square of n draws is at most sqrt(2 / n) (normal
  # draws; uniform ones have 0.89 / sqrt(n)); each side is an estimate.
  spread = math.sqrt(2 / theirs['n'] + 2 / ours['n'])
  ratio = ours['mean_square'] / theirs['mean_square']
  if abs(math.log(ratio)) > 5 * spread:
    return f'mean square {ours["mean_square"]:.4g} against DAC {theirs["mean_square"]:.4g}'
  rms = math.sqrt(theirs['mean_square'])
  if abs(ours['mean'] - theirs['mean']) > 5 * rms * math.sqrt(1 / theirs['n'] + 1 / ours['n']):
    return f'mean {ours["mean"]:.4g} against DAC {theirs["mean"]:.4g}'
  # Uniform draws (max^2 ~ 3 x mean square) of many entries reach their bound: the same bound.
  bounded = theirs['max_abs'] ** 2 < 4 * theirs['mean_square']
  if bounded and min(ours['n'], theirs['n']) >= 1000 and not (
      abs(ours['max_abs'] / theirs['max_abs'] - 1) < 0.02):
    return f'bound {ours["max_abs"]:.4g} against DAC {theirs["max_abs"]:.4g}'
  return None


def _compare(ours: dict, theirs: dict) -> None:
  assert ours.keys() == theirs.keys(), sorted(set(ours) ^ set(theirs))[:5]
  bad = [(k, why) for k in sorted(theirs) if (why := _mismatch(ours[k], theirs[k]))]
  assert not bad, f'{len(bad)} of {len(theirs)} tensors start elsewhere than DAC\'s: {bad[:6]}'


def test_generator_starts_like_dac(ref):
  model = dac_weights.model_config_from_kwargs(ref['generator']['kwargs'],
                                               config_lib.base_config().model)
  gen = generator.Generator.from_config(model)
  ours = _our_stats(gen, gen.hop_length, dac_weights.generator_entries(model), ref['seeds'])
  _compare(ours, ref['generator']['tensors'])


def test_discriminators_start_like_dac(ref):
  cfg = _disc_config(ref['discriminator']['config'])
  disc = discriminators.Discriminators.from_config(cfg)
  ours = _our_stats(disc, 2048, dac_weights.discriminator_entries(cfg), ref['seeds'])
  _compare(ours, ref['discriminator']['tensors'])


def test_fixture_is_what_the_installed_dac_draws(ref):
  """Live, where torch and dac import (not in CI): the statistics recomputed now equal the file."""
  pytest.importorskip('torch')
  pytest.importorskip('dac')
  sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / 'tools'))
  import make_dac_init_stats  # pylint: disable=g-import-not-at-top
  live = json.loads(json.dumps(make_dac_init_stats.init_stats()))  # tuples -> lists, as the file
  live.pop('versions')
  assert live == {k: v for k, v in ref.items() if k != 'versions'}


def _init_both_ways(make, length: int):
  """The parameters of make(dac_init) for True and False, from one key, as flat {path: array}."""
  flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(x)
                       for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  audio = jax.ShapeDtypeStruct((1, length), jnp.float32)
  return [flat(make(dac_init).lazy_init(jax.random.key(0), audio)['params'])
          for dac_init in (True, False)]


def test_without_dac_init_only_the_transposed_convs_and_discriminator_biases_change():
  """config.dac_init=False: the decoder's transposed convs draw U(+-1/sqrt(K C_in)) kernels (our
  other convs' fan-in) and zero biases, the discriminators' convs zero biases; every other tensor
  is drawn exactly as with DAC's initialisation."""
  config = config_lib.base_config()
  config_lib.make_tiny(config)
  gen_dac, gen_ours = _init_both_ways(
      lambda dac_init: generator.Generator.from_config(config.model, dac_init=dac_init), 320)
  transposed = {k for k in gen_dac if 'WNConvTranspose1d' in k}
  assert transposed and gen_dac.keys() == gen_ours.keys()
  for key in sorted(set(gen_dac) - transposed):
    np.testing.assert_array_equal(gen_ours[key], gen_dac[key], err_msg=key)
  for key in sorted(k for k in transposed if k.endswith("['kernel']")):
    taps, c_in, c_out = gen_ours[key].shape
    for params, fan_in in ((gen_ours, taps * c_in), (gen_dac, taps * c_out)):
      bound = np.max(np.abs(params[key]))
      assert 0.9 < bound * math.sqrt(fan_in) <= 1, (key, bound, fan_in)
    bias = key.replace("['kernel']", "['bias']")
    assert not np.any(gen_ours[bias]) and np.all(gen_dac[bias]), bias

  disc_dac, disc_ours = _init_both_ways(
      lambda dac_init: discriminators.Discriminators.from_config(config.discriminator,
                                                                 dac_init=dac_init), 2048)
  biases = {k for k in disc_dac if k.endswith("['bias']")}
  assert len(biases) > 10 and disc_dac.keys() == disc_ours.keys()
  for key in sorted(disc_dac):
    if key in biases:
      assert not np.any(disc_ours[key]) and np.all(disc_dac[key]), key
    else:
      np.testing.assert_array_equal(disc_ours[key], disc_dac[key], err_msg=key)
