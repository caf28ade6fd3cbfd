"""Curves of several runs against wall-clock time, read from their TensorBoard event files.

Compares recipes at equal compute: each run's x axis is the minutes since its first event (the
start of training, compile included). Panels: the training mel loss (logged every
log_every_steps) and the validation mel distance, SI-SDR and SNR (each evaluation).

  python bench/curves.py --run old=runs/recipe/old/seed0 --run new=runs/recipe/new/seed0 \
      -o docs/results_recipe_curves.png [--minutes 35]

Runs are only comparable in time when they trained on the same machine under the same load.
"""
import argparse
import collections
import pathlib
import struct

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top,wrong-import-position

PANELS = (('train/mel_loss', 'training mel loss'), ('val/mel_distance', 'validation mel distance'),
          ('val/si_sdr_db', 'validation SI-SDR dB'), ('val/snr_db', 'validation SNR dB'))


def read_scalars(run_dir: pathlib.Path) -> tuple[float, dict[str, list[tuple[float, int, float]]]]:
  """(wall time of the first event, tag -> [(wall time, step, value)]) over the run's event files.

  Event files are TFRecord framed: u64 length, u32 crc, payload, u32 crc (crcs not checked).
  """
  files = sorted(run_dir.glob('events.out.tfevents.*'))
  if not files:
    raise SystemExit(f'{run_dir}: no TensorBoard event file (events.out.tfevents.*); pass a run '
                     'directory that training wrote')
  start, scalars = None, collections.defaultdict(list)
  for path in files:
    data = path.read_bytes()
    offset = 0
    while offset + 12 <= len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      payload = data[offset + 12:offset + 12 + length]
      offset += 12 + length + 4
      if len(payload) < length:
        break  # a record cut short by a kill: the rest of the file is unreadable
      event = event_pb2.Event.FromString(payload)
      start = event.wall_time if start is None else min(start, event.wall_time)
      for value in event.summary.value:
        if value.HasField('simple_value'):
          scalars[value.tag].append((event.wall_time, event.step, value.simple_value))
  for series in scalars.values():
    series.sort()
  return start, scalars


def parse_run(text: str) -> tuple[str, pathlib.Path]:
  label, sep, path = text.partition('=')
  if not sep or not label:
    raise argparse.ArgumentTypeError(f'--run {text!r}: expected LABEL=RUN_DIR')
  return label, pathlib.Path(path)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--run', action='append', required=True, type=parse_run,
                      help='LABEL=RUN_DIR, repeated')
  parser.add_argument('-o', '--out', required=True, help='PNG to write')
  parser.add_argument('--minutes', type=float, default=0.0,
                      help='draw each run up to this many minutes since its start (0: all)')
  args = parser.parse_args()
  if args.minutes < 0:
    parser.error(f'--minutes: a budget of 0 (all) or more minutes, not {args.minutes:g}')

  fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
  for label, run_dir in args.run:
    start, scalars = read_scalars(run_dir)
    for ax, (tag, title) in zip(axes, PANELS):
      series = [point for point in scalars.get(tag, [])
                if not args.minutes or point[0] - start <= 60 * args.minutes]
      minutes = [(t - start) / 60 for t, _, _ in series]
      ax.plot(minutes, [v for _, _, v in series], marker='' if tag.startswith('train') else 'o',
              label=label)
      ax.set_title(title, fontsize=10)
  for ax in axes:
    ax.set_xlabel('minutes since start')
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)  # one legend: the panels share their runs and colours
  fig.tight_layout()
  fig.savefig(args.out, dpi=80)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
