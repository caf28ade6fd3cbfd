"""Training-health monitor: red/green flags for the last epoch of a GAN codec run.

A stalled GAN looks normal in the loss curves unless you know what to look for: a discriminator
whose loss sits at its no-learning value (`losses.no_learning_value`: 0.5 for LSGAN, 2.0 for
hinge) all epoch has learned nothing, the feature-matching loss then collapses (its features carry
no signal) and the generator trains on the reconstruction losses alone. `assess` turns the epoch
history (the records of metrics.jsonl, oldest first) into flags for the last epoch; each check
is red (act now), green (healthy) or silent (too early or inconclusive). Thresholds come from
`config.health`. Missing, None or non-finite values silence their check instead of crashing:
non-finite values get their own red 'nan' flag.

`red_flag_report` is the plain-text form users paste to each other when asking for help.
"""
import collections
import dataclasses
import math
import numbers
import pathlib

from codec import losses

# The four checks all_green requires; 'nan' is red-only.
_HEALTH_CHECKS = ('discriminator', 'feature', 'snr', 'amplitude')
# Log lines quoted in a red-flag report: enough context without drowning the numbers.
REPORT_LOG_LINES = 20


@dataclasses.dataclass(frozen=True)
class Flag:
  color: str  # 'red' or 'green'
  check: str  # 'discriminator', 'feature', 'snr', 'amplitude' or 'nan'
  message: str  # human-readable, with the numbers that triggered it


# ---- Value helpers: records come from JSON, so anything may be None, NaN or missing.


def _is_number(x) -> bool:
  # bool is an int subclass but never a metric.
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _finite(record: dict, key: str):
  """record[key] as a float, or None when missing, None, non-numeric or non-finite."""
  x = record.get(key)
  if not _is_number(x) or not math.isfinite(x):
    return None
  return float(x)


def _epoch(history: list[dict]) -> int:
  """The last record's 1-based epoch; its position in history when the field is unusable."""
  epoch = _finite(history[-1], 'epoch')
  return int(epoch) if epoch is not None else len(history)


def _previous(history: list[dict], key: str):
  """(epoch, value) of the latest earlier record with a finite `key`, or None.

  Looking past the immediately preceding record keeps the comparison meaningful when validation
  does not run every epoch or one epoch logged NaN.
  """
  for index in range(len(history) - 2, -1, -1):
    value = _finite(history[index], key)
    if value is not None:
      epoch = _finite(history[index], 'epoch')
      return (int(epoch) if epoch is not None else index + 1), value
  return None


def _no_baseline(history: list[dict]) -> str:
  return 'first epoch' if len(history) == 1 else 'no earlier value to compare'


def _g(x: float) -> str:
  return f'{x:.3g}'


def _d(x: float) -> str:
  # Fixed decimals: a stuck loss reads 2.000 (range 1.999-2.001), not 2 (range 2-2).
  return f'{x:.3f}'


# ---- The checks: each returns a Flag or None for the last record of history.


def check_nan(record: dict):
  """Red when any numeric value of the record is NaN or inf: the run has diverged somewhere."""
  bad = [key for key, x in record.items() if _is_number(x) and not math.isfinite(x)]
  if not bad:
    return None
  return Flag('red', 'nan', 'non-finite values: ' + ', '.join(f'{k}={record[k]}' for k in bad))


def check_discriminator(history: list[dict], health, gan: str):
  """Red when the loss is at the no-learning value all epoch; green when below it and moving."""
  record = history[-1]
  v = losses.no_learning_value(gan)
  tol = health.disc_stuck_tolerance
  loss = _finite(record, 'disc_loss')
  if loss is None:
    return None
  low, high = _finite(record, 'disc_loss_min'), _finite(record, 'disc_loss_max')
  has_range = low is not None and high is not None
  # The mean alone can sit at v while the steps swing around it; only a flat epoch is stuck.
  if has_range and all(abs(x - v) <= tol for x in (loss, low, high)):
    return Flag('red', 'discriminator',
                f'discriminator loss {_d(loss)} stuck at its no-learning value {v} '
                f'(range {_d(low)}-{_d(high)} this epoch)')
  if loss >= v - tol:
    return None
  if has_range and abs(high - low) > tol:
    return Flag('green', 'discriminator',
                f'discriminator loss {_d(loss)} below its no-learning value {v} and moving '
                f'(range {_d(low)}-{_d(high)} this epoch)')
  previous = _previous(history, 'disc_loss')
  if previous is not None and abs(loss - previous[1]) > tol:
    return Flag('green', 'discriminator',
                f'discriminator loss {_d(loss)} below its no-learning value {v} and moving '
                f'(was {_d(previous[1])} at epoch {previous[0]})')
  return None


def check_feature(history: list[dict], health):
  """Red when feature matching has collapsed; green inside [min_feat_loss, max_feat_loss]."""
  loss = _finite(history[-1], 'feat_loss')
  if loss is None:
    return None
  if loss < health.min_feat_loss:
    return Flag('red', 'feature',
                f'feature loss {_g(loss)} below {_g(health.min_feat_loss)}: the discriminator '
                'features carry almost no signal')
  if loss <= health.max_feat_loss:
    return Flag('green', 'feature',
                f'feature loss {_g(loss)} within {_g(health.min_feat_loss)}-'
                f'{_g(health.max_feat_loss)}')
  return None


