"""What every config field accepts, checked before anything is built.

`RULES` holds one rule per field of `codec/config.py` (a test walks the config, so a field without
a rule fails the suite); `RELATIONS` check fields against each other (equal lengths, a product, an
excerpt long enough for its windows). `check(config)` runs both and raises one `ConfigError`
listing every bad value, each named as the user sets it: the launcher's flag (`--adv_weight`) when
it has one, else `--config.<field>`, with the allowed range.
"""
import dataclasses
import math
import numbers
from typing import Any, Callable

import ml_collections

from codec import compute  # imports no jax
from codec import config as config_lib


class ConfigError(ValueError):
  """One or more config values are out of their allowed range."""


@dataclasses.dataclass(frozen=True)
class Rule:
  allowed: str  # the allowed values in words: 'an integer >= 1'
  accepts: Callable[[Any], bool]


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _bounds(lo, hi, lo_open: bool, hi_open: bool) -> str:
  parts = []
  if lo is not None:
    parts.append(f'{">" if lo_open else ">="} {lo:g}')
  if hi is not None:
    parts.append(f'{"<" if hi_open else "<="} {hi:g}')
  return ' and '.join(parts)


def _within(v, lo, hi, lo_open: bool, hi_open: bool) -> bool:
  return ((lo is None or (v > lo if lo_open else v >= lo)) and
          (hi is None or (v < hi if hi_open else v <= hi)))


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
  bounds = _bounds(lo, hi, False, False)
  return Rule(f'an integer {bounds}'.strip(),
              lambda v: _is_int(v) and _within(v, lo, hi, False, False))


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Rule:
  """A finite real number (never nan or inf) within the bounds."""
  bounds = _bounds(lo, hi, lo_open, hi_open)
  return Rule(f'a finite number {bounds}'.strip(),
              lambda v: _is_real(v) and _within(v, lo, hi, lo_open, hi_open))


def integers(lo: int, min_len: int = 1) -> Rule:
  """A tuple of integers, each >= lo, at least min_len of them."""
  return Rule(f'a tuple of {min_len} or more integers >= {lo}',
              lambda v: isinstance(v, (tuple, list)) and len(v) >= min_len and
              all(_is_int(x) and x >= lo for x in v))


def bands() -> Rule:
  """Frequency bands as fractions of Nyquist: ((lo, hi), ...), 0 <= lo < hi <= 1."""
  return Rule('a tuple of one or more (lo, hi) pairs with 0 <= lo < hi <= 1',
              lambda v: isinstance(v, (tuple, list)) and len(v) >= 1 and all(
                  isinstance(b, (tuple, list)) and len(b) == 2 and all(map(_is_real, b)) and
                  0 <= b[0] < b[1] <= 1 for b in v))


def choice(*options: str) -> Rule:
  return Rule('one of ' + ', '.join(repr(o) for o in options), lambda v: v in options)


def boolean() -> Rule:
  return Rule('true or false', lambda v: isinstance(v, bool))


def text(nonempty: bool = False) -> Rule:
  return Rule('a non-empty string' if nonempty else 'a string',
              lambda v: isinstance(v, str) and (bool(v) or not nonempty))


def host_port() -> Rule:
  """'' (read from the environment) or HOST:PORT."""
  return Rule("'' or HOST:PORT", lambda v: isinstance(v, str) and (
      v == '' or (':' in v and v.rpartition(':')[2].isdigit() and bool(v.rpartition(':')[0]))))


