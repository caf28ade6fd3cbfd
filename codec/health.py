"""Training-health monitor: red/green flags for the latest evaluation of a GAN codec run.

A stalled GAN looks normal in the loss curves unless you know what to look for: a discriminator
whose loss sits at a dead value over a whole evaluation interval has learned nothing
(`losses.no_learning_value`: the constant output, 0.5 for LSGAN, 2.0 for hinge; or, for LSGAN, its
initial value 1.0 with outputs still ~0), the feature-matching loss then collapses (its features
carry no signal) and the generator trains on the reconstruction losses alone. The quantizer fails
quietly too: a level that uses a handful of its codes (collapse), or later levels that no longer
improve the reconstruction (the rate-distortion curve is flat at its end).

`assess` turns the history (the records of metrics.jsonl, one per evaluation, oldest first) into
flags for its last record; each check is red (act now), green (healthy) or silent (too early or
inconclusive). Grace periods count training steps and trends compare with the previous
evaluation, so the verdict means the same whatever the evaluation interval or corpus size.
Thresholds come from `config.health`. Missing, None or non-finite values silence their check
instead of crashing: non-finite values get their own red 'nan' flag.

`red_flag_report` is the plain-text form users paste to each other when asking for help.
"""
import collections
import dataclasses
import math
import numbers
import pathlib

from codec import losses

# The checks all_green requires; 'nan' is red-only and 'levels' needs a trained quantizer.
_HEALTH_CHECKS = ('discriminator', 'feature', 'snr', 'amplitude', 'codebook')
# Log lines quoted in a red-flag report: enough context without drowning the numbers.
REPORT_LOG_LINES = 20


@dataclasses.dataclass(frozen=True)
class Flag:
  color: str  # 'red' or 'green'
  check: str  # 'discriminator', 'feature', 'snr', 'amplitude', 'codebook', 'levels' or 'nan'
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


def _step(history: list[dict]) -> int:
  """The last record's training step; 0 (inside every grace period) when unusable."""
  step = _finite(history[-1], 'step')
  return int(step) if step is not None else 0


def _list(record: dict, key: str):
  """record[key] as a list of floats, or None when missing or holding a non-finite entry."""
  values = record.get(key)
  if not isinstance(values, (list, tuple)) or not values:
    return None
  if not all(_is_number(x) and math.isfinite(x) for x in values):
    return None
  return [float(x) for x in values]


def _previous(history: list[dict], key: str):
  """(step, value) of the latest earlier evaluation with a finite `key`, or None.

  Looking past the immediately preceding record keeps the comparison meaningful when one
  evaluation logged NaN.
  """
  for index in range(len(history) - 2, -1, -1):
    value = _finite(history[index], key)
    if value is not None:
      step = _finite(history[index], 'step')
      return (int(step) if step is not None else index + 1), value
  return None


def _no_baseline(history: list[dict]) -> str:
  return 'first evaluation' if len(history) == 1 else 'no earlier value to compare'


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
  """Red when the loss sat at a dead value all interval; green when below it and moving.

  Dead values: the constant output's (`losses.no_learning_value`) from the first evaluation, and
  the initial one (`losses.initial_value`, outputs ~0) from health.disc_grace_steps on.
  """
  record = history[-1]
  v = losses.no_learning_value(gan)
  dead = [v]
  if _step(history) >= health.disc_grace_steps:
    dead.append(losses.initial_value(gan))
  tol = health.disc_stuck_tolerance
  loss = _finite(record, 'disc_loss')
  if loss is None:
    return None
  low, high = _finite(record, 'disc_loss_min'), _finite(record, 'disc_loss_max')
  has_range = low is not None and high is not None
  # The mean alone can sit at a dead value while the steps swing around it: only a flat
  # interval is stuck.
  for value in sorted(set(dead)):
    if has_range and all(abs(x - value) <= tol for x in (loss, low, high)):
      kind = 'no-learning' if value == v else 'initial'
      return Flag('red', 'discriminator',
                  f'discriminator loss {_d(loss)} stuck at its {kind} value {value} '
                  f'(range {_d(low)}-{_d(high)} since the last evaluation)')
  if loss >= v - tol:
    return None
  if has_range and abs(high - low) > tol:
    return Flag('green', 'discriminator',
                f'discriminator loss {_d(loss)} below its no-learning value {v} and moving '
                f'(range {_d(low)}-{_d(high)} since the last evaluation)')
  previous = _previous(history, 'disc_loss')
  if previous is not None and abs(loss - previous[1]) > tol:
    return Flag('green', 'discriminator',
                f'discriminator loss {_d(loss)} below its no-learning value {v} and moving '
                f'(was {_d(previous[1])} at step {previous[0]})')
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
  """Red when validation SNR is negative after the grace period; green when positive and not
  falling (a plateau is healthy) since the previous evaluation."""
  snr = _finite(history[-1], 'snr_db')
  if snr is None:
    return None
  step = _step(history)
  # Early steps legitimately reconstruct worse than silence; judge only after grace_steps.
  if snr < 0 and step >= health.grace_steps:
    return Flag('red', 'snr',
                f'validation SNR {snr:.2f} dB negative at step {step} '
                f'(checked from step {health.grace_steps})')
  if snr <= 0:
    return None
  previous = _previous(history, 'snr_db')
  if previous is None:
    return Flag('green', 'snr', f'validation SNR {snr:.2f} dB positive ({_no_baseline(history)})')
  change = snr - previous[1]
  if change >= -health.snr_fall_db:
    trend = 'rising' if change > 0 else 'not falling'
    return Flag('green', 'snr',
                f'validation SNR {snr:.2f} dB positive and {trend} '
                f'(was {previous[1]:.2f} dB at step {previous[0]})')
  return None