def check_snr(history: list[dict], health):
  """Red when validation SNR is negative after the grace period; green when positive, rising."""
  snr = _finite(history[-1], 'snr_db')
  if snr is None:
    return None
  epoch = _epoch(history)
  # Early epochs legitimately reconstruct worse than silence; judge only after grace_epochs.
  if snr < 0 and epoch >= health.grace_epochs:
    return Flag('red', 'snr',
                f'validation SNR {snr:.2f} dB negative at epoch {epoch} '
                f'(checked from epoch {health.grace_epochs})')
  if snr <= 0:
    return None
  previous = _previous(history, 'snr_db')
  if previous is None:
    return Flag('green', 'snr', f'validation SNR {snr:.2f} dB positive ({_no_baseline(history)})')
  if snr > previous[1]:
    return Flag('green', 'snr',
                f'validation SNR {snr:.2f} dB positive and rising '
                f'(was {previous[1]:.2f} dB at epoch {previous[0]})')
  return None


def check_amplitude(history: list[dict], health):
  """Red outside [min, max]_amplitude_ratio after the grace period; green in band and stable."""
  ratio = _finite(history[-1], 'amplitude_ratio')
  if ratio is None:
    return None
  epoch = _epoch(history)
  if epoch >= health.grace_epochs and not (
      health.min_amplitude_ratio <= ratio <= health.max_amplitude_ratio):
    return Flag('red', 'amplitude',
                f'amplitude ratio {ratio:.1f}% outside {_g(health.min_amplitude_ratio)}-'
                f'{_g(health.max_amplitude_ratio)}% at epoch {epoch}')
  if not health.green_amplitude_low <= ratio <= health.green_amplitude_high:
    return None
  band = f'within {_g(health.green_amplitude_low)}-{_g(health.green_amplitude_high)}%'
  previous = _previous(history, 'amplitude_ratio')
  if previous is None:
    return Flag('green', 'amplitude', f'amplitude ratio {ratio:.1f}% {band} '
                f'({_no_baseline(history)})')
  change = ratio - previous[1]
  if abs(change) <= health.amplitude_stable_pct:
    return Flag('green', 'amplitude',
                f'amplitude ratio {ratio:.1f}% {band} and stable '
                f'({change:+.1f} points since epoch {previous[0]})')
  return None


# ---- Public API.


def assess(history: list[dict], health_config, gan: str) -> list[Flag]:
  """Flags for the last epoch of `history` (oldest first); [] for an empty history.

  health_config: `config.health`. gan: 'lsgan' or 'hinge' (config.loss.gan).
  """
  if not history:
    return []
  flags = [
      check_discriminator(history, health_config, gan),
      check_feature(history, health_config),
      check_snr(history, health_config),
      check_amplitude(history, health_config),
      check_nan(history[-1]),
  ]
  return [flag for flag in flags if flag is not None]


def red_flags(flags) -> list[Flag]:
  return [flag for flag in flags if flag.color == 'red']


def all_green(flags) -> bool:
  """True when discriminator, feature, snr and amplitude are all green and nothing is red."""
  green = {flag.check for flag in flags if flag.color == 'green'}
  return not red_flags(flags) and green.issuperset(_HEALTH_CHECKS)


def format_flags(flags) -> str:
  """One line per flag, e.g. 'RED   discriminator: ...'; '' when there are none."""
  return '\n'.join(f'{flag.color.upper():<5} {flag.check}: {flag.message}' for flag in flags)


def _field(record: dict, key: str, spec: str, unit: str = '') -> str:
  x = record.get(key)
  return f'{x:{spec}}{unit}' if _is_number(x) else 'n/a'


def red_flag_report(record: dict, flags, log_lines: list[str]) -> str:
  """The report users send each other: key numbers, red flags, the last 20 log lines."""
  epoch = record.get('epoch')
  lines = [
      f'Epoch: {epoch if epoch is not None else "n/a"}',
      f'Discriminator Loss: {_field(record, "disc_loss", ".4f")}',
      f'Feature Loss: {_field(record, "feat_loss", ".4f")}',
      f'SNR: {_field(record, "snr_db", ".2f", " dB")}',
      f'Amplitude Ratio: {_field(record, "amplitude_ratio", ".1f", "%")}',
      'Red flags:',
  ]
  reds = red_flags(flags)
  lines += [f'  - {flag.check}: {flag.message}' for flag in reds] or ['  (none)']
  lines.append(f'Last {REPORT_LOG_LINES} log lines:')
  tail = list(log_lines)[-REPORT_LOG_LINES:]
  lines += ['  ' + line.rstrip('\r\n') for line in tail]
  return '\n'.join(lines) + '\n'


def _tail(path, n: int) -> list[str]:
  """Last n lines of a text file, streaming it (logs can be large); [] if it does not exist."""
  if path is None or not pathlib.Path(path).is_file():
    return []
  with open(path, encoding='utf-8', errors='replace') as f:
    return list(collections.deque(f, maxlen=n))


def report_path(run_dir, record: dict) -> pathlib.Path:
  """run_dir/health_step_NNNNNNN.txt: one per evaluation (several may fall in one epoch)."""
  step = _finite(record, 'step')
  return pathlib.Path(run_dir) / f'health_step_{int(step) if step is not None else 0:07d}.txt'


def write_red_flag_report(run_dir, record: dict, flags, log_path) -> pathlib.Path:
  """Writes report_path(run_dir, record) (red_flag_report of record) and returns its path."""
  path = report_path(run_dir, record)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(red_flag_report(record, flags, _tail(log_path, REPORT_LOG_LINES)),
                  encoding='utf-8')
  return path
