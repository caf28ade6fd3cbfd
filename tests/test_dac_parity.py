"""Numerical parity with the PyTorch reference (descript-audio-codec 1.0.0), without torch.

tests/fixtures/dac_reference.npz holds what DAC computed (tools/make_dac_fixtures.py, which records
its torch and dac versions): weights, inputs, outputs. Here its weights go through
codec/dac_weights.py into our modules, which must compute the same: identical codes, audio within
1e-5 of the peak, discriminator maps and losses within 1e-5 relative.
"""
import json
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
from codec import losses

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'dac_reference.npz'
REL = 1e-5
# DAC's transposed convs drop a sample per odd stride (our output is the input's length): the last
# samples of decoded audio, which see that sample or its absence, differ by design: after the
# stride-5 stage (rates 8, 5, 4, 2) the residual stacks' reach, 3 * (1 + 3 + 9) + 1 samples there,
# is 40 * 8 output samples, plus 39 * 2 + 39 + 3 from the later stages.
ODD_STRIDE_TAIL = 440


@pytest.fixture(scope='module')
def ref():
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def _state(ref: dict, prefix: str) -> dict:
  start = f'{prefix}/state/'
  return {k[len(start):]: v for k, v in ref.items() if k.startswith(start)}


def _model_config(ref: dict, name: str) -> ml_collections.ConfigDict:
  kwargs = json.loads(str(ref[f'{name}/kwargs']))
  return dac_weights.model_config_from_kwargs(kwargs, config_lib.base_config().model)


def _disc_config(ref: dict) -> ml_collections.ConfigDict:
  cfg = json.loads(str(ref['disc/config']))
  disc = config_lib.base_config().discriminator
  disc.update(periods=tuple(cfg['periods']), fft_sizes=tuple(cfg['fft_sizes']),
              bands=tuple(tuple(b) for b in cfg['bands']),
              period_channels=tuple(cfg['period_channels']), band_channels=cfg['band_channels'])
  return disc


def _close(ours, theirs, rel=REL, what=''):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
  err = np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-12)
  assert err <= rel, f'{what}: max error {err:.2e} of the peak (allowed {rel:.0e})'


@pytest.mark.parametrize('name', ['g16', 'g24', 'g44'])
def test_generator_matches_dac(ref, name):
  model = _model_config(ref, name)
  params = dac_weights.state_to_params(_state(ref, name), dac_weights.generator_entries(model))
  gen = generator.Generator.from_config(model)
  audio = jnp.asarray(ref[f'{name}/audio'])

  @jax.jit
  def run(params, audio):
    out = gen.apply({'params': params}, audio)
    latent = gen.apply({'params': params}, audio, method=gen.encode_latent)
    return out, latent

  out, latent = run(params, audio)
  _close(latent, ref[f'{name}/latent'].transpose(0, 2, 1), what='encoder latent')
  np.testing.assert_array_equal(out.codes, ref[f'{name}/codes'])
  _close(out.commitment_loss, ref[f'{name}/commitment'], what='commitment loss')
  _close(out.codebook_loss, ref[f'{name}/codebook'], what='codebook loss')
  decoded = ref[f'{name}/decoded']
  tail = 0 if decoded.shape[-1] == audio.shape[-1] else ODD_STRIDE_TAIL
  n = decoded.shape[-1] - tail
  _close(out.audio[:, :n], decoded[:, :n], what='decoded audio')


def test_weights_round_trip_both_weight_norm_layouts(ref):
  model = _model_config(ref, 'g16')
  entries = dac_weights.generator_entries(model)
  state = _state(ref, 'g16')
  params = dac_weights.state_to_params(state, entries)
  back = dac_weights.params_to_state(params, entries)
  assert back.keys() == state.keys()
  for k in state:
    np.testing.assert_array_equal(back[k], state[k], err_msg=k)
  # torch.nn.utils.parametrizations.weight_norm's names read the same.
  renamed = {k.replace('weight_g', 'parametrizations.weight.original0')
              .replace('weight_v', 'parametrizations.weight.original1'): v for k, v in state.items()}
  again = dac_weights.state_to_params(renamed, entries)
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_other_architecture_is_refused_naming_the_tensor(ref):
  model = _model_config(ref, 'g16')
  state = _state(ref, 'g16')
  smaller = ml_collections.ConfigDict(model.to_dict())
  smaller.n_codebooks = 2
  with pytest.raises(ValueError, match=r'quantizer\.quantizers\.2\.'):
    dac_weights.state_to_params(state, dac_weights.generator_entries(smaller))
  larger = ml_collections.ConfigDict(model.to_dict())
  larger.n_codebooks = 4
  with pytest.raises(ValueError, match=r'no quantizer\.quantizers\.3\.in_proj'):
    dac_weights.state_to_params(state, dac_weights.generator_entries(larger))


