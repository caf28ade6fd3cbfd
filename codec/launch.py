"""The launcher's flags: the ones users type, mapped onto config fields, checked before training."""
import errno
import importlib.util
import os
import pathlib
import re
import shutil
import sys

from absl import flags
from absl import logging as absl_logging
import ml_collections

from codec import compute
from codec import config_rules
from codec import hugepages
from codec import run_lock

# flag -> (config field path, type, help)
USER_FLAGS = {
    'data_dir': ('data.data_dir', str, 'Folder of training audio (default: the demo corpus).'),
    'val_dir': ('data.val_dir', str, 'Optional folder of validation audio.'),
    'checkpoint_dir': ('checkpoint_dir', str, 'Run directory (default runs/<experiment_name>).'),
    'batch_size': ('batch_size', int, 'Global batch size over every device.'),
    'num_epochs': ('num_epochs', int, 'Epochs to train.'),
    'learning_rate': ('optim.learning_rate', float, 'Initial learning rate of both nets.'),
    'adv_weight': ('loss.adv_weight', float, 'Weight of the adversarial loss.'),
    'feat_weight': ('loss.feat_weight', float, 'Weight of the feature-matching loss.'),
    'recon_weight': ('loss.recon_weight', float, 'Weight of the reconstruction (mel) loss.'),
    'vq_weight': ('loss.vq_weight', float, 'Weight of the commitment + codebook losses.'),
    'init_from': ('init_from', str, 'Start from these weights: a DAC .pth or a run directory.'),
    'experiment_name': ('experiment_name', str, 'Name of the run (and of its directory).'),
    'use_wandb': ('use_wandb', bool, 'Also log to Weights & Biases (pip install wandb).'),
    'overwrite': ('overwrite', bool, 'Delete the run directory\'s checkpoints and start fresh.'),
    'stop_on_red_flag': ('health.stop_on_red_flag', bool, 'Stop training on a red health flag.'),
}


def define_flags() -> None:
  definers = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
              bool: flags.DEFINE_boolean}
  for name, (_, kind, help_text) in USER_FLAGS.items():
    definers[kind](name, None, help_text)


