"""Run directories <-> PyTorch DAC checkpoints (`python -m codec import-dac` / `export-dac`).

import: a `dac.DAC.save` file (the released weights' layout) becomes a run directory (config.json
and a step-0 checkpoint of the parameters under best/) that encode, decode, reconstruct and
evaluate read; with DAC's trainer's discriminator when given (DAC released none).
export: a run's generator becomes a file `dac.DAC.load` reads.
"""
import json
import pathlib

import jax
import ml_collections
import numpy as np

from codec import checkpoint
from codec import config as config_lib
from codec import dac_weights
from codec import summary

# DAC's Discriminator constructor arguments and their defaults (dac/model/discriminator.py).
_DISC_DEFAULTS = dict(rates=[], periods=[2, 3, 5, 7, 11], fft_sizes=[2048, 1024, 512],
                      sample_rate=44100,
                      bands=[(0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)])


def config_for(kwargs: dict, run_dir: pathlib.Path,
               disc_kwargs: dict | None = None) -> ml_collections.ConfigDict:
  """Our base config with the model (and discriminators) of DAC's constructor kwargs."""
  config = config_lib.base_config()
  config.model = dac_weights.model_config_from_kwargs(kwargs, config.model)
  if disc_kwargs is not None:
    unknown = sorted(set(disc_kwargs) - set(_DISC_DEFAULTS))
    if unknown:
      raise ValueError(f'discriminator metadata.kwargs: unknown argument {unknown[0]!r}')
    d = {**_DISC_DEFAULTS, **disc_kwargs}
    if d['rates']:
      raise ValueError(f'discriminator metadata.kwargs: rates={d["rates"]}: DAC\'s multi-scale '
                       'waveform discriminators (MSD) are not implemented here; only rates=[]')
    config.discriminator.periods = tuple(int(p) for p in d['periods'])
    config.discriminator.fft_sizes = tuple(int(n) for n in d['fft_sizes'])
    config.discriminator.bands = tuple(tuple(float(x) for x in b) for b in d['bands'])
  config.experiment_name = run_dir.name
  config.checkpoint_dir = str(run_dir)
  return config


def _checked(abstract, params, what: str):
  """params as float32 arrays, refused unless its tree and shapes are those of `abstract`."""
  flat_a, tree_a = jax.tree.flatten(abstract)
  flat_p, tree_p = jax.tree.flatten(params)
  if tree_a != tree_p:
    raise ValueError(f'{what}: the converted parameters do not form our tree ({tree_p} vs {tree_a})')
  for a, p, path in zip(flat_a, flat_p, jax.tree_util.tree_flatten_with_path(abstract)[0]):
    if tuple(a.shape) != tuple(np.shape(p)):
      raise ValueError(f'{what}: {jax.tree_util.keystr(path[0])} has shape {np.shape(p)}, the '
                       f'config gives {tuple(a.shape)}')
  return jax.tree.map(lambda p: np.asarray(p, np.float32), params)


def write_run(config: ml_collections.ConfigDict, run_dir: pathlib.Path, gen_params,
              disc_params=None) -> None:
  """config.json and a step-0 checkpoint of the nets' parameters under run_dir/best.

  No optimizer states (a fine-tune starts fresh ones), and no discriminators unless given: DAC
  released none, and a fine-tune initialises its own.
  """
  gen_shapes, disc_shapes = summary.param_shapes(config)
  state = {'step': np.zeros((), np.int32),
           'gen_params': _checked(gen_shapes, gen_params, 'generator')}
  if disc_params is not None:
    state['disc_params'] = _checked(disc_shapes, disc_params, 'discriminator')
  run_dir.mkdir(parents=True, exist_ok=True)
  (run_dir / 'config.json').write_text(config.to_json_best_effort(indent=2) + '\n')
  ckpt = checkpoint.Checkpointer(str(run_dir), config)
  # best/ (not checkpoints/): inference reads it, and a training run there starts its own
  # history instead of resuming from a checkpoint that holds no training state.
  ckpt.save_best(0, state, {}, [], mel_distance=float('inf'))
  ckpt.close()


