"""The default experiment: the 16 kHz reference codec (12 codebooks, 6 kbps) on Telugu speech.

With no --data_dir it trains on the embedded demo corpus (data/telugu_demo).
"""
from experiments import dac_16khz


def get_config(arg: str = ''):
  c = dac_16khz.get_config(arg)
  c.experiment_name = 'telugu_dac'
  return c
