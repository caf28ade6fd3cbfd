"""Launches an experiment: `python run_experiment.py --config experiments/<name>.py[:variant]`.

Config fields are overridden with `--config.<field>=<value>` (a typo or a wrong type fails), and
the flags people already type map onto their fields:

  python run_experiment.py --data_dir DIR --checkpoint_dir DIR --batch_size 16 --num_epochs 100 \
      --learning_rate 1e-4 --adv_weight 1.0 --feat_weight 10.0 --recon_weight 0.1 --vq_weight 1.0 \
      --experiment_name telugu_codec
"""
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from codec import launch

config_flags.DEFINE_config_file(
    'config', 'experiments/telugu_dac.py', 'Experiment config file (path[:variant]).',
    lock_config=True)
launch.define_flags()


def parse_flags(argv):
  """absl's parsing, with a misspelled config field or a bad value as one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    raise SystemExit(f'error: {e}\nPass --help to list the flags.') from None
  except KeyError as e:  # ml_collections: no such field, with its "Did you mean" hint
    detail = ' '.join(str(e.args[0] if e.args else e).split())
    raise SystemExit(f'error: unknown config field {detail} (every field is declared in '
                     'codec/config.py)') from None
  except (TypeError, ValueError) as e:
    raise SystemExit(f'error: {e}') from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}; flags take the form --name=value')
  launch.run(flags.FLAGS.config, flags.FLAGS)


if __name__ == '__main__':
  sys.path.insert(0, '.')
  app.run(main, flags_parser=parse_flags)
