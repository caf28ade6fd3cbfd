"""Orbax checkpoints of a run: both nets, both optimizer states, step, data-iterator state, history,
and the training records' accumulators (steps since the last evaluation and log, for logs.py).

RUN_DIR/checkpoints keeps the latest `keep_checkpoints` (every N steps and each epoch end, written
asynchronously); RUN_DIR/best keeps the one of lowest validation mel distance. The per-step RNG is
`fold_in(seed, step)`, so the step and the seed restore it exactly.
"""
import hashlib
import json
import logging
import pathlib
import shutil
import time

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger('codec.checkpoint')

# Fields that change parameter shapes or the meaning of the optimizer state: resuming across a
# change of any of them is refused.
_COMPATIBILITY_FIELDS = ('model', 'discriminator')

# The layout of TrainState's optimizer states, hashed into the fingerprint so that resuming from a
# checkpoint of another layout is refused up front (Orbax would fail deep in a tree mismatch).
# 1: optax.flatten'ed states; 2: codec/optimizer.py's (count, mu, nu) per net, moments shaped
# like the parameters. Inference reads only the parameters and loads either.
STATE_LAYOUT = 2


class IncompatibleCheckpoint(ValueError):
  pass


def fingerprint(config: ml_collections.ConfigDict) -> str:
  """A hash of the config fields that decide the checkpoint's structure."""
  parts = {k: config[k].to_dict() for k in _COMPATIBILITY_FIELDS}
  parts['model'].pop('kernels', None)  # how the maths is computed, not what it computes
  parts['state_layout'] = STATE_LAYOUT
  if config.optim.ema_decay:  # the state holds the generator's weight average too
    parts['ema'] = True
  if config.optim.codebook_restart_steps:  # and the codes' use since the last restart
    parts['code_use'] = True
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's PyTree handler, writing each replicated array from one device, as one piece.

  Orbax's default on CPU and TPU cuts every replicated array into one slice per replica so that
  several hosts can share the writing: an eager slice (and its compile) per array and device at
  every save, which blocked the loop ~3 s per save of the 16 kHz state on 4 CPU devices (2-3 s
  for the tiny config) and gains nothing on one host. It is kept across hosts, for slices of 1 MiB
  or more. (The default handler's array-metadata store serves PRNG-key arrays, which the state
  does not hold.)
  """
  scalars = ocp.type_handlers.ScalarHandler()
  registry = ocp.type_handlers.create_type_handler_registry(
      (jax.Array, ocp.type_handlers.ArrayHandler(
          use_replica_parallel=jax.process_count() > 1,
          min_slice_bytes_for_replica_parallel=1 << 20)),
      (np.ndarray, ocp.type_handlers.NumpyHandler()), (np.number, scalars), (int, scalars),
      (float, scalars))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def _manager(path: pathlib.Path, **options) -> ocp.CheckpointManager:
  # Across hosts, Orbax names its barriers after the step: latest/ and best/ save the same step at
  # an epoch's end, and without their own prefixes their barriers collide once saves overlap.
  return ocp.CheckpointManager(
      path.absolute(),
      item_handlers={'state': _state_handler(), 'data': ocp.JsonCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(
          create=True, multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=path.name), **options))


class Checkpointer:

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    self.workdir = pathlib.Path(workdir)
    self.fingerprint = fingerprint(config)
    latest_dir, best_dir = self.workdir / 'checkpoints', self.workdir / 'best'
    if config.overwrite and jax.process_index() == 0:
      for path in (latest_dir, best_dir):
        shutil.rmtree(path, ignore_errors=True)
    if config.overwrite and jax.process_count() > 1:  # no host opens them before host 0 is done
      multihost_utils.sync_global_devices('codec_overwrite')
    self.latest = _manager(latest_dir, max_to_keep=config.keep_checkpoints)
    self.best = _manager(best_dir, max_to_keep=1, best_fn=lambda m: m['mel_distance'],
                         best_mode='min')

  def _args(self, state, data_state, history, records):
    # The records' accumulators go in the same step directory as the state: Orbax renames it
    # into place whole, so they are complete exactly when the state is.
    meta = {'fingerprint': self.fingerprint, 'history': history, 'records': records}
    return ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                              data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta))

  def save(self, step: int, state, data_state: dict, history: list, records: dict | None = None,
           wait: bool = False) -> None:
    """records: JSON of the training records' accumulators at `step` (train.py), or None."""
    if step not in self.latest.all_steps():
      self.latest.save(step, args=self._args(state, data_state, history, records))
    if wait:
      self.latest.wait_until_finished()

  def save_best(self, step: int, state, data_state: dict, history: list,
                mel_distance: float, records: dict | None = None) -> None:
    if step not in self.best.all_steps():
      self.best.save(step, args=self._args(state, data_state, history, records),
                     metrics={'mel_distance': float(mel_distance)})

  def restore_latest(self, target_state):
    """(state, data_state, history, records) of the newest checkpoint that restores, or None when
    none does. records: the accumulators `save` was given; None in a checkpoint written before
    they were saved.

    `target_state` gives the structure, shapes and shardings to restore into. A checkpoint that
    fails to restore (files damaged or cut short) is reported and moved to RUN_DIR/damaged/, never
    deleted: the run resumes from the one before and can write that step again.
    """
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        return self._restore(step, target_state)
      except IncompatibleCheckpoint:
        raise
      except Exception as e:  # pylint: disable=broad-except  (damage fails anywhere in Orbax)
        self._set_aside(step, e)
    return None

  def _restore(self, step: int, target_state):
    meta = self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    if meta['fingerprint'] != self.fingerprint:
      raise IncompatibleCheckpoint(
          f'{self.workdir} holds checkpoints of a different model or discriminator config, or '
          f'of an older optimizer-state layout (fingerprint {meta["fingerprint"]}, this config '
          f'{self.fingerprint}). Use another '
          '--checkpoint_dir / --experiment_name, or pass --overwrite to start fresh there.')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    meta = restored['meta']
    return restored['state'], restored['data'], meta['history'], meta.get('records')

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves the unrestorable checkpoint of `step` to RUN_DIR/damaged/ (every host waits)."""
    source = self.workdir / 'checkpoints' / str(step)
    target = self.workdir / 'damaged' / f'checkpoint_{step}'
    reason = ' '.join(f'{type(error).__name__}: {error}'.split())[:300]
    log.warning(f'Skipping checkpoint {source}: it does not restore ({reason}). Moved to {target} '
                '(not deleted); resuming from the one before.')
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      if target.exists():  # damaged twice at the same step: keep both
        target = target.with_name(f'{target.name}_{int(time.time())}')
      shutil.move(str(source), str(target))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'codec_set_aside_{step}')
    self.latest.reload()

  def close(self) -> None:
    for manager in (self.latest, self.best):
      manager.wait_until_finished()
      manager.close()


def _restore_nets(manager: ocp.CheckpointManager, step: int):
  """(gen_params, disc_params) of `step`, on this process's default device; gen_params is the
  generator's weight average where the run kept one (config.optim.ema_decay).

  The abstract target comes from the checkpoint's own metadata (shapes, dtypes) with a
  single-device sharding: the saved shardings name the devices of the machine that trained (a GPU
  mesh, say), which need not exist here. partial_restore skips the optimizer states, which are
  twice the parameters' size and useless for inference.
  """
  metadata = manager.item_metadata(step)['state']
  tree = getattr(metadata, 'tree', metadata)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  gen = 'gen_ema' if tree.get('gen_ema') else 'gen_params'
  # disc_params is absent from an imported generator (`python -m codec import-dac`): None then.
  names = [gen] + (['disc_params'] if tree.get('disc_params') else [])
  target = {name: jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree[name])
            for name in names}
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True)))['state']
  return state[gen], state.get('disc_params')


def restore_params(run_dir: str, step: int | None = None, best: bool = True):
  """(gen_params, disc_params, step) of a run, for inference: no optimizer, no target structure.

  Loads the best checkpoint by default (the latest when the run has no best yet), or `step`
  from the latest ones (or the best, if that is where it is). Arrays come back on the default
  device of this machine, whatever devices the run trained on.
  """
  run_dir = pathlib.Path(run_dir)
  candidates = [run_dir / 'best', run_dir / 'checkpoints'] if best and step is None else [
      run_dir / 'checkpoints', run_dir / 'best']
  for path in candidates:
    if not path.is_dir():
      continue
    # The handlers must be named: a read-only manager cannot infer them for item_metadata.
    with ocp.CheckpointManager(path.absolute(),
                               item_handlers={'state': ocp.PyTreeCheckpointHandler()},
                               options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
      steps = manager.all_steps()
      # best/ keeps one checkpoint (max_to_keep=1), so its latest step is the best one.
      chosen = step if step is not None else manager.latest_step()
      if chosen is None or chosen not in steps:
        continue
      gen_params, disc_params = _restore_nets(manager, chosen)
      return gen_params, disc_params, chosen
  raise FileNotFoundError(
      f'no checkpoint{"" if step is None else f" at step {step}"} under {run_dir}; pass a run '
      'directory written by run_experiment.py (it holds checkpoints/ and best/)')
