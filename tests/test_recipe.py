"""The ablation harness's own logic (bench/recipe.py): variants, entropy bitrate, seed spread."""
import importlib.util
import math

import numpy as np
import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location('recipe', ROOT / 'bench' / 'recipe.py')
recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe)


def test_variant_parses_into_config_flags():
  variant = recipe.parse_variant('l1_20:loss.waveform_l1_weight=20, model.quantizer_dropout=0.0')
  assert variant.name == 'l1_20'
  assert variant.flags() == ['--config.loss.waveform_l1_weight=20',
                             '--config.model.quantizer_dropout=0.0']
  assert recipe.parse_variant('base').flags() == []


@pytest.mark.parametrize('text', ['', 'a b', 'x:loss.adv_weight', 'x:=3'])
def test_malformed_variant_is_refused_with_the_flag_named(text):
  with pytest.raises(ValueError, match='--variant'):
    recipe.parse_variant(text)


def test_entropy_bitrate_of_uniform_and_constant_codes():
  frame_rate, size = 50.0, 16
  uniform = np.tile(np.arange(size), 4)[None]  # one level, every code equally often: 4 bits
  constant = np.zeros((1, 64), np.int64)  # one code only: 0 bits
  both = [np.concatenate([uniform, constant])]
  assert recipe.entropy_kbps(both, size, frame_rate) == pytest.approx(4 * frame_rate / 1000)
  # Counts pool over files: two files of one code each (a different one) make 1 bit, not 0.
  files = [np.zeros((1, 8), np.int64), np.ones((1, 8), np.int64)]
  assert recipe.entropy_kbps(files, size, frame_rate) == pytest.approx(frame_rate / 1000)


def test_spread_is_mean_and_half_range_of_finite_values():
  assert recipe.spread([1.0, 3.0, math.nan]) == (2.0, 1.0)
  mean, half = recipe.spread([math.nan])
  assert math.isnan(mean) and math.isnan(half)


def test_table_has_a_row_per_run_a_mean_per_variant_and_opus():
  runs = [{'variant': 'base', 'seed': s, 'step': 10, 'seconds_per_step': 1.0, 'entropy_kbps': 5.0,
           'snr_db': v, 'si_sdr_db': v, 'mel_distance': 1.0, 'stoi': 0.8, 'pesq': 1.5}
          for s, v in ((0, 1.0), (1, 3.0))]
  opus = [{'name': 'opus 6 kbps', 'snr_db': 0.5, 'si_sdr_db': 0.0, 'mel_distance': 2.0,
           'stoi': 0.7, 'pesq': 1.4}]
  lines = recipe.format_table(runs, opus).splitlines()
  assert [l.split()[0] for l in lines[2:]] == ['base', 'base', 'base', 'opus']
  assert '2.000+-1.000' in lines[4]  # SNR over the two seeds


def _load_bench(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / 'bench' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_curves_read_back_what_tensorboard_wrote_even_from_a_cut_file(tmp_path):
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  curves = _load_bench('curves')
  writer = SummaryWriter(str(tmp_path))
  for step in (50, 100, 150):
    writer.add_scalar('train/mel_loss', 4.0 - step / 100, step)
  writer.add_scalar('val/mel_distance', 2.5, 150)
  writer.close()
  start, scalars = curves.read_scalars(tmp_path)
  assert [(s, round(v, 6)) for _, s, v in scalars['train/mel_loss']] == [
      (50, 3.5), (100, 3.0), (150, 2.5)]
  assert [v for _, _, v in scalars['val/mel_distance']] == [2.5]
  assert start <= min(t for t, _, _ in scalars['train/mel_loss'])
  # A run killed mid-write leaves a partial last record: the complete ones still read.
  (path,) = tmp_path.glob('events.out.tfevents.*')
  path.write_bytes(path.read_bytes()[:-10])
  _, cut = curves.read_scalars(tmp_path)
  assert len(cut['train/mel_loss']) + len(cut['val/mel_distance']) == 3