def test_missing_torch_names_the_extra(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch -> ImportError
  with pytest.raises(ImportError, match=r"\[torch\]"):
    dac_weights.read_pth(tmp_path / 'weights.pth')


@pytest.fixture(scope='module')
def disc_outputs(ref):
  disc = discriminators.Discriminators.from_config(_disc_config(ref))
  params = dac_weights.state_to_params(_state(ref, 'disc'),
                                       dac_weights.discriminator_entries(_disc_config(ref)))
  run = jax.jit(lambda p, x: disc.apply({'params': p}, x))
  return (run(params, jnp.asarray(ref['loss/real'])), run(params, jnp.asarray(ref['loss/fake'])),
          len(disc.periods))


def _dac_layout(x: jax.Array, period: bool) -> np.ndarray:
  """Ours -> DAC's layout: period maps [B, p, T', C] -> [B, C, T', p]; band maps [B, T, F, C]
  -> [B, C, T, F]."""
  return np.asarray(x).transpose(0, 3, 2, 1) if period else np.asarray(x).transpose(0, 3, 1, 2)


@pytest.mark.parametrize('tag', ['real', 'fake'])
def test_discriminators_match_dac(ref, disc_outputs, tag):
  real, fake, n_periods = disc_outputs
  outputs = real if tag == 'real' else fake
  for i, (logits, features) in enumerate(outputs):
    maps = [*features, logits]
    n_ref = sum(1 for k in ref if k.startswith(f'disc/{tag}/{i}/'))
    assert len(maps) == n_ref, f'discriminator {i}: {len(maps)} maps, DAC has {n_ref}'
    for j, m in enumerate(maps):
      _close(_dac_layout(m, i < n_periods), ref[f'disc/{tag}/{i}/{j}'],
             what=f'discriminator {i} map {j}')


def test_losses_match_dac(ref, disc_outputs):
  real, fake = jnp.asarray(ref['loss/real']), jnp.asarray(ref['loss/fake'])
  c = config_lib.base_config().loss
  mel = losses.multiscale_mel_loss(real, fake, sample_rate=16000, windows=c.mel_windows,
                                   n_mels=c.mel_bins, clamp=c.mel_clamp)
  _close(mel, ref['loss/mel'], what='mel loss')
  _close(losses.waveform_l1_loss(real, fake), ref['loss/l1'], what='L1 loss')
  d_real, d_fake, _ = disc_outputs
  d_loss = losses.discriminator_loss(real_logits=[r[0] for r in d_real],
                                     fake_logits=[f[0] for f in d_fake])
  _close(jnp.sum(d_loss), ref['loss/discriminator'], what='discriminator loss')
  adv = losses.generator_adversarial_loss(fake_logits=[f[0] for f in d_fake])
  _close(jnp.sum(adv), ref['loss/adversarial'], what='adversarial loss')
  feat = losses.feature_matching_loss(real_features=[r[1] for r in d_real],
                                      fake_features=[f[1] for f in d_fake])
  _close(jnp.sum(feat), ref['loss/feature'], what='feature-matching loss')


def test_fixture_is_what_the_installed_dac_computes(ref):
  """Live, where torch and dac import (not in CI): the reference recomputed now equals the file."""
  pytest.importorskip('torch')
  pytest.importorskip('dac')
  sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / 'tools'))
  import make_dac_fixtures  # pylint: disable=g-import-not-at-top
  live = make_dac_fixtures.reference_arrays()
  assert live.keys() == ref.keys()
  for k, v in live.items():
    if isinstance(v, str):  # configs and versions
      assert k == 'versions' or v == str(ref[k]), k
    else:
      # Of the peak, as the comparisons above: torch's own sums vary with its thread count by a
      # few float32 roundings, which elementwise would exceed 1e-5 of the smallest entries.
      _close(v, ref[k], what=k)
