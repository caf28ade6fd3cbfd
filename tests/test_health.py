"""Health monitor rules on constructed metric histories: each red rule fires, healthy runs stay green."""
import math

import pytest

from codec import config as config_lib
from codec import health


@pytest.fixture(name='cfg')
def _cfg():
  return config_lib.base_config().health


STEPS = 1000  # between evaluations (DAC's interval); grace_steps is 5000


def _record(n, disc=0.35, spread=0.1, feat=2.0, snr=None, amp=80.0, usage=0.6, rd=None, **extra):
  """The metrics.jsonl record of evaluation n; snr defaults to a value rising 1 dB each time."""
  record = {
      'step': n * STEPS, 'epoch': n * STEPS / 1500,
      'disc_loss': disc, 'disc_loss_min': disc - spread / 2, 'disc_loss_max': disc + spread / 2,
      'feat_loss': feat, 'adv_loss': 0.6, 'mel_loss': 1.5,
      'snr_db': float(n) if snr is None else snr, 'si_sdr_db': 1.0,
      'amplitude_ratio': amp, 'mel_distance': 1.4,
      'codebook_size': 1024, 'codebook_frames': [3200.0] * 4,
      'codebook_usage_per_level': [usage] * 4, 'codebook_perplexity_per_level': [400.0] * 4,
      'rd_mel_distance': rd or [2.0, 1.7, 1.5, 1.4], 'rd_snr_db': [0.5, 1.5, 2.5, 3.0],
  }
  record.update(extra)
  return record


def _healthy(n=6):
  return [_record(e, disc=0.4 - 0.01 * e, amp=80.0 + e) for e in range(1, n + 1)]


def _by_check(flags):
  return {flag.check: flag.color for flag in flags}


def _stuck_hinge(n=6, snr_last=-3.0):
  """Our users' run: hinge D flat at 2.0, feature loss 0.01, SNR negative."""
  history = [_record(e, disc=2.0, spread=0.002, feat=0.01, snr=-3.0 - e, amp=80.0)
             for e in range(1, n)]
  history.append(_record(n, disc=2.0, spread=0.002, feat=0.01, snr=snr_last, amp=80.0))
  return history


ALL_GREEN = {'discriminator': 'green', 'feature': 'green', 'snr': 'green', 'amplitude': 'green',
             'codebook': 'green', 'levels': 'green'}


def test_healthy_lsgan_history_all_green(cfg):
  flags = health.assess(_healthy(), cfg, 'lsgan')
  assert _by_check(flags) == ALL_GREEN
  assert health.all_green(flags)
  assert not health.red_flags(flags)


def test_long_healthy_plateau_at_full_amplitude_stays_green(cfg):
  """A converged run: SNR and amplitude flat (100%, a perfect level), for 50 evaluations."""
  history = []
  for n in range(1, 51):
    history.append(_record(n, disc=0.3 + 0.01 * (n % 2), snr=12.0 - 0.2 * (n % 2), amp=100.0))
    flags = health.assess(history, cfg, 'lsgan')
    assert _by_check(flags) == ALL_GREEN, (n, health.format_flags(flags))
  # A plateau approached from below, by more than amplitude_stable_pct at once, is green too.
  rising = [_record(1, amp=68.9), _record(2, amp=80.7)]
  assert _by_check(health.assess(rising, cfg, 'lsgan'))['amplitude'] == 'green'


def test_users_stuck_hinge_run(cfg):
  flags = health.assess(_stuck_hinge(), cfg, 'hinge')
  assert _by_check(flags) == {'discriminator': 'red', 'feature': 'red', 'snr': 'red',
                              'amplitude': 'green', 'codebook': 'green', 'levels': 'green'}
  assert not health.all_green(flags)
  disc = next(f for f in flags if f.check == 'discriminator')
  assert '2.0' in disc.message and 'stuck' in disc.message


def test_discriminator_stuck_lsgan(cfg):
  history = _healthy(5) + [_record(6, disc=0.498, spread=0.004)]
  flags = health.assess(history, cfg, 'lsgan')
  assert _by_check(flags)['discriminator'] == 'red'
  message = next(f.message for f in flags if f.check == 'discriminator')
  assert '0.498' in message and '0.5' in message


def test_discriminator_still_at_its_initial_value_is_red_after_its_grace(cfg):
  # LSGAN outputs ~0 all interval: 1.0 per discriminator, as dead as the constant 0.5.
  history = [_record(1, disc=1.003, spread=0.004)]
  flags = health.assess(history, cfg, 'lsgan')
  assert _by_check(flags)['discriminator'] == 'red'
  assert 'initial value 1.0' in next(f.message for f in flags if f.check == 'discriminator')
  early = [_record(1, disc=1.003, spread=0.004, step=cfg.disc_grace_steps - 1)]
  assert 'discriminator' not in _by_check(health.assess(early, cfg, 'lsgan'))
  moving = [_record(1, disc=1.0, spread=0.5)]  # the epoch-1 range of a learning run: 0.26-1.0
  assert 'discriminator' not in _by_check(health.assess(moving, cfg, 'lsgan'))


