"""What a run writes for people: console + train.log, progress bar, TensorBoard, metrics.jsonl, curves.

Only process 0 writes files; every process logs to its console.
"""
import dataclasses
import json
import logging
import math
import pathlib
import sys
import threading

import jax
import ml_collections
import numpy as np
import tqdm
from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams as hparams_summary

from codec import health
from codec import metrics as metrics_lib

log = logging.getLogger('codec')

# Curves drawn per evaluation (metrics.jsonl keys), one panel each.
CURVES = (('disc_loss', 'feat_loss', 'adv_loss'), ('mel_loss', 'val_mel_loss'), ('snr_db',),
          ('si_sdr_db',), ('amplitude_ratio',), ('codebook_usage',))


def count_params(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _mean_metrics(fetched: list[dict]) -> dict:
  return {k: np.mean([m[k] for m in fetched], axis=0) for k in fetched[0]}


def postfix(step_metrics: dict) -> dict:
  keys = ('disc_loss', 'feat_loss', 'adv_loss', 'mel_loss', 'snr_db', 'amplitude_ratio')
  return {k.removesuffix('_loss'): f'{float(step_metrics[k]):.3g}' for k in keys}


def codebook_fields(code_counts: np.ndarray, frame_rate: float, prefix: str = '') -> dict:
  """Record fields of accumulated code counts f32[Q, K] (metrics.codebook_statistics).

  codebook_usage: the mean over levels of the fraction of codes used; *_per_level: one entry per
  level; codebook_frames: the codes counted per level; entropy vs nominal bitrate in kbps.
  """
  stats = {k: np.asarray(v) for k, v in
           metrics_lib.codebook_statistics(code_counts, frame_rate).items()}
  per_level = lambda key: [float(x) for x in stats[key]]
  return {
      f'{prefix}codebook_usage': float(np.mean(stats['usage'])),
      f'{prefix}codebook_usage_per_level': per_level('usage'),
      f'{prefix}codebook_perplexity_per_level': per_level('perplexity'),
      f'{prefix}codebook_dead_codes_per_level': per_level('dead_codes'),
      f'{prefix}codebook_frames': per_level('frames'),
      f'{prefix}codebook_size': int(np.shape(code_counts)[1]),
      f'{prefix}codebook_entropy_kbps': float(stats['entropy_kbps']),
      f'{prefix}codebook_nominal_kbps': float(stats['nominal_kbps']),
  }


def steps_to_json(fetched: list[dict]) -> dict:
  """Fetched step metrics (scalars) as JSON columns {key: {'dtype', 'values'}}: the same values
  and dtypes come back (`steps_from_json`), so means over them are bit for bit the same."""
  if not fetched:
    return {}
  return {k: {'dtype': np.asarray(fetched[0][k]).dtype.name,
              'values': [float(m[k]) for m in fetched]} for k in fetched[0]}


def steps_from_json(columns: dict) -> list[dict]:
  arrays = {k: np.asarray(c['values'], c['dtype']) for k, c in columns.items()}
  count = len(next(iter(arrays.values()))) if arrays else 0
  return [{k: a[i] for k, a in arrays.items()} for i in range(count)]


def array_to_json(array) -> dict | None:
  """An array (code counts f32[Q, K]) or None, as JSON that restores it exactly."""
  if array is None:
    return None
  array = np.asarray(array)
  return {'dtype': array.dtype.name, 'values': array.tolist()}


def array_from_json(saved: dict | None):
  return None if saved is None else np.asarray(saved['values'], saved['dtype'])


class IntervalAccumulator:
  """Means over the steps since the last evaluation; min and max of the discriminator loss; the
  interval's code counts (train_codebook_* fields). Saved with every checkpoint (`to_json`), so
  the first record after a resume covers its whole interval."""

  def __init__(self, frame_rate: float, steps: list[dict] = (), code_counts=None):
    self.frame_rate = frame_rate
    self.steps: list[dict] = list(steps)
    self.code_counts = code_counts  # f32[Q, K]

  def to_json(self) -> dict:
    return {'steps': steps_to_json(self.steps), 'code_counts': array_to_json(self.code_counts)}

  @classmethod
  def from_json(cls, frame_rate: float, saved: dict) -> 'IntervalAccumulator':
    return cls(frame_rate, steps_from_json(saved['steps']), array_from_json(saved['code_counts']))

  def add(self, fetched: list[dict], code_counts: np.ndarray) -> None:
    self.steps.extend(fetched)
    self.code_counts = code_counts if self.code_counts is None else self.code_counts + code_counts

  def summary(self) -> dict:
    if not self.steps:
      return {}
    means = _mean_metrics(self.steps)
    disc = [float(m['disc_loss']) for m in self.steps]
    out = {k: float(v) for k, v in means.items() if np.ndim(v) == 0}
    out.update(disc_loss_min=min(disc), disc_loss_max=max(disc), train_steps=len(self.steps),
               **codebook_fields(self.code_counts, self.frame_rate, prefix='train_'))
    out.pop('nonfinite', None)
    return out


class _Progress(tqdm.tqdm):
  """tqdm that also shows audio-seconds trained per second."""

  def __init__(self, *args, audio_per_step: float, **kwargs):
    self.audio_per_step = audio_per_step
    super().__init__(*args, **kwargs)

  @property
  def format_dict(self):
    d = super().format_dict
    rate = d.get('rate') or 0.0
    d['postfix'] = ', '.join(filter(None, [f'{rate * self.audio_per_step:.2f} audio-s/s',
                                           d.get('postfix') or '']))
    return d


class _FileHandler(logging.FileHandler):
  """train.log. A failed write raises from the logging call (logging's own handler prints a
  traceback per line and carries on), so a full disk stops the run with the launcher's message."""

  def handleError(self, record):
    error = sys.exc_info()[1]
    if not isinstance(error, OSError):
      super().handleError(record)
      return
    raise OSError(error.errno, error.strerror, self.baseFilename) from error


class RunLog:

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    self.dir = pathlib.Path(workdir)
    self.is_writer = jax.process_index() == 0
    self.log_path = self.dir / 'train.log'
    if self.is_writer:
      self.dir.mkdir(parents=True, exist_ok=True)
      if config.overwrite:
        for stale in [self.dir / 'metrics.jsonl', self.dir / 'health.jsonl',
                      *self.dir.glob('health_step_*.txt'),
                      *self.dir.glob('events.out.tfevents.*')]:
          stale.unlink(missing_ok=True)
      (self.dir / 'config.json').write_text(config.to_json_best_effort(indent=2) + '\n')
    self._setup_logging()
    # An unbounded queue (0): with the default 10, a writer thread that died on a full disk
    # would block the training thread's next writes forever instead of raising at _check_writer.
    self.writer = SummaryWriter(str(self.dir), max_queue=0) if self.is_writer else None
    self._writer_error = None
    self._previous_excepthook = None
    if self.writer:
      self._watch_writer_thread()
    self.wandb = _start_wandb(config, self.dir) if config.use_wandb and self.is_writer else None

  def _setup_logging(self) -> None:
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
      log.removeHandler(handler)
      handler.close()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter('%(message)s'))
    log.addHandler(console)
    if self.is_writer:
      file_handler = _FileHandler(self.log_path)
      file_handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
      log.addHandler(file_handler)

  def _watch_writer_thread(self) -> None:
    """tensorboardX writes events in its own thread, which dies on a failed write (a full disk)
    while training goes on without curves. Its error is kept here and raised at the next log."""
    self._previous_excepthook = previous = threading.excepthook

    def hook(args):
      if (type(args.thread).__module__.startswith('tensorboardX') and
          isinstance(args.exc_value, OSError)):
        self._writer_error = args.exc_value  # raised, with the file named, by _check_writer
        return
      previous(args)

    threading.excepthook = hook

  def _check_writer(self) -> None:
    error = self._writer_error
    if error is not None:
      events = sorted(self.dir.glob('events.out.tfevents.*'), key=lambda p: p.stat().st_mtime)
      raise OSError(error.errno, error.strerror, str(events[-1] if events else self.dir)) from error

  def info(self, message: str) -> None:
    log.info(message)

  def progress(self, epoch: int, steps: int, initial: int, audio_per_step: float):
    return _Progress(total=steps, initial=initial, desc=f'epoch {epoch}', unit='step',
                     audio_per_step=audio_per_step, dynamic_ncols=True, leave=False,
                     disable=not self.is_writer, file=sys.stdout, mininterval=1.0)

  def _scalars(self, prefix: str, values: dict, step: int) -> None:
    if not self.writer:
      return
    self._check_writer()
    for k, v in values.items():
      v = np.asarray(v, dtype=np.float64) if not isinstance(v, list) else np.asarray(v)
      if v.ndim == 0:
        self.writer.add_scalar(f'{prefix}/{k}', float(v), step)
      elif v.ndim == 1 and v.dtype.kind == 'f':
        for level, x in enumerate(v):
          self.writer.add_scalar(f'{prefix}/{k}/level_{level}', float(x), step)
    if self.wandb:
      self.wandb.log({f'{prefix}/{k}': v for k, v in values.items() if np.ndim(v) == 0},
                     step=step)

  def log_train(self, step: int, fetched: list[dict], code_counts: np.ndarray,
                frame_rate: float) -> None:
    """Means of the log interval's steps and the statistics of its codes, f32[Q, K]."""
    self._scalars('train', _mean_metrics(fetched), step)
    self._codebook('train', code_counts, frame_rate, step)

  def _codebook(self, prefix: str, code_counts: np.ndarray, frame_rate: float, step: int) -> None:
    """Usage, perplexity, dead codes and bitrates per level; the code histogram of each level."""
    if not self.writer:
      return
    fields = codebook_fields(code_counts, frame_rate)
    fields.pop('codebook_size')
    self._scalars(f'{prefix}/codebook', {k.removeprefix('codebook_'): v
                                         for k, v in fields.items()}, step)
    for level, counts in enumerate(np.asarray(code_counts)):
      codes = np.repeat(np.arange(len(counts)), np.rint(counts).astype(np.int64))
      if len(codes):
        self.writer.add_histogram(f'{prefix}/codes/level_{level}', codes, step,
                                  bins=min(len(counts), 64))

  def log_hparams(self, config: ml_collections.ConfigDict) -> None:
    if not self.writer:
      return
    flat = {}
    for section in ('model', 'loss', 'optim', 'data'):
      for k, v in config[section].items():
        flat[f'{section}.{k}'] = v if isinstance(v, (int, float, str, bool)) else str(v)
    flat['batch_size'] = config.batch_size
    # Written into this run's own event file (SummaryWriter.add_hparams would open a second run,
    # <name>/hparams, beside every run). The dashboard reads the metric from the val/ scalars.
    experiment, start, end = hparams_summary(flat, {'val/mel_distance': 0.0})
    for summary in (experiment, start, end):
      self.writer.file_writer.add_summary(summary)

  def log_evaluation(self, record: dict, val_audio: np.ndarray, recon: np.ndarray,
                     sample_rate: int, num_examples: int = 3, first: bool = False,
                     code_counts: np.ndarray | None = None, frame_rate: float = 1.0,
                     codebook_norms: list[np.ndarray] = ()) -> None:
    """Prints the table; writes metrics.jsonl, TensorBoard scalars, code and norm histograms, the
    rate-distortion curve, audio (inputs when `first`). code_counts: f32[Q, K] of validation."""
    self.info(format_evaluation_table(record))
    if not self.is_writer:
      return
    with open(self.dir / 'metrics.jsonl', 'a') as f:
      f.write(json.dumps(record) + '\n')
    step = record['step']
    self._scalars('val', {k.removeprefix('val_'): v for k, v in record.items()
                          if k.startswith('val_')}, step)
    self._scalars('val', {k: record[k] for k in ('rd_snr_db', 'rd_mel_distance',
                                                  'latent_norm_per_level',
                                                  'codebook_norm_per_level')}, step)
    if code_counts is not None:
      self._codebook('val', code_counts, frame_rate, step)
    for level, norms in enumerate(codebook_norms):
      self.writer.add_histogram(f'val/codebook_row_norms/level_{level}', norms, step)
    self.writer.add_figure('val/rate_distortion', rate_distortion_figure(record), step)
    for i in range(min(num_examples, len(val_audio))):
      if first:
        self.writer.add_audio(f'audio/{i}/input', val_audio[i], step, sample_rate=sample_rate)
        self.writer.add_figure(f'spectrogram/{i}/input', spectrogram_figure(val_audio[i]), step)
      self.writer.add_audio(f'audio/{i}/reconstruction', np.clip(recon[i], -1, 1), step,
                            sample_rate=sample_rate)
      self.writer.add_figure(f'spectrogram/{i}/reconstruction', spectrogram_figure(recon[i]),
                             step)
    self.writer.flush()
    self._check_writer()
    write_curves(self.dir / 'metrics.jsonl', self.dir / 'curves.png')

  def rewrite_history(self, history: list[dict]) -> None:
    """After a resume: metrics.jsonl and health.jsonl hold exactly the evaluations of the restored
    checkpoint (a run killed after an evaluation but before its checkpoint was complete wrote
    lines that the resumed run writes again)."""
    if not self.is_writer:
      return
    (self.dir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in history))
    verdicts = self.dir / 'health.jsonl'
    if verdicts.exists():
      steps = {r['step'] for r in history}
      kept = [line for line in verdicts.read_text().splitlines(keepends=True)
              if _line_step(line) in steps]
      verdicts.write_text(''.join(kept))

  def report_health(self, record: dict, flags) -> pathlib.Path:
    """Prints and records the verdict; on a red flag writes the report. Returns the report's path."""
    self.info(f'Health at step {record["step"]} (epoch {record["epoch"]}):\n'
              f'{health.format_flags(flags)}')
    if self.is_writer:
      with open(self.dir / 'health.jsonl', 'a') as f:
        f.write(json.dumps({'epoch': record['epoch'], 'step': record['step'],
                            'all_green': health.all_green(flags),
                            'flags': [dataclasses.asdict(flag) for flag in flags]}) + '\n')
    if self.writer:
      for f in flags:
        self.writer.add_scalar(f'health/{f.check}', 1.0 if f.color == 'green' else -1.0,
                               record['step'])
    if self.is_writer and any(f.color == 'red' for f in flags):
      for handler in log.handlers:
        handler.flush()
      path = health.write_red_flag_report(self.dir, record, flags, self.log_path)
      log.warning(f'Red flags: report written to {path}')
    return health.report_path(self.dir, record)

  def nonfinite_report(self, step: int, fetched: list[dict]) -> str:
    bad = next(m for m in fetched if m['nonfinite'])
    names = sorted(k for k, v in bad.items() if not np.all(np.isfinite(v)))
    message = (f'Non-finite loss or gradient near step {step} ({", ".join(names) or "gradients"}); '
               'the state was not updated with it and training stopped. The last good checkpoint '
               f'is in {self.dir / "checkpoints"}; lower --learning_rate or check the data.')
    log.error(message)
    return message

  def close(self) -> None:
    if self.writer:
      if self._writer_error is None:
        self.writer.close()
      threading.excepthook = self._previous_excepthook
    if self.wandb:
      self.wandb.finish()


