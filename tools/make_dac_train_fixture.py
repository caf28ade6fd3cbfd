"""Records three steps of PyTorch DAC's training loop, for tests/test_dac_train_parity.py.

Runs on the CPU with torch and dac installed (`../shared/REFERENCE.md` says how; the tests read
the file this writes):

  python tools/make_dac_train_fixture.py  # -> tests/fixtures/dac_train_steps.npz

The step is `train_loop` of DAC's scripts/train.py with conf/base.yml's settings, on DAC's own
classes: `dac.DAC` (quantizer dropout off), its `Discriminator` (convs narrowed as in
tools/make_dac_fixtures.py), `MelSpectrogramLoss` and `GANLoss`, `torch.optim.AdamW` (betas
0.8, 0.99, lr 1e-4, PyTorch's weight decay 0.01) with `ExponentialLR` (0.999996) for each net:
1. generator forward; 2. discriminator loss on the detached reconstruction, backward, gradients
clipped to norm 10, AdamW step, scheduler step; 3. generator losses against the updated
discriminator (mel 15, feature matching 2, adversarial 1, commitment 0.25, codebook 1), backward,
clipped to norm 1000, AdamW step, scheduler step. Without mixed precision (conf/base.yml: amp
false) and the data transforms (the batch given is the transformed signal). DAC's STFT and
waveform losses, which the loop computes but weights 0, are left out: they change no gradient.

The generator is a narrow 16 kHz DAC with the 44.1 kHz model's even strides (2, 4, 8, 8): with
an odd stride DAC's transposed conv loses a sample (README: deliberate differences), which changes
the reconstruction's last samples and so every gradient; the forward parity of the odd-stride
16 kHz rates is tests/test_dac_parity.py's. Recorded, with the torch and dac versions: the kwargs,
initial state dicts of both nets, the batch, the losses of each step and both state dicts after
steps 1 and 3.
"""
import argparse
import json
import pathlib

import numpy as np
import torch

import dac
from audiotools import AudioSignal
from dac.nn import loss as dac_loss
import make_dac_fixtures

# Narrow, but at least 2 channels everywhere: the gradient of a weight-normalised 1 x 1 conv of one
# channel (a direction of one entry, which cannot turn) is 0 plus rounding, which AdamW's
# normalised step turns into a step of +-lr, different in every implementation.
KWARGS = dict(encoder_dim=2, encoder_rates=[2, 4, 8, 8], latent_dim=None, decoder_dim=32,
              decoder_rates=[8, 8, 4, 2], n_codebooks=3, codebook_size=16, codebook_dim=4,
              quantizer_dropout=0.0, sample_rate=16000)
BATCH, LENGTH = 2, 4000  # not a multiple of the hop (512): the padding and the trim are in it
STEPS = 3
RECORDED = (1, 3)
LAMBDAS = {'mel/loss': 15.0, 'adv/feat_loss': 2.0, 'adv/gen_loss': 1.0,
           'vq/commitment_loss': 0.25, 'vq/codebook_loss': 1.0}  # conf/base.yml
OPTIM = dict(lr=1e-4, betas=(0.8, 0.99))  # conf/base.yml; weight decay: torch's 0.01
GAMMA = 0.999996
CLIP_D, CLIP_G = 10.0, 1e3  # scripts/train.py
# Fewer discriminators and bands than DAC's (each adds its layers to the compile of our step;
# tests/test_dac_parity.py compares all kinds' forward passes at DAC's 5 bands).
DISCRIMINATOR = dict(periods=[3], fft_sizes=[256], bands=[(0.0, 0.25), (0.25, 1.0)],
                     period_channels=[4, 8, 8, 8, 8], band_channels=4)


def _state(module: torch.nn.Module, prefix: str) -> dict:
  return {f'{prefix}/{k}': v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _train_loop(gen, disc, opts, scheds, mel_loss, gan_loss, signal) -> dict:
  """One step of DAC's scripts/train.py train_loop (no autocast, one process)."""
  opt_g, opt_d = opts
  sched_g, sched_d = scheds
  gen.train()
  disc.train()
  output = {}
  out = gen(signal.audio_data, signal.sample_rate)
  recons = AudioSignal(out['audio'], signal.sample_rate)

  output['adv/disc_loss'] = gan_loss.discriminator_loss(recons, signal)
  opt_d.zero_grad()
  output['adv/disc_loss'].backward()
  output['other/grad_norm_d'] = torch.nn.utils.clip_grad_norm_(disc.parameters(), CLIP_D)
  opt_d.step()
  sched_d.step()

  output['mel/loss'] = mel_loss(recons, signal)
  output['adv/gen_loss'], output['adv/feat_loss'] = gan_loss.generator_loss(recons, signal)
  output['vq/commitment_loss'] = out['vq/commitment_loss']
  output['vq/codebook_loss'] = out['vq/codebook_loss']
  output['loss'] = sum(v * output[k] for k, v in LAMBDAS.items())
  opt_g.zero_grad()
  output['loss'].backward()
  output['other/grad_norm'] = torch.nn.utils.clip_grad_norm_(gen.parameters(), CLIP_G)
  opt_g.step()
  sched_g.step()
  return {k: float(v) for k, v in output.items()}


def reference_arrays() -> dict:
  """Every recorded array, by name (seeded: the same on every run of one torch/dac version)."""
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  gen = dac.DAC(**KWARGS)
  disc = make_dac_fixtures._narrow_discriminator(DISCRIMINATOR)  # pylint: disable=protected-access
  audio = make_dac_fixtures._test_audio(rng, BATCH, LENGTH)  # pylint: disable=protected-access
  arrays = {'versions': json.dumps({'torch': torch.__version__, 'dac': dac.__version__}),
            'kwargs': json.dumps(KWARGS), 'disc_config': json.dumps(DISCRIMINATOR),
            'audio': audio, **_state(gen, 'gen/0'), **_state(disc, 'disc/0')}
  opts = [torch.optim.AdamW(m.parameters(), **OPTIM) for m in (gen, disc)]
  scheds = [torch.optim.lr_scheduler.ExponentialLR(o, GAMMA) for o in opts]
  mel_loss = dac_loss.MelSpectrogramLoss(
      **make_dac_fixtures.MEL, clamp_eps=1e-5, mag_weight=0.0, log_weight=1.0, pow=1.0,
      mel_fmin=[0.0] * 7, mel_fmax=[None] * 7)
  gan_loss = dac_loss.GANLoss(disc)
  signal = AudioSignal(torch.from_numpy(audio)[:, None], KWARGS['sample_rate'])
  losses = []
  for step in range(1, STEPS + 1):
    losses.append(_train_loop(gen, disc, opts, scheds, mel_loss, gan_loss, signal))
    if step in RECORDED:
      arrays.update({**_state(gen, f'gen/{step}'), **_state(disc, f'disc/{step}')})
  arrays['losses'] = json.dumps(losses)
  return arrays


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('-o', '--output', default=str(
      pathlib.Path(__file__).resolve().parents[1] / 'tests' / 'fixtures' / 'dac_train_steps.npz'))
  args = parser.parse_args()
  arrays = reference_arrays()
  path = pathlib.Path(args.output)
  np.savez_compressed(path, **arrays)
  print(f'{path}: {path.stat().st_size / 1e6:.2f} MB, {len(arrays)} arrays, {arrays["versions"]}')
  print(arrays['losses'])


if __name__ == '__main__':
  main()