def test_discriminator_mean_at_value_but_swinging_is_not_stuck(cfg):
  # The interval mean at 0.5 alone is no evidence: the steps ranged widely.
  history = [_record(1, disc=0.5, spread=0.3)]
  assert 'discriminator' not in _by_check(health.assess(history, cfg, 'lsgan'))


def test_discriminator_stuck_value_depends_on_gan(cfg):
  # 0.5 is the LSGAN no-learning value but a well-trained hinge discriminator.
  history = [_record(1, disc=0.5, spread=0.002), _record(2, disc=0.5, spread=0.002)]
  assert _by_check(health.assess(history, cfg, 'lsgan'))['discriminator'] == 'red'
  assert 'discriminator' not in _by_check(health.assess(history, cfg, 'hinge'))
  history[0]['disc_loss'] = 0.7  # now it moved since the previous evaluation
  assert _by_check(health.assess(history, cfg, 'hinge'))['discriminator'] == 'green'


def test_feature_collapse(cfg):
  history = _healthy(5) + [_record(6, feat=0.05)]
  assert _by_check(health.assess(history, cfg, 'lsgan'))['feature'] == 'red'
  history[-1]['feat_loss'] = 50.0  # above max_feat_loss: neither red nor green
  assert 'feature' not in _by_check(health.assess(history, cfg, 'lsgan'))


def test_snr_grace_period_counts_steps(cfg):
  early = _healthy(1) + [_record(2, snr=-2.0)]
  assert 'snr' not in _by_check(health.assess(early, cfg, 'lsgan'))
  late = _healthy(4) + [_record(5, snr=-2.0)]  # step 5000
  flags = health.assess(late, cfg, 'lsgan')
  assert _by_check(flags)['snr'] == 'red'
  assert '-2.00 dB' in next(f.message for f in flags if f.check == 'snr')
  # The same step reached with frequent evaluations: the rule looks at the step, not the count.
  frequent = [_record(n / 10, snr=1.0) for n in range(1, 50)] + [_record(5, snr=-2.0)]
  assert _by_check(health.assess(frequent, cfg, 'lsgan'))['snr'] == 'red'
  assert 'snr' not in _by_check(health.assess(frequent[:-2] + [_record(4.9, snr=-2.0)], cfg,
                                              'lsgan'))


def test_snr_plateau_is_green_but_a_fall_is_not(cfg):
  plateau = _healthy(5) + [_record(6, snr=5.0 - cfg.snr_fall_db / 2)]  # evaluation 5 had 5 dB
  snr = next(f for f in health.assess(plateau, cfg, 'lsgan') if f.check == 'snr')
  assert snr.color == 'green' and 'not falling' in snr.message
  falling = _healthy(5) + [_record(6, snr=5.0 - 2 * cfg.snr_fall_db)]
  assert 'snr' not in _by_check(health.assess(falling, cfg, 'lsgan'))
  first = health.assess([_record(1, snr=0.5)], cfg, 'lsgan')
  snr = next(f for f in first if f.check == 'snr')
  assert snr.color == 'green' and 'first evaluation' in snr.message


@pytest.mark.parametrize('ratio', [30.0, 150.0])
def test_amplitude_out_of_range(cfg, ratio):
  history = _healthy(5) + [_record(6, amp=ratio)]
  assert _by_check(health.assess(history, cfg, 'lsgan'))['amplitude'] == 'red'
  early = _healthy(1) + [_record(2, amp=ratio)]
  assert 'amplitude' not in _by_check(health.assess(early, cfg, 'lsgan'))


@pytest.mark.parametrize('ratio, color', [(69.0, None), (70.0, 'green'), (100.0, 'green'),
                                          (105.0, 'green'), (110.0, None)])
def test_amplitude_green_band_includes_100(cfg, ratio, color):
  history = [_record(1, amp=ratio), _record(2, amp=ratio)]
  assert _by_check(health.assess(history, cfg, 'lsgan')).get('amplitude') == color


def test_amplitude_moving_away_from_100_is_not_green(cfg):
  history = [_record(1, amp=100.0), _record(2, amp=88.0)]  # in band, but fell 12 points
  assert 'amplitude' not in _by_check(health.assess(history, cfg, 'lsgan'))
  history = [_record(1, amp=96.0), _record(2, amp=90.0)]  # fell 6 points: stable
  assert _by_check(health.assess(history, cfg, 'lsgan'))['amplitude'] == 'green'


