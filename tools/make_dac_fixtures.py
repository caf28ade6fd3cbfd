"""Records what the PyTorch reference (descript-audio-codec) computes, for tests/test_dac_parity.py.

Runs on the CPU with torch and dac installed (`../shared/REFERENCE.md` says how; not needed by the
tests, which read the file this writes):

  python tools/make_dac_fixtures.py  # -> tests/fixtures/dac_reference.npz

Seeded, tiny widths (the same code paths as the released models: the 16 kHz and 24 kHz rates
2, 4, 5, 8 with an odd stride, and the 44.1 kHz rates 2, 4, 8, 8). The full-width 16 kHz model is
too large for a committed file: tests/test_dac_runs.py compares it live, where torch and dac
import. Recorded, with the torch and dac versions:
- per generator config: DAC's constructor kwargs, state dict, input audio, encoder latent, codes,
  quantizer losses, decoded audio;
- discriminators (DAC's own MPD/MRD classes, convs narrowed so the file stays small): state dict,
  the logits and feature maps of a real and a fake batch;
- DAC's MelSpectrogramLoss (conf/base.yml settings), L1Loss and GANLoss (both sides) on them.
"""
import argparse
import json
import pathlib

import numpy as np
import torch

import dac
from audiotools import AudioSignal
from dac.model import discriminator as dac_disc
from dac.nn import loss as dac_loss

# Narrow widths; everything else as in DAC.
GENERATORS = {
    'g16': dict(encoder_dim=4, encoder_rates=[2, 4, 5, 8], latent_dim=None, decoder_dim=32,
                decoder_rates=[8, 5, 4, 2], n_codebooks=3, codebook_size=32, codebook_dim=8,
                quantizer_dropout=0.5, sample_rate=16000),
    'g24': dict(encoder_dim=4, encoder_rates=[2, 4, 5, 8], latent_dim=40, decoder_dim=24,
                decoder_rates=[8, 5, 4, 2], n_codebooks=4, codebook_size=16, codebook_dim=8,
                quantizer_dropout=1.0, sample_rate=24000),
    'g44': dict(encoder_dim=2, encoder_rates=[2, 4, 8, 8], latent_dim=24, decoder_dim=16,
                decoder_rates=[8, 8, 4, 2], n_codebooks=2, codebook_size=16, codebook_dim=4,
                quantizer_dropout=0.0, sample_rate=44100),
}
LENGTH = {'g16': 1280, 'g24': 1280, 'g44': 2048}  # 4 frames each
DISCRIMINATOR = dict(periods=[2, 3], fft_sizes=[512, 256],
                     bands=[(0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)],
                     period_channels=[4, 8, 16, 32, 32], band_channels=4)
MEL = dict(n_mels=[5, 10, 20, 40, 80, 160, 320], window_lengths=[32, 64, 128, 256, 512, 1024, 2048])


def _test_audio(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
  """Tones plus noise, peak about 0.5: f32[B, T]."""
  t = np.arange(length) / 16000
  tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in rng.uniform(80, 4000, 4))
  return (0.1 * tones + 0.1 * rng.standard_normal((batch, length))).astype(np.float32)


def _state(module: torch.nn.Module, prefix: str) -> dict:
  return {f'{prefix}/state/{k}': v.detach().numpy() for k, v in module.state_dict().items()}


def _generator(name: str, kwargs: dict, rng: np.random.Generator) -> dict:
  model = dac.DAC(**kwargs).eval()
  audio = _test_audio(rng, 2, LENGTH[name])
  with torch.no_grad():
    x = torch.from_numpy(audio)[:, None]
    latent = model.encoder(model.preprocess(x, kwargs['sample_rate']))
    z, codes, _, commitment, codebook = model.quantizer(latent)
    decoded = model.decode(z)
  return {**_state(model, name), f'{name}/kwargs': json.dumps(kwargs), f'{name}/audio': audio,
          f'{name}/latent': latent.numpy(), f'{name}/codes': codes.numpy().astype(np.int32),
          f'{name}/commitment': commitment.numpy(), f'{name}/codebook': codebook.numpy(),
          f'{name}/decoded': decoded[:, 0].numpy()}