# One rule per field, in codec/config.py's order. Adding a field there means adding its rule here.
RULES = {
    'experiment_name': text(nonempty=True),
    'seed': integer(0),
    # Generator.
    'model.sample_rate': integer(1),
    'model.encoder_dim': integer(1),
    'model.encoder_rates': integers(1),
    'model.latent_dim': integer(1),
    'model.decoder_dim': integer(1),
    'model.decoder_rates': integers(1),
    'model.n_codebooks': integer(1),
    'model.codebook_size': integer(2),
    'model.codebook_dim': integer(1),
    'model.quantizer_dropout': number(0, 1),
    'model.kernels': choice(*compute.KERNELS),
    # Discriminators (either family may be empty, not both: RELATIONS).
    'discriminator.periods': integers(1, min_len=0),
    'discriminator.period_channels': integers(1),
    'discriminator.fft_sizes': integers(2, min_len=0),
    'discriminator.bands': bands(),
    'discriminator.band_channels': integer(1),
    # Losses.
    'loss.gan': choice('lsgan', 'hinge'),
    'loss.recon_weight': number(0),
    'loss.waveform_l1_weight': number(0),
    'loss.stft_weight': number(0),
    'loss.vq_weight': number(0),
    'loss.commitment_weight': number(0),
    'loss.codebook_weight': number(0),
    'loss.feat_weight': number(0),
    'loss.adv_weight': number(0),
    'loss.adversarial_start_step': integer(0),
    'loss.mel_windows': integers(2),
    'loss.mel_bins': integers(1),
    'loss.mel_clamp': number(0, lo_open=True),
    'loss.stft_windows': integers(2),
    # Optimisation.
    'optim.learning_rate': number(0, lo_open=True),
    'optim.b1': number(0, 1, hi_open=True),
    'optim.b2': number(0, 1, hi_open=True),
    'optim.weight_decay': number(0),
    'optim.lr_decay': number(0, 1, lo_open=True),
    'optim.warmup_steps': integer(0),
    'optim.cooldown_steps': integer(0),
    'optim.ema_decay': number(0, 1, hi_open=True),
    'optim.discriminator_warmup_steps': integer(0),
    'optim.codebook_restart_steps': integer(0),
    'optim.codebook_kmeans_batches': integer(0),
    'optim.discriminator_update_probability': number(0, 1, lo_open=True),
    'optim.clip_generator': number(0, lo_open=True),
    'optim.clip_discriminator': number(0, lo_open=True),
    'optim.compute_dtype': choice('float32', 'bfloat16'),
    # Data.
    'data.data_dir': text(),
    'data.val_dir': text(),
    'data.val_fraction': number(0, 1, hi_open=True),
    'data.excerpt_seconds': number(0, lo_open=True),
    'data.val_excerpt_seconds': number(0, lo_open=True),
    'data.val_max_excerpts': integer(1),
    'data.loudness_db': number(hi=0),
    'data.random_gain_db': number(0),
    'data.phase_inversion': boolean(),
    'data.phase_shift': boolean(),
    'data.silence_db': number(hi=0),
    'data.salient_excerpts': boolean(),
    'data.salient_db': number(hi=0),
    'data.salient_tries': integer(1),
    'data.num_workers': integer(0),
    'data.prefetch': integer(1),
    'data.open_files': integer(1),
    'data.decode_cache_mb': number(0),
    # Training loop.
    'batch_size': integer(1),
    'num_epochs': integer(1),
    'max_steps': integer(0),
    'log_every_steps': integer(1),
    'eval_every_steps': integer(0),  # 0: at each epoch end
    'checkpoint_every_steps': integer(1),
    'keep_checkpoints': integer(1),
    'num_audio_examples': integer(0),
    'checkpoint_dir': text(),
    'init_from': text(),
    'dac_init': boolean(),
    'overwrite': boolean(),
    'use_wandb': boolean(),
    'malloc_hugepages': boolean(),
    'deterministic': boolean(),
    'compilation_cache_dir': text(),
    # Multi-host (0 / -1 / '': read from the environment).
    'distributed.coordinator_address': host_port(),
    'distributed.num_processes': integer(0),
    'distributed.process_id': integer(-1),
    # Health monitor.
    'health.stop_on_red_flag': boolean(),
    'health.disc_stuck_tolerance': number(0),
    'health.min_feat_loss': number(0),
    'health.max_feat_loss': number(0),
    'health.disc_grace_steps': integer(0),
    'health.grace_steps': integer(0),
    'health.snr_fall_db': number(0),
    'health.min_amplitude_ratio': number(0),
    'health.max_amplitude_ratio': number(0),
    'health.green_amplitude_low': number(0),
    'health.green_amplitude_high': number(0),
    'health.amplitude_stable_pct': number(0),
    'health.min_codebook_usage': number(0, 1),
    'health.min_level_gain': number(0),
}


# ---- Relations between fields: each takes the config and returns [(field, problem)].


def _equal_lengths(a: str, b: str):
  def relation(c):
    if len(leaf(c, a)) != len(leaf(c, b)):
      return [(a, f'must have as many entries as {flag_name(b)} ({len(leaf(c, a))} vs '
                  f'{len(leaf(c, b))})')]
    return []
  return relation


def _ordered(low: str, high: str):
  def relation(c):
    if leaf(c, low) > leaf(c, high):
      return [(low, f'must be <= {flag_name(high)} ({leaf(c, high):g}), got {leaf(c, low):g}')]
    return []
  return relation


def _hop(c) -> list:
  model = c.model
  if math.prod(model.encoder_rates) != math.prod(model.decoder_rates):
    return [('model.decoder_rates',
             f'must have the product of {flag_name("model.encoder_rates")} (the hop length): '
             f'{tuple(model.decoder_rates)} vs {tuple(model.encoder_rates)}')]
  return []


def _decoder_width(c) -> list:
  # Each decoder stage halves the channels: decoder_dim // 2**len(rates) must stay >= 1.
  need = 2 ** len(c.model.decoder_rates)
  if c.model.decoder_dim < need:
    return [('model.decoder_dim', f'must be >= {need} (halved at each of the '
                                  f'{len(c.model.decoder_rates)} decoder stages), got '
                                  f'{c.model.decoder_dim}')]
  return []


