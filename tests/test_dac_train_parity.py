"""Three training steps from the same weights and batch leave our nets where PyTorch DAC's are.

tests/fixtures/dac_train_steps.npz (tools/make_dac_train_fixture.py, with its torch and dac
versions) holds DAC's `train_loop` run for 3 steps with its own models, losses and torch.optim
(AdamW, ExponentialLR, clipping, conf/base.yml's loss weights), quantizer dropout off: the initial
weights of both nets, the batch, each step's losses and both nets' weights after steps 1 and 3.
Ours starts from those weights (codec/dac_weights.py) with fresh AdamW states and runs
codec.train.train_step with the base config's (DAC's) optimiser and loss settings.

The bound: after n steps every parameter within n * (1e-2 * lr + one float32 spacing of its
value) of DAC's. An AdamW step moves a parameter by about lr (its update is the normalised
gradient) whatever the gradient's size, so float32 rounding of the gradients (other summation
orders in XLA and PyTorch) moves it by a small fraction of lr, and each side rounds the updated
parameter to float32. The fraction is largest for the few entries whose gradient is near AdamW's
eps (1e-8), where the step's size follows the gradient's, and it depends on the CPU and on how
XLA splits the work: measured on this fixture, 3e-4 * lr per step as compiled here (2026-12-03),
2.2e-3 with XLA's default optimisations, and 6.1e-3 after 3 steps, one entry of 55,036, on an
AMD EPYC without AVX-512 with the suite's 4 simulated devices (3.4e-3 with one; 2026-12-07). A
wrong loss weight, beta, weight decay (0.01 * lr * |p| per step), learning-rate schedule,
clipping or step order fails it (measured on that machine, worst entry in units of n * lr): a
feature-matching weight of 1 instead of 2 misses by 2 at step 1, no weight decay by 0.031 at
step 1, b1 0.9 instead of 0.8 by 0.051 after 3 steps. (b2 0.999 instead of 0.99 moves the worst
entry by 0.002 after 3 steps, within the rounding: b2 weighs in later.)
"""
import functools
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codec import config as config_lib
from codec import dac_weights
from codec import train

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'dac_train_steps.npz'
RECORDED = (1, 3)


@pytest.fixture(scope='module')
def ref():
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def _config(ref: dict):
  config = config_lib.base_config()  # DAC's optimiser and loss settings
  config.model = dac_weights.model_config_from_kwargs(json.loads(str(ref['kwargs'])), config.model)
  cfg = json.loads(str(ref['disc_config']))
  config.discriminator.update(
      periods=tuple(cfg['periods']), fft_sizes=tuple(cfg['fft_sizes']),
      bands=tuple(tuple(b) for b in cfg['bands']), period_channels=tuple(cfg['period_channels']),
      band_channels=cfg['band_channels'])
  config.batch_size = ref['audio'].shape[0]
  return config


def _state(ref: dict, prefix: str) -> dict:
  start = f'{prefix}/'
  return {k[len(start):]: v for k, v in ref.items() if k.startswith(start)}


@pytest.fixture(scope='module')
def ours(ref):
  """{step: (generator state dict, discriminator state dict, metrics)} of our train_step."""
  config = _config(ref)
  models = train.make_models(config)
  gen_entries = dac_weights.generator_entries(config.model)
  disc_entries = dac_weights.discriminator_entries(config.discriminator)
  gen = dac_weights.state_to_params(_state(ref, 'gen/0'), gen_entries)
  disc = dac_weights.state_to_params(_state(ref, 'disc/0'), disc_entries)
  state = train.TrainState(
      step=jnp.zeros((), jnp.int32), gen_params=gen, disc_params=disc,
      gen_opt_state=models.gen_opt.init(gen), disc_opt_state=models.disc_opt.init(disc))
  audio, rng = jnp.asarray(ref['audio']), jax.random.key(0)
  # Without XLA's backend optimisations the step compiles in half the time; the maths is the same.
  step = jax.jit(functools.partial(train.train_step, models)).lower(state, audio, rng).compile(
      compiler_options={'xla_backend_optimization_level': 0,
                        'xla_llvm_disable_expensive_passes': True})
  out = {}
  for n in range(1, max(RECORDED) + 1):
    state, metrics = step(state, audio, rng)
    if n in RECORDED:
      params = jax.device_get((state.gen_params, state.disc_params))
      out[n] = (dac_weights.params_to_state(params[0], gen_entries),
                dac_weights.params_to_state(params[1], disc_entries),
                jax.device_get(metrics), models.disc.count)
  return out


@pytest.mark.parametrize('n', RECORDED)
def test_parameters_after_steps_match_dac(ref, ours, n):
  gen, disc, _, _ = ours[n]
  lr = config_lib.base_config().optim.learning_rate
  worst = []
  for net, state in (('gen', gen), ('disc', disc)):
    theirs = _state(ref, f'{net}/{n}')
    assert state.keys() == theirs.keys()
    for k, v in state.items():
      rounding = n * np.spacing(np.abs(theirs[k]).astype(np.float32)).astype(np.float64)
      err = np.abs(v.astype(np.float64) - theirs[k].astype(np.float64)) - rounding
      worst.append((float(np.max(err)) / (n * lr), f'{net} {k}'))
  worst.sort(reverse=True)
  assert worst[0][0] <= 1e-2, f'after {n} steps, worst (in units of n * lr): {worst[:5]}'


@pytest.mark.parametrize('n', RECORDED)
def test_losses_match_dac(ref, ours, n):
  """Each recorded step's losses, DAC's sums over discriminators against our per-D means."""
  theirs = json.loads(str(ref['losses']))[n - 1]
  _, _, metrics, count = ours[n]
  pairs = {'disc_loss': ('adv/disc_loss', count), 'mel_loss': ('mel/loss', 1),
           'adv_loss': ('adv/gen_loss', count), 'commitment_loss': ('vq/commitment_loss', 1),
           'codebook_loss': ('vq/codebook_loss', 1), 'gen_loss': ('loss', 1),
           'disc_grad_norm': ('other/grad_norm_d', 1), 'gen_grad_norm': ('other/grad_norm', 1)}
  for ours_key, (their_key, scale) in pairs.items():
    np.testing.assert_allclose(float(metrics[ours_key]) * scale, theirs[their_key], rtol=1e-4,
                               err_msg=ours_key)


def test_fixture_is_what_the_installed_dac_computes(ref):
  """Live, where torch and dac import (not in CI): DAC's loop run now gives the file's arrays."""
  pytest.importorskip('torch')
  pytest.importorskip('dac')
  sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / 'tools'))
  import make_dac_train_fixture  # pylint: disable=g-import-not-at-top
  live = make_dac_train_fixture.reference_arrays()
  assert live.keys() == ref.keys()
  for k, v in live.items():
    if k == 'losses':
      for step, step_ref in zip(json.loads(v), json.loads(str(ref[k]))):
        for name, value in step.items():
          assert value == pytest.approx(step_ref[name], rel=1e-5), (k, name)
    elif isinstance(v, str):  # configs and versions
      assert k == 'versions' or v == str(ref[k]), k
    else:
      np.testing.assert_allclose(v, ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