def apply_user_flags(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
  """Writes each given flag (value not None) into its config field."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for name, value in values.items():
      if value is None:
        continue
      path, _, _ = USER_FLAGS[name]
      *parents, leaf = path.split('.')
      node = config
      for parent in parents:
        node = node[parent]
      node[leaf] = value
  return config


def check_wandb(config: ml_collections.ConfigDict) -> None:
  if config.use_wandb and importlib.util.find_spec('wandb') is None:
    raise SystemExit('--use_wandb needs Weights & Biases, which is not installed: '
                     "run `pip install wandb` (or `pip install -e '.[wandb]'`) and log in.")


def check_data_dirs(config: ml_collections.ConfigDict) -> None:
  """A given --data_dir / --val_dir must be a folder (before jax is imported: a fast error)."""
  for flag in ('data_dir', 'val_dir'):
    path = config.data[flag]
    if path and not os.path.isdir(os.path.expanduser(path)):
      problem = 'is not a directory' if os.path.exists(path) else 'does not exist'
      raise SystemExit(f'error: --{flag} (--config.data.{flag}) {path} {problem}: point it at a '
                       'folder of audio files.')


def disk_full(error: BaseException) -> BaseException | None:
  """The 'No space left on device' error behind `error` (its causes and contexts), if any: an
  OSError, or the ValueError Orbax raises from TensorStore's failed write."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return error
    if 'No space left on device' in str(error):
      return error
    error = error.__cause__ or error.__context__
  return None


def _failed_path(error: BaseException, workdir: str) -> str:
  if getattr(error, 'filename', None):
    return error.filename
  found = re.search(r'Failed writing: "([^"]+)"|local file "([^"]+)"', str(error))
  return next((g for g in found.groups() if g), workdir) if found else workdir


def disk_full_message(error: BaseException, workdir: str) -> str:
  """One message for a full disk: the path, the free space and the last complete checkpoint."""
  free = shutil.disk_usage(workdir).free / 2**20
  steps = [int(p.name) for p in (pathlib.Path(workdir) / 'checkpoints').glob('*') if
           p.name.isdigit()]  # Orbax writes under a temporary name, renamed once complete
  last = (f'the last complete checkpoint is step {max(steps)} '
          f'({pathlib.Path(workdir) / "checkpoints" / str(max(steps))})' if steps else
          'there is no complete checkpoint yet')
  return (f'error: no space left on device writing {_failed_path(error, workdir)} '
          f'({free:.0f} MiB free there); {last}. Free some space and run the same command to '
          'resume.')


def run_dir(config: ml_collections.ConfigDict) -> str:
  return config.checkpoint_dir or os.path.join('runs', config.experiment_name)


def prepare_process(config: ml_collections.ConfigDict, environ=None) -> None:
  """What must precede jax's import: huge-page malloc on the CPU backend (a re-execution, which
  returns once the tunable is set), XLA's deterministic-ops flag when config.deterministic, and
  the persistent compilation cache (jax reads JAX_COMPILATION_CACHE_DIR at import)."""
  environ = os.environ if environ is None else environ
  if config.compilation_cache_dir and not environ.get('JAX_COMPILATION_CACHE_DIR'):
    environ['JAX_COMPILATION_CACHE_DIR'] = os.path.expanduser(config.compilation_cache_dir)
  if compute.malloc_hugepages(config.malloc_hugepages, compute.launch_backend(environ)):
    hugepages.reexec_if_needed()
  flags_now = environ.get('XLA_FLAGS', '')
  if compute.xla_flags(flags_now, config.deterministic) != flags_now:
    environ['XLA_FLAGS'] = compute.xla_flags(flags_now, config.deterministic)


def describe_compute(config: ml_collections.ConfigDict) -> str:
  """One line saying how this run computes (after jax is imported)."""
  import jax  # pylint: disable=g-import-not-at-top
  backend = jax.default_backend()
  kernels = compute.choose(config.model.kernels, backend, config.optim.compute_dtype)
  return (f'compute: {backend}, {config.optim.compute_dtype}, kernels={config.model.kernels}: '
          f'{kernels.describe()}; XLA_FLAGS={os.environ.get("XLA_FLAGS") or "(unset)"}; '
          f'{hugepages.describe()}; compilation cache: '
          f'{os.environ.get("JAX_COMPILATION_CACHE_DIR") or "off"}')


def run(config: ml_collections.ConfigDict, flag_values) -> None:
  config = apply_user_flags(config, {name: flag_values[name].value for name in USER_FLAGS})
  try:
    config_rules.check(config)  # before jax is imported: a bad value fails in a second
  except config_rules.ConfigError as e:
    raise SystemExit(f'error: {e}') from None
  check_wandb(config)
  check_data_dirs(config)
  prepare_process(config)
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file it writes at INFO
  from codec import parallel  # pylint: disable=g-import-not-at-top  (after flags: fast errors)
  from codec import train  # pylint: disable=g-import-not-at-top
  parallel.initialize_distributed(config.distributed)
  try:
    train.check_config(config)  # what needs the devices: the batch must split over them
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  workdir = run_dir(config)
  import jax  # pylint: disable=g-import-not-at-top
  lock = None
  if jax.process_index() == 0:  # host 0 holds it for every host of the run
    try:
      lock = run_lock.acquire(workdir)
    except run_lock.RunLocked as e:
      raise SystemExit(f'error: {e}') from None
  try:
    print(f'Resolved config (run directory {workdir}):\n{config}', flush=True)
    print(describe_compute(config), flush=True)
    train.train_and_evaluate(config, workdir)
    return
  except train.TrainingStopped as e:
    raise SystemExit(f'Training stopped: {e}') from None
  except Exception as e:  # pylint: disable=broad-except
    full = disk_full(e)
    if full is None:
      raise
    message = disk_full_message(full, workdir)
  finally:
    if lock is not None:
      run_lock.release(lock)
  # A full disk: the message alone, then out at once. A normal exit would let Orbax's writer
  # threads report the same failure thousands of times while the interpreter shuts down.
  print(message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access
