"""Health monitor rules on constructed metric histories: each red rule fires, healthy runs stay green."""
import math

import pytest

from codec import config as config_lib
from codec import health


@pytest.fixture(name='cfg')
def _cfg():
  return config_lib.base_config().health


def _record(epoch, disc=0.35, spread=0.1, feat=2.0, snr=None, amp=80.0, **extra):
  """One metrics.jsonl epoch record; snr defaults to a value rising 1 dB per epoch."""
  record = {
      'epoch': epoch, 'step': epoch * 100,
      'disc_loss': disc, 'disc_loss_min': disc - spread / 2, 'disc_loss_max': disc + spread / 2,
      'feat_loss': feat, 'adv_loss': 0.6, 'mel_loss': 1.5,
      'snr_db': float(epoch) if snr is None else snr, 'si_sdr_db': 1.0,
      'amplitude_ratio': amp, 'mel_distance': 1.4,
  }
  record.update(extra)
  return record


def _healthy(epochs=6):
  return [_record(e, disc=0.4 - 0.01 * e, amp=80.0 + e) for e in range(1, epochs + 1)]


def _by_check(flags):
  return {flag.check: flag.color for flag in flags}


def _stuck_hinge(epochs=6, snr_last=-3.0):
  """Our users' run: hinge D flat at 2.0, feature loss 0.01, SNR negative."""
  history = [_record(e, disc=2.0, spread=0.002, feat=0.01, snr=-3.0 - e, amp=80.0)
             for e in range(1, epochs)]
  history.append(_record(epochs, disc=2.0, spread=0.002, feat=0.01, snr=snr_last, amp=80.0))
  return history


def test_healthy_lsgan_history_all_green(cfg):
  flags = health.assess(_healthy(), cfg, 'lsgan')
  assert _by_check(flags) == {'discriminator': 'green', 'feature': 'green', 'snr': 'green',
                              'amplitude': 'green'}
  assert health.all_green(flags)
  assert not health.red_flags(flags)


def test_users_stuck_hinge_run(cfg):
  flags = health.assess(_stuck_hinge(), cfg, 'hinge')
  assert _by_check(flags) == {'discriminator': 'red', 'feature': 'red', 'snr': 'red',
                              'amplitude': 'green'}
  assert not health.all_green(flags)
  disc = next(f for f in flags if f.check == 'discriminator')
  assert '2.0' in disc.message and 'stuck' in disc.message


def test_discriminator_stuck_lsgan(cfg):
  history = _healthy(5) + [_record(6, disc=0.498, spread=0.004)]
  flags = health.assess(history, cfg, 'lsgan')
  assert _by_check(flags)['discriminator'] == 'red'
  message = next(f.message for f in flags if f.check == 'discriminator')
  assert '0.498' in message and '0.5' in message


def test_discriminator_mean_at_value_but_swinging_is_not_stuck(cfg):
  # The epoch mean at 0.5 alone is no evidence: the steps ranged widely.
  history = [_record(1, disc=0.5, spread=0.3)]
  assert 'discriminator' not in _by_check(health.assess(history, cfg, 'lsgan'))


def test_discriminator_stuck_value_depends_on_gan(cfg):
  # 0.5 is the LSGAN no-learning value but a well-trained hinge discriminator.
  history = [_record(1, disc=0.5, spread=0.002), _record(2, disc=0.5, spread=0.002)]
  assert _by_check(health.assess(history, cfg, 'lsgan'))['discriminator'] == 'red'
  assert 'discriminator' not in _by_check(health.assess(history, cfg, 'hinge'))
  history[0]['disc_loss'] = 0.7  # now it moved since the previous epoch
  assert _by_check(health.assess(history, cfg, 'hinge'))['discriminator'] == 'green'


def test_feature_collapse(cfg):
  history = _healthy(5) + [_record(6, feat=0.05)]
  assert _by_check(health.assess(history, cfg, 'lsgan'))['feature'] == 'red'
  history[-1]['feat_loss'] = 50.0  # above max_feat_loss: neither red nor green
  assert 'feature' not in _by_check(health.assess(history, cfg, 'lsgan'))