def _line_step(line: str) -> int | None:
  """The step of a health.jsonl line; None for a line a kill cut short."""
  try:
    return json.loads(line)['step']
  except (json.JSONDecodeError, KeyError, TypeError):
    return None


def _start_wandb(config, run_dir):
  import wandb  # pylint: disable=g-import-not-at-top  (optional; checked by the launcher)
  return wandb.init(project='codec', name=config.experiment_name, dir=str(run_dir),
                    config=config.to_dict(), resume='allow')


def format_evaluation_table(record: dict) -> str:
  rows = [('', 'train', 'validation')]
  for key in ('disc_loss', 'adv_loss', 'feat_loss', 'mel_loss', 'commitment_loss',
              'codebook_loss'):
    rows.append((key, _fmt(record.get(key)), _fmt(record.get(f'val_{key}'))))
  for key in ('snr_db', 'amplitude_ratio'):
    rows.append((key, _fmt(record.get(f'train_{key}')), _fmt(record.get(key))))
  for key in ('si_sdr_db', 'mel_distance'):
    rows.append((key, '', _fmt(record.get(key))))
  rows.append(('codebook_usage', _fmt(record.get('train_codebook_usage')),
               _fmt(record.get('codebook_usage'))))
  rows.append(('entropy_kbps', _fmt(record.get('train_codebook_entropy_kbps')),
               _fmt(record.get('codebook_entropy_kbps'))))
  lines = [f'Step {record["step"]} (epoch {record["epoch"]})']
  lines += [f'  {a:<16} {b:>10} {c:>11}' for a, b, c in rows]
  lines += _level_rows(record)
  return '\n'.join(lines)