def _some_discriminator(c) -> list:
  if not c.discriminator.periods and not c.discriminator.fft_sizes:
    return [('discriminator.periods', f'and {flag_name("discriminator.fft_sizes")} are both '
                                      'empty: the GAN needs at least one discriminator')]
  return []


def _excerpt_fits_windows(c) -> list:
  excerpt = config_lib.excerpt_samples(c)
  windows = {'loss.mel_windows': max(c.loss.mel_windows)}
  if c.loss.stft_weight:
    windows['loss.stft_windows'] = max(c.loss.stft_windows)
  if c.discriminator.fft_sizes:
    windows['discriminator.fft_sizes'] = max(c.discriminator.fft_sizes)
  return [('data.excerpt_seconds',
           f'({c.data.excerpt_seconds} s = {excerpt} samples) is too short for the largest '
           f'window of {flag_name(field)} ({size}): give more than {size // 2} samples')
          for field, size in windows.items() if excerpt <= size // 2]


def _bands_have_bins(c) -> list:
  # A band of the smallest STFT must hold at least one of its window // 2 + 1 frequency bins.
  if not c.discriminator.fft_sizes:
    return []
  smallest = min(c.discriminator.fft_sizes)
  n_bins = smallest // 2 + 1
  empty = [tuple(b) for b in c.discriminator.bands if int(b[1] * n_bins) <= int(b[0] * n_bins)]
  if empty:
    return [('discriminator.bands', f'{empty} hold no frequency bin of the {smallest}-sample STFT '
                                    f'({n_bins} bins): widen them or raise '
                                    f'{flag_name("discriminator.fft_sizes")}')]
  return []


def _kmeans_points(c) -> list:
  batches = c.optim.codebook_kmeans_batches
  if not batches:
    return []
  if c.init_from:
    return [('optim.codebook_kmeans_batches', f'is {batches}, but {flag_name("init_from")} '
                                              'loads trained codebooks: set it to 0')]
  hop = math.prod(c.model.encoder_rates)
  frames = -(-config_lib.excerpt_samples(c) // hop)
  points = batches * c.batch_size * frames
  if points < c.model.codebook_size:
    need = -(-c.model.codebook_size // (c.batch_size * frames))
    return [('optim.codebook_kmeans_batches',
             f'({batches} batches of {c.batch_size} excerpts of {frames} frames: {points} latents) '
             f'gives fewer latents than codes ({c.model.codebook_size}): give at least {need}')]
  return []


def _process_id(c) -> list:
  dist = c.distributed
  if dist.num_processes > 1 and dist.process_id >= dist.num_processes:
    return [('distributed.process_id', f'must be < {flag_name("distributed.num_processes")} '
                                       f'({dist.num_processes}), got {dist.process_id}')]
  return []


RELATIONS = (
    _equal_lengths('loss.mel_windows', 'loss.mel_bins'),
    _hop, _decoder_width, _some_discriminator, _bands_have_bins, _excerpt_fits_windows,
    _kmeans_points, _process_id,
    _ordered('health.min_feat_loss', 'health.max_feat_loss'),
    _ordered('health.min_amplitude_ratio', 'health.max_amplitude_ratio'),
    _ordered('health.green_amplitude_low', 'health.green_amplitude_high'),
)


# ---- Checking.


def fields(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every leaf field of `config` as a dotted path, in declaration order."""
  paths = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      paths += fields(value, f'{prefix}{key}.')
    else:
      paths.append(prefix + key)
  return paths


def leaf(config: ml_collections.ConfigDict, path: str):
  for part in path.split('.'):
    config = config[part]
  return config


def flag_name(path: str) -> str:
  """The launcher's flag for a field (`--adv_weight`), else `--config.<field>`."""
  from codec import launch  # pylint: disable=g-import-not-at-top  (launch imports this module)
  for name, (field, _, _) in launch.USER_FLAGS.items():
    if field == path:
      return f'--{name}'
  return f'--config.{path}'


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """One line per bad value: the flag, the allowed range, the value given."""
  found = []
  for path in fields(config):
    rule = RULES.get(path)
    value = leaf(config, path)
    if rule is None:
      found.append(f'{flag_name(path)}: no validation rule (declare one in codec/config_rules.py)')
    elif not rule.accepts(value):
      found.append(f'{flag_name(path)} must be {rule.allowed}, got {value!r}')
  if found:  # the relations assume each field is valid on its own
    return found
  for relation in RELATIONS:
    found += [f'{flag_name(path)} {problem}' for path, problem in relation(config)]
  return found


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming every bad value, before anything is built."""
  found = problems(config)
  if len(found) == 1:
    raise ConfigError(found[0])
  if found:
    raise ConfigError('bad config values:\n  ' + '\n  '.join(found))