def _narrow_discriminator(cfg: dict = DISCRIMINATOR) -> torch.nn.Module:
  """dac's Discriminator with its MPD and MRD convs narrowed (their forward code unchanged)."""
  disc = dac_disc.Discriminator(periods=cfg['periods'], fft_sizes=cfg['fft_sizes'],
                                bands=cfg['bands'])
  conv = dac_disc.WNConv2d
  for d in disc.discriminators:
    if isinstance(d, dac_disc.MPD):
      ch = [1] + cfg['period_channels']
      d.convs = torch.nn.ModuleList([
          conv(ch[i], ch[i + 1], (5, 1), (3, 1) if i < len(ch) - 2 else 1, padding=(2, 0))
          for i in range(len(ch) - 1)])
      d.conv_post = conv(ch[-1], 1, kernel_size=(3, 1), padding=(1, 0), act=False)
    else:
      c = cfg['band_channels']
      d.band_convs = torch.nn.ModuleList([torch.nn.ModuleList([
          conv(2, c, (3, 9), (1, 1), padding=(1, 4)), conv(c, c, (3, 9), (1, 2), padding=(1, 4)),
          conv(c, c, (3, 9), (1, 2), padding=(1, 4)), conv(c, c, (3, 9), (1, 2), padding=(1, 4)),
          conv(c, c, (3, 3), (1, 1), padding=(1, 1))]) for _ in cfg['bands']])
      d.conv_post = conv(c, 1, (3, 3), (1, 1), padding=(1, 1), act=False)
  return disc


def _discriminator_and_losses(real: np.ndarray, fake: np.ndarray) -> dict:
  disc = _narrow_discriminator()
  out = {**_state(disc, 'disc'), 'disc/config': json.dumps(DISCRIMINATOR),
         'loss/real': real, 'loss/fake': fake}
  real_t, fake_t = torch.from_numpy(real)[:, None], torch.from_numpy(fake)[:, None]
  with torch.no_grad():
    for tag, x in (('real', real_t), ('fake', fake_t)):
      for i, fmap in enumerate(disc(x)):
        for j, f in enumerate(fmap):
          out[f'disc/{tag}/{i}/{j}'] = f.numpy()
    real_s, fake_s = AudioSignal(real_t, 16000), AudioSignal(fake_t, 16000)
    mel = dac_loss.MelSpectrogramLoss(
        **MEL, clamp_eps=1e-5, mag_weight=0.0, log_weight=1.0, pow=1.0,
        mel_fmin=[0.0] * 7, mel_fmax=[None] * 7)
    gan = dac_loss.GANLoss(disc)
    out['loss/mel'] = mel(fake_s, real_s).numpy()
    out['loss/l1'] = dac_loss.L1Loss()(fake_s, real_s).numpy()
    out['loss/discriminator'] = gan.discriminator_loss(fake_s, real_s).numpy()
    adversarial, feature = gan.generator_loss(fake_s, real_s)
    out['loss/adversarial'], out['loss/feature'] = adversarial.numpy(), feature.numpy()
  return out


def reference_arrays() -> dict:
  """Every recorded array, by name (seeded: the same on every run of one torch/dac version)."""
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  arrays = {'versions': json.dumps({'torch': torch.__version__, 'dac': dac.__version__})}
  for name, kwargs in GENERATORS.items():
    arrays.update(_generator(name, kwargs, rng))
  # The losses compare a batch with DAC's 16 kHz-config reconstruction of it (cropped to DAC's
  # output, 8 samples short for the odd stride), as in DAC's training step.
  fake = arrays['g16/decoded']
  real = arrays['g16/audio'][:, :fake.shape[-1]]
  arrays.update(_discriminator_and_losses(real, fake))
  return arrays


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('-o', '--output', default=str(
      pathlib.Path(__file__).resolve().parents[1] / 'tests' / 'fixtures' / 'dac_reference.npz'))
  args = parser.parse_args()
  arrays = reference_arrays()
  path = pathlib.Path(args.output)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(path, **arrays)
  print(f'{path}: {path.stat().st_size / 1e6:.2f} MB, {len(arrays)} arrays, {arrays["versions"]}')


if __name__ == '__main__':
  main()