def _level_rows(record: dict) -> list[str]:
  """Per-level validation lines: codes used, perplexity, dead codes, norms, rate-distortion."""
  keys = (('usage %', 'codebook_usage_per_level', 100.0), ('perplexity',
          'codebook_perplexity_per_level', 1.0), ('dead codes', 'codebook_dead_codes_per_level',
          1.0), ('|z_e|', 'latent_norm_per_level', 1.0), ('|code row|',
          'codebook_norm_per_level', 1.0), ('SNR dB, 1..n', 'rd_snr_db', 1.0),
          ('mel dist, 1..n', 'rd_mel_distance', 1.0))
  present = [(name, record[key], scale) for name, key, scale in keys
             if isinstance(record.get(key), list)]
  if not present:
    return []
  kbps = record.get('codebook_nominal_kbps')
  header = f'  per level (validation; nominal {_fmt(kbps)} kbps)' if kbps else '  per level'
  return [header] + [f'  {name:<16} ' + ' '.join(f'{x * scale:>7.4g}' for x in values)
                     for name, values, scale in present]


def _fmt(value) -> str:
  return '' if value is None else f'{value:.4g}'


def rate_distortion_figure(record: dict):
  """Validation SNR and mel distance against the number of levels (and kbps) of one record."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  snr, mel = record['rd_snr_db'], record['rd_mel_distance']
  levels = np.arange(1, len(snr) + 1)
  kbps = record.get('codebook_nominal_kbps', 0.0) * levels / len(levels)
  fig, axes = plt.subplots(1, 2, figsize=(8, 3))
  for ax, values, label in ((axes[0], snr, 'validation SNR (dB)'),
                            (axes[1], mel, 'validation mel distance')):
    ax.plot(kbps, values, marker='o')
    ax.set_xlabel('nominal kbps (levels 1..n)')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  fig.suptitle(f'step {record["step"]}')
  fig.tight_layout()
  return fig


def spectrogram_figure(audio: np.ndarray):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 3))
  frames = np.lib.stride_tricks.sliding_window_view(np.pad(audio, 256), 512)[::128]
  mag = np.abs(np.fft.rfft(frames * np.hanning(512), axis=-1))
  ax.imshow(20 * np.log10(mag.T + 1e-5), origin='lower', aspect='auto', vmin=-80, vmax=20)
  ax.set_xlabel('frame')
  ax.set_ylabel('bin')
  fig.tight_layout()
  return fig


def write_curves(jsonl_path: pathlib.Path, png_path: pathlib.Path) -> None:
  """Curves over the evaluations (losses, SNR, SI-SDR, amplitude, codebook usage) against the step."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  records = [json.loads(line) for line in jsonl_path.read_text().splitlines() if line.strip()]
  steps = [r['step'] for r in records]
  fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
  for ax, keys in zip(axes.flat, CURVES):
    for key in keys:
      ax.plot(steps, [r.get(key, np.nan) for r in records], marker='o', label=key)
    ax.set_xlabel('step')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(png_path, dpi=80)
  plt.close(fig)