def import_dac(pth: str, run_dir: str, discriminator_pth: str | None = None) -> ml_collections.ConfigDict:
  """A DAC generator checkpoint (and optionally DAC's trainer's discriminator) -> a run dir."""
  state, kwargs = dac_weights.read_pth(pth)
  disc_state, disc_kwargs = (None, None) if discriminator_pth is None else (
      dac_weights.read_pth(discriminator_pth))
  run_dir = pathlib.Path(run_dir)
  config = config_for(kwargs, run_dir, disc_kwargs)
  gen_params = dac_weights.state_to_params(
      state, dac_weights.generator_entries(config.model), source=str(pth))
  disc_params = None if disc_state is None else dac_weights.state_to_params(
      disc_state, dac_weights.discriminator_entries(config.discriminator),
      source=str(discriminator_pth))
  write_run(config, run_dir, gen_params, disc_params)
  return config


def export_dac(run_dir: str, output: str, step: int | None = None) -> dict:
  """A run's generator (best checkpoint, or `step`) -> a `dac.DAC.load` file; returns its kwargs."""
  config = ml_collections.ConfigDict(json.loads((pathlib.Path(run_dir) / 'config.json').read_text()))
  gen_params, _, _ = checkpoint.restore_params(run_dir, step=step, best=step is None)
  state = dac_weights.params_to_state(jax.device_get(gen_params),
                                      dac_weights.generator_entries(config.model))
  kwargs = dac_weights.kwargs_from_model_config(config.model)
  dac_weights.write_pth(output, state, kwargs)
  return kwargs


# -------------------------------------------------------------------------------------------------
# Fine-tuning: config.init_from.

# Fields that do not change the parameters' shapes or meaning.
_FREE_MODEL_FIELDS = ('kernels', 'quantizer_dropout')


def _first_difference(ours: ml_collections.ConfigDict, theirs: ml_collections.ConfigDict,
                      prefix: str, skip=()) -> str | None:
  a, b = ours.to_dict(), theirs.to_dict()
  for key in sorted(set(a) | set(b)):
    if key in skip:
      continue
    norm = lambda v: json.loads(json.dumps(v))  # tuples and lists alike
    if norm(a.get(key)) != norm(b.get(key)):
      return f'{prefix}.{key}: this run has {a.get(key)!r}, the source {b.get(key)!r}'
  return None


def initial_weights(config: ml_collections.ConfigDict):
  """(gen_params, disc_params or None) of config.init_from, a DAC .pth or one of our run
  directories; ValueError naming the first differing field when its architecture is not this
  config's."""
  source = pathlib.Path(config.init_from)
  if source.is_dir():
    theirs = ml_collections.ConfigDict(json.loads((source / 'config.json').read_text())) if (
        source / 'config.json').is_file() else None
    if theirs is None:
      raise ValueError(f'init_from={source}: no config.json there; pass a run directory or a .pth')
    gen_params, disc_params, _ = checkpoint.restore_params(str(source))
  elif source.is_file():
    state, kwargs = dac_weights.read_pth(source)
    theirs = config_for(kwargs, source)
    gen_params = dac_weights.state_to_params(
        state, dac_weights.generator_entries(theirs.model), source=str(source))
    disc_params = None
  else:
    raise ValueError(f'init_from={source}: no such file or directory')
  difference = _first_difference(config.model, theirs.model, 'model', _FREE_MODEL_FIELDS)
  if difference is None and disc_params is not None:
    difference = _first_difference(config.discriminator, theirs.discriminator, 'discriminator')
  if difference is not None:
    raise ValueError(f'init_from={source}: another architecture ({difference}); set the '
                     'config to the source\'s or start from another source')
  gen_shapes, disc_shapes = summary.param_shapes(config)
  gen_params = _checked(gen_shapes, jax.device_get(gen_params), 'generator')
  if disc_params is not None:
    disc_params = _checked(disc_shapes, jax.device_get(disc_params), 'discriminator')
  return gen_params, disc_params