def test_snr_grace_period(cfg):
  early = _healthy(1) + [_record(2, snr=-2.0)]
  assert 'snr' not in _by_check(health.assess(early, cfg, 'lsgan'))
  late = _healthy(4) + [_record(5, snr=-2.0)]
  flags = health.assess(late, cfg, 'lsgan')
  assert _by_check(flags)['snr'] == 'red'
  assert '-2.00 dB' in next(f.message for f in flags if f.check == 'snr')


def test_snr_green_needs_rise(cfg):
  history = _healthy(5) + [_record(6, snr=4.0)]  # epoch 5 had 5 dB
  assert 'snr' not in _by_check(health.assess(history, cfg, 'lsgan'))
  first = health.assess([_record(1, snr=0.5)], cfg, 'lsgan')
  snr = next(f for f in first if f.check == 'snr')
  assert snr.color == 'green' and 'first epoch' in snr.message


@pytest.mark.parametrize('ratio', [30.0, 150.0])
def test_amplitude_out_of_range(cfg, ratio):
  history = _healthy(5) + [_record(6, amp=ratio)]
  assert _by_check(health.assess(history, cfg, 'lsgan'))['amplitude'] == 'red'
  early = _healthy(1) + [_record(2, amp=ratio)]
  assert 'amplitude' not in _by_check(health.assess(early, cfg, 'lsgan'))


def test_amplitude_green_needs_stability(cfg):
  history = [_record(1, amp=72.0), _record(2, amp=90.0)]  # in band, but jumped 18 points
  assert 'amplitude' not in _by_check(health.assess(history, cfg, 'lsgan'))


def test_nan_flagged(cfg):
  history = _healthy(5) + [_record(6, disc=math.nan, mel_loss=math.inf)]
  flags = health.assess(history, cfg, 'lsgan')
  checks = _by_check(flags)
  assert checks['nan'] == 'red' and 'discriminator' not in checks
  message = next(f.message for f in flags if f.check == 'nan')
  assert 'disc_loss' in message and 'mel_loss' in message
  assert not health.all_green(flags)


def test_missing_values_never_crash(cfg):
  bare = {'epoch': 7, 'step': 700, 'disc_loss': None, 'snr_db': None, 'amplitude_ratio': None}
  assert health.assess([bare], cfg, 'lsgan') == []
  assert health.assess([], cfg, 'lsgan') == []
  assert 'n/a' in health.red_flag_report(bare, [], [])


def test_format_flags(cfg):
  text = health.format_flags(health.assess(_stuck_hinge(), cfg, 'hinge'))
  lines = text.splitlines()
  assert lines[0].startswith('RED   discriminator: ')
  assert any(line.startswith('GREEN amplitude: ') for line in lines)
  assert len(lines) == 4


def test_red_flag_report_format(cfg):
  record = _record(3, disc=0.4981, feat=0.0123, snr=-1.2, amp=45.1)
  flags = health.assess([record], cfg, 'lsgan')
  report = health.red_flag_report(record, flags, [f'line {i}\n' for i in range(30)])
  lines = report.splitlines()
  assert lines[:5] == ['Epoch: 3', 'Discriminator Loss: 0.4981', 'Feature Loss: 0.0123',
                       'SNR: -1.20 dB', 'Amplitude Ratio: 45.1%']
  assert lines[5] == 'Red flags:'
  assert '  - feature: ' in report
  log_section = lines[lines.index('Last 20 log lines:') + 1:]
  assert log_section == [f'  line {i}' for i in range(10, 30)]


def test_write_red_flag_report(cfg, tmp_path):
  log = tmp_path / 'train.log'
  log.write_text(''.join(f'step {i}\n' for i in range(50)))
  record = _stuck_hinge()[-1]
  flags = health.assess(_stuck_hinge(), cfg, 'hinge')
  path = health.write_red_flag_report(tmp_path, record, flags, log)
  assert path == tmp_path / 'health_step_0000600.txt'
  text = path.read_text()
  assert text.startswith('Epoch: 6\n') and '  step 49' in text and '  step 29\n' not in text
  assert text.count('\n  step ') == 20

  missing = health.write_red_flag_report(tmp_path, record, flags, tmp_path / 'nope.log')
  assert missing.read_text().endswith('Last 20 log lines:\n')
