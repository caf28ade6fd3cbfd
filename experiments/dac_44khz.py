"""The 44.1 kHz DAC: rates [2, 4, 8, 8], hop 512, 86.1 frames/s, 9 codebooks, 7.75 kbps."""
from codec import config as base


def get_config(arg: str = ''):
  c = base.base_config()
  c.experiment_name = 'dac_44khz'
  c.model.sample_rate = 44100
  c.model.encoder_rates = (2, 4, 8, 8)
  c.model.decoder_rates = (8, 8, 4, 2)
  c.model.n_codebooks = 9
  c.data.salient_excerpts = True  # DAC's salient_excerpt (-40 dB, 8 tries)
  # DAC's ShiftPhase; its uniform angle covers the sign flip, which DAC does not add.
  c.data.phase_shift = True
  c.data.phase_inversion = False
  if arg == 'tiny':
    base.make_tiny(c)
  elif arg:
    raise ValueError(f'unknown variant {arg!r} of dac_44khz.py; use no variant or :tiny')
  return c