def check_amplitude(history: list[dict], health):
  """Red outside [min, max]_amplitude_ratio after the grace period; green in the green band when
  stable or moving towards 100% since the previous evaluation."""
  ratio = _finite(history[-1], 'amplitude_ratio')
  if ratio is None:
    return None
  step = _step(history)
  if step >= health.grace_steps and not (
      health.min_amplitude_ratio <= ratio <= health.max_amplitude_ratio):
    return Flag('red', 'amplitude',
                f'amplitude ratio {ratio:.1f}% outside {_g(health.min_amplitude_ratio)}-'
                f'{_g(health.max_amplitude_ratio)}% at step {step}')
  if not health.green_amplitude_low <= ratio <= health.green_amplitude_high:
    return None
  band = f'within {_g(health.green_amplitude_low)}-{_g(health.green_amplitude_high)}%'
  previous = _previous(history, 'amplitude_ratio')
  if previous is None:
    return Flag('green', 'amplitude', f'amplitude ratio {ratio:.1f}% {band} '
                f'({_no_baseline(history)})')
  change = ratio - previous[1]
  since = f'{change:+.1f} points since step {previous[0]}'
  if abs(ratio - 100.0) < abs(previous[1] - 100.0):
    return Flag('green', 'amplitude', f'amplitude ratio {ratio:.1f}% {band} and approaching '
                f'100% ({since})')
  if abs(change) <= health.amplitude_stable_pct:
    return Flag('green', 'amplitude', f'amplitude ratio {ratio:.1f}% {band} and stable ({since})')
  return None


def check_codebook(history: list[dict], health):
  """Red when a level used under health.min_codebook_usage of the codes it could have used over
  the evaluation (min(K, frames counted)); green when every level uses at least that."""
  record = history[-1]
  usage, frames = _list(record, 'codebook_usage_per_level'), _list(record, 'codebook_frames')
  size = _finite(record, 'codebook_size')
  if usage is None or frames is None or size is None or len(usage) != len(frames):
    return None
  # Over n frames a level can use at most n codes.
  reachable = [min(size, n) / size for n in frames]
  low = [q for q, (u, r) in enumerate(zip(usage, reachable))
         if r > 0 and u < health.min_codebook_usage * r]
  shown = ', '.join(f'level {q + 1}: {usage[q]:.1%}' for q in low)
  if low:
    return Flag('red', 'codebook',
                f'codebook collapse: {shown} of the codes used over the evaluation (under '
                f'{health.min_codebook_usage:.0%} of the reachable codes)')
  return Flag('green', 'codebook',
              f'every level uses {min(usage):.1%} or more of its codes (perplexity '
              f'{_g(min(_list(record, "codebook_perplexity_per_level") or [math.nan]))} or more)')


def check_levels(history: list[dict], health):
  """Rate-distortion: red when the later half of the levels together lower the validation mel
  distance by under health.min_level_gain (after the grace period); green when they do more."""
  record = history[-1]
  mel, snr = _list(record, 'rd_mel_distance'), _list(record, 'rd_snr_db')
  if mel is None or len(mel) < 2:
    return None
  half = len(mel) // 2  # levels half+1..Q
  gain = mel[half - 1] - mel[-1]
  detail = (f'mel distance {mel[half - 1]:.3f} with {half} level{"s" * (half > 1)}, '
            f'{mel[-1]:.3f} with {len(mel)}')
  if snr is not None and len(snr) == len(mel):
    detail += f'; SNR {snr[half - 1]:.2f} -> {snr[-1]:.2f} dB'
  if gain >= health.min_level_gain:
    return Flag('green', 'levels', f'later levels improve the reconstruction ({detail})')
  step = _step(history)
  if step >= health.grace_steps:
    return Flag('red', 'levels',
                f'levels {half + 1}-{len(mel)} add under {_g(health.min_level_gain)} to the mel '
                f'distance at step {step} ({detail})')
  return None


# ---- Public API.


def assess(history: list[dict], health_config, gan: str) -> list[Flag]:
  """Flags for the last evaluation of `history` (oldest first); [] for an empty history.

  health_config: `config.health`. gan: 'lsgan' or 'hinge' (config.loss.gan).
  """
  if not history:
    return []
  flags = [
      check_discriminator(history, health_config, gan),
      check_feature(history, health_config),
      check_snr(history, health_config),
      check_amplitude(history, health_config),
      check_codebook(history, health_config),
      check_levels(history, health_config),
      check_nan(history[-1]),
  ]
  return [flag for flag in flags if flag is not None]


def red_flags(flags) -> list[Flag]:
  return [flag for flag in flags if flag.color == 'red']


def all_green(flags) -> bool:
  """True when discriminator, feature, snr, amplitude and codebook are green and nothing is red."""
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
  epoch, step = record.get('epoch'), record.get('step')
  lines = [
      f'Epoch: {epoch if epoch is not None else "n/a"}',
      f'Step: {step if step is not None else "n/a"}',
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
