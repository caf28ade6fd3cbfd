"""`python -m codec evaluate`: metrics, the Opus baseline, CSV, plot, the validation split."""
import csv
import math
import sys

import numpy as np
import pytest
import soundfile as sf

from codec import data
from codec import evaluate
from codec import inference
from experiments import dac_16khz
from test_inference import make_run_dir, run_cli, speechlike

SR = 16000


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp('eval_audio')
  (root / 'spk').mkdir()
  sf.write(root / 'a.wav', speechlike(1.0, 10), SR)
  sf.write(root / 'spk' / 'b.flac', speechlike(1.0, 11), SR)
  return root


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, corpus):
  config = dac_16khz.get_config('tiny')
  config.data.data_dir = str(corpus)
  path = tmp_path_factory.mktemp('eval_run')
  make_run_dir(path, config)
  return path


@pytest.fixture(scope='module')
def codec(run_dir):
  return inference.load(run_dir)


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_score_of_identical_and_scaled_signals():
  x = speechlike(1.0, 12)
  scorers = evaluate.Scorers(None, None, [])
  same = evaluate.score(x, x, SR, scorers)
  assert same['snr_db'] > 60 and same['si_sdr_db'] > 60
  assert same['mel_distance'] == pytest.approx(0, abs=1e-6)
  assert same['amplitude_ratio'] == pytest.approx(100, rel=1e-5)
  assert math.isnan(same['stoi']) and math.isnan(same['pesq'])
  half = evaluate.score(x, 0.5 * x, SR, scorers)
  assert half['amplitude_ratio'] == pytest.approx(50, rel=1e-4)
  assert half['si_sdr_db'] > 60  # scale-invariant
  assert half['snr_db'] == pytest.approx(20 * math.log10(2), abs=1e-3)


def test_evaluate_cli_writes_table_csv_and_plot(run_dir, corpus, tmp_path, capsys):
  out = tmp_path / 'eval'
  status, stdout, stderr = run_cli(['evaluate', '--checkpoint', run_dir, '--data_dir', corpus,
                                    '--n_quantizers', '1,3', '--baselines', '--out', out], capsys)
  assert status == 0, stderr
  with_opus = evaluate.opus_available()
  rows = read_csv(out / 'per_file.csv')
  assert {r['file'] for r in rows} == {'a.wav', 'spk/b.flac'}
  codec_rows = [r for r in rows if r['codec'] == 'codec']
  assert sorted((r['file'], r['n_quantizers']) for r in codec_rows) == [
      ('a.wav', '1'), ('a.wav', '3'), ('spk/b.flac', '1'), ('spk/b.flac', '3')]
  assert {float(r['kbps']) for r in codec_rows} == {0.2, 0.6}
  for row in codec_rows:
    assert all(row[c] != '' for c in ('snr_db', 'si_sdr_db', 'mel_distance', 'amplitude_ratio'))
  summary = read_csv(out / 'summary.csv')
  assert [r['file'] for r in summary[:2]] == ['mean of 2'] * 2
  assert (out / 'metrics.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert 'SI-SDR dB' in stdout and 'PESQ' in stdout
  if with_opus:
    opus = [r for r in rows if r['codec'] == 'opus']
    assert {float(r['kbps']) for r in opus} == {0.5, 0.6}  # 0.2 kbps raised to opusenc's floor
    assert ' opus ' in stdout
  else:
    assert 'Opus baseline skipped' in stdout
  scorers = evaluate.load_scorers()
  if scorers.stoi is not None and scorers.pesq is not None:
    assert all(r['stoi'] != '' and r['pesq'] != '' for r in codec_rows)


def test_missing_packages_and_opus_leave_clear_notes(codec, corpus, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'pystoi', None)  # import fails as if not installed
  monkeypatch.setitem(sys.modules, 'pesq', None)
  monkeypatch.setattr(evaluate.shutil, 'which', lambda name: None)
  files = [corpus / 'a.wav', corpus / 'missing.wav']
  rows, summary, notes = evaluate.run(codec, files, corpus, [3], True, tmp_path)
  assert len(rows) == 1 and len(summary) == 1
  assert rows[0]['codec'] == 'codec' and math.isnan(rows[0]['stoi'])
  text = ' '.join(notes)
  assert 'pystoi is not installed' in text and 'pesq is not installed' in text
  assert 'opus-tools' in text and 'missing.wav' in text
  written = read_csv(tmp_path / 'per_file.csv')[0]
  assert written['stoi'] == '' and written['pesq'] == '' and written['snr_db'] != ''
  assert ' - ' in evaluate.format_table(summary)


def test_split_val_picks_the_runs_validation_files(codec, corpus, tmp_path):
  extra = tmp_path / 'many'
  for i in range(8):
    (extra / f'd{i % 2}').mkdir(parents=True, exist_ok=True)
    sf.write(extra / f'd{i % 2}' / f'{i}.wav', speechlike(0.5, i), SR)
  config = codec.config.copy_and_resolve_references()
  config.data.val_fraction = 0.3
  codec = inference.Codec(config, codec.params)
  files, notes = evaluate.select_files(str(extra), 'val', codec)
  rels = sorted(p.relative_to(extra).as_posix() for p in extra.rglob('*.wav'))
  _, expected = data.split_train_val(rels, 0.3)
  assert [f.relative_to(extra).as_posix() for f in files] == expected and not notes
  assert 0 < len(files) < 8
  everything, _ = evaluate.select_files(str(extra), 'all', codec)
  assert len(everything) == 8
  with pytest.raises(inference.CodecError, match='no such folder'):
    evaluate.select_files(str(tmp_path / 'nowhere'), 'all', codec)


def test_default_levels_and_bad_lists(run_dir, corpus, capsys):
  assert evaluate.default_levels(12) == [4, 8, 12]
  assert evaluate.default_levels(3) == [1, 2, 3]
  status, _, err = run_cli(['evaluate', '--checkpoint', run_dir, '--data_dir', corpus,
                            '--n_quantizers', '2,7'], capsys)
  assert status == 1 and '[1, 3]' in err


def test_summary_ignores_nan_per_column():
  rows = [{'file': f, 'codec': 'codec', 'n_quantizers': 1, 'kbps': 0.2, 'snr_db': v,
           'si_sdr_db': 1.0, 'mel_distance': 1.0, 'stoi': math.nan, 'pesq': 2.0,
           'amplitude_ratio': 90.0} for f, v in (('a', 1.0), ('b', math.nan), ('c', 3.0))]
  (summary,) = evaluate.summarize(rows)
  assert summary['snr_db'] == 2.0 and math.isnan(summary['stoi'])
  assert np.isclose(summary['amplitude_ratio'], 90.0)