def test_codebook_collapse_is_red(cfg):
  history = [_record(1, codebook_usage_per_level=[0.6, 0.6, 0.05, 0.6])]
  flags = health.assess(history, cfg, 'lsgan')
  assert _by_check(flags)['codebook'] == 'red'
  assert 'level 3: 5.0%' in next(f.message for f in flags if f.check == 'codebook')
  assert not health.all_green(flags)
  # Over 40 frames a level reaches at most 40 of 1024 codes: 3.5% of them is most of those.
  small = [_record(1, codebook_frames=[40.0] * 4, codebook_usage_per_level=[0.035] * 4)]
  assert _by_check(health.assess(small, cfg, 'lsgan'))['codebook'] == 'green'
  small[0]['codebook_usage_per_level'] = [0.035, 0.035, 0.002, 0.035]
  assert _by_check(health.assess(small, cfg, 'lsgan'))['codebook'] == 'red'


def test_later_levels_that_add_nothing_are_red_after_the_grace(cfg):
  flat = [2.0, 1.7, 1.696, 1.695]  # levels 3 and 4 remove 0.005
  late = _healthy(4) + [_record(5, rd_mel_distance=flat)]
  flags = health.assess(late, cfg, 'lsgan')
  assert _by_check(flags)['levels'] == 'red'
  assert 'levels 3-4' in next(f.message for f in flags if f.check == 'levels')
  early = [_record(1, rd_mel_distance=flat)]
  assert 'levels' not in _by_check(health.assess(early, cfg, 'lsgan'))
  worse = _healthy(4) + [_record(5, rd_mel_distance=[2.0, 1.7, 1.8, 1.9])]
  assert _by_check(health.assess(worse, cfg, 'lsgan'))['levels'] == 'red'


def test_nan_flagged(cfg):
  history = _healthy(5) + [_record(6, disc=math.nan, mel_loss=math.inf)]
  flags = health.assess(history, cfg, 'lsgan')
  checks = _by_check(flags)
  assert checks['nan'] == 'red' and 'discriminator' not in checks
  message = next(f.message for f in flags if f.check == 'nan')
  assert 'disc_loss' in message and 'mel_loss' in message
  assert not health.all_green(flags)


def test_missing_values_never_crash(cfg):
  bare = {'epoch': 7, 'step': 7000, 'disc_loss': None, 'snr_db': None, 'amplitude_ratio': None}
  assert health.assess([bare], cfg, 'lsgan') == []
  assert health.assess([], cfg, 'lsgan') == []
  assert 'n/a' in health.red_flag_report(bare, [], [])


def test_format_flags(cfg):
  text = health.format_flags(health.assess(_stuck_hinge(), cfg, 'hinge'))
  lines = text.splitlines()
  assert lines[0].startswith('RED   discriminator: ')
  assert any(line.startswith('GREEN amplitude: ') for line in lines)
  assert len(lines) == 6


def test_red_flag_report_format(cfg):
  record = _record(3, disc=0.4981, feat=0.0123, snr=-1.2, amp=45.1)
  flags = health.assess([record], cfg, 'lsgan')
  report = health.red_flag_report(record, flags, [f'line {i}\n' for i in range(30)])
  lines = report.splitlines()
  assert lines[:6] == ['Epoch: 2.0', 'Step: 3000', 'Discriminator Loss: 0.4981',
                       'Feature Loss: 0.0123', 'SNR: -1.20 dB', 'Amplitude Ratio: 45.1%']
  assert lines[6] == 'Red flags:'
  assert '  - feature: ' in report
  log_section = lines[lines.index('Last 20 log lines:') + 1:]
  assert log_section == [f'  line {i}' for i in range(10, 30)]


def test_write_red_flag_report(cfg, tmp_path):
  log = tmp_path / 'train.log'
  log.write_text(''.join(f'step {i}\n' for i in range(50)))
  record = _stuck_hinge()[-1]
  flags = health.assess(_stuck_hinge(), cfg, 'hinge')
  path = health.write_red_flag_report(tmp_path, record, flags, log)
  assert path == tmp_path / 'health_step_0006000.txt'
  text = path.read_text()
  assert text.startswith('Epoch: 4.0\nStep: 6000\n') and '  step 49' in text and '  step 29\n' not in text
  assert text.count('\n  step ') == 20

  missing = health.write_red_flag_report(tmp_path, record, flags, tmp_path / 'nope.log')
  assert missing.read_text().endswith('Last 20 log lines:\n')
