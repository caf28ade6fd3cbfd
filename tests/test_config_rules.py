"""Every config field has a rule; bad values are refused by name, before anything is built."""
import math
import re

import pytest

from codec import config as config_lib
from codec import config_rules
from conftest import tiny_config
from experiments import dac_16khz, dac_44khz, telugu_dac, telugu_demo


def test_every_config_field_has_a_rule_and_every_rule_a_field():
  fields = config_rules.fields(config_lib.base_config())
  assert [f for f in fields if f not in config_rules.RULES] == [], (
      'fields without a validation rule: add them to codec/config_rules.RULES')
  assert [r for r in config_rules.RULES if r not in fields] == [], 'rules of no field'


@pytest.mark.parametrize('module', [dac_16khz, dac_44khz, telugu_dac, telugu_demo])
@pytest.mark.parametrize('variant', ['', 'tiny'])
def test_shipped_experiments_pass(module, variant):
  assert config_rules.problems(module.get_config(variant)) == []


def test_long_demo_is_the_demo_recipe_trained_longer():
  demo, long = telugu_demo.get_config(''), telugu_demo.get_config('long')
  assert config_rules.problems(long) == []
  # The epoch counts and weight-average decays docs/results.md measured each with.
  assert (demo.num_epochs, long.num_epochs) == (4, 16)
  assert (demo.optim.ema_decay, long.optim.ema_decay) == (0.99, 0.998)
  long.num_epochs, long.experiment_name = demo.num_epochs, demo.experiment_name
  long.optim.ema_decay = demo.optim.ema_decay
  assert long.to_dict() == demo.to_dict()
  with pytest.raises(ValueError, match=':long'):
    telugu_demo.get_config('longer')


def _bad_candidates(value):
  """Values some rule of a field of this kind must refuse (none for free text and booleans)."""
  if isinstance(value, bool) or (isinstance(value, str) and not value):
    return []
  if isinstance(value, float):
    return [math.nan, math.inf, -math.inf, -1.0, 1e12]
  if isinstance(value, int):
    return [-2, -1, 0]
  if isinstance(value, tuple):
    return [(), (0,), ((0.5, 0.2),), ((0.0, 2.0),)]
  if isinstance(value, str):
    return ['', 'no-such-value', 'no_port']
  raise AssertionError(f'unexpected field type {type(value)}')


# Free-text fields (paths, names): any string is a valid path or name to check later.
FREE_TEXT = {'data.data_dir', 'data.val_dir', 'checkpoint_dir', 'compilation_cache_dir'}


@pytest.mark.parametrize('path', [p for p in config_rules.fields(config_lib.base_config())
                                  if p not in FREE_TEXT])
def test_each_field_refuses_out_of_range_values_by_flag_name(path):
  base = config_lib.base_config()
  value = config_rules.leaf(base, path)
  candidates = _bad_candidates(value)
  if not candidates:
    pytest.skip(f'{path} is a boolean: its type is its rule')
  flag = config_rules.flag_name(path)
  refused = []
  for bad in candidates:
    config = config_lib.base_config()
    *parents, name = path.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    with config.unlocked():
      node[name] = bad
    if config_rules.RULES[path].accepts(bad):
      continue
    with pytest.raises(config_rules.ConfigError) as error:
      config_rules.check(config)
    assert str(error.value).startswith(
        f'{flag} must be {config_rules.RULES[path].allowed}, got {bad!r}'), str(error.value)
    refused.append(bad)
  assert refused, f'{flag} accepts all of {candidates}'
  if isinstance(value, float):  # nothing numeric may be nan or infinite
    assert {str(x) for x in refused} >= {'nan', 'inf', '-inf'}, refused


def test_user_flags_are_named_as_typed():
  config = tiny_config()
  config.loss.adv_weight = math.nan
  config.model.n_codebooks = 0
  with pytest.raises(config_rules.ConfigError) as error:
    config_rules.check(config)
  assert '--adv_weight must be a finite number >= 0, got nan' in str(error.value)
  assert '--config.model.n_codebooks must be an integer >= 1, got 0' in str(error.value)


@pytest.mark.parametrize('overrides, message', [
    ({'loss.mel_bins': (8,)}, '--config.loss.mel_windows must have as many entries as '
                              '--config.loss.mel_bins'),
    ({'model.decoder_rates': (8, 5, 4)}, '--config.model.decoder_rates must have the product'),
    ({'model.decoder_dim': 8}, '--config.model.decoder_dim must be >= 16'),
    ({'discriminator.periods': (), 'discriminator.fft_sizes': ()}, 'at least one discriminator'),
    ({'discriminator.bands': ((0.0, 0.005), (0.005, 1.0))}, 'hold no frequency bin'),
    ({'data.excerpt_seconds': 0.005}, '--config.data.excerpt_seconds (0.005 s = 80 samples) is too short'),
    ({'health.min_feat_loss': 20.0}, '--config.health.min_feat_loss must be <= '
                                     '--config.health.max_feat_loss'),
    ({'distributed.num_processes': 2, 'distributed.process_id': 2},
     '--config.distributed.process_id must be < --config.distributed.num_processes (2)'),
])
def test_relations_between_fields(overrides, message):
  with pytest.raises(config_rules.ConfigError, match=re.escape(message)):
    config_rules.check(tiny_config(**overrides))


def test_excerpt_rule_counts_the_samples_the_loader_cuts():
  # An excerpt a hair under a whole number of samples: the loader rounds it up to a length that
  # fits the windows, so a rule that truncated would refuse an excerpt the loader cuts long enough.
  from codec import data  # pylint: disable=g-import-not-at-top  (grain; only this test needs it)
  config = tiny_config()
  largest = max([*config.loss.mel_windows, *config.discriminator.fft_sizes,
                 *(config.loss.stft_windows if config.loss.stft_weight else ())])
  rate = config.model.sample_rate
  shortest = largest // 2 + 1
  config.data.excerpt_seconds = (shortest - 1e-6) / rate
  assert data._seconds_to_samples(config.data.excerpt_seconds, rate) == shortest
  config_rules.check(config)
  config.data.excerpt_seconds = (shortest - 0.6) / rate  # rounds to the limit itself
  with pytest.raises(config_rules.ConfigError, match=f'= {shortest - 1} samples'):
    config_rules.check(config)
