"""The jitted GAN step, data parallelism, the training loop, checkpoints and resume (tiny config)."""
import dataclasses
import errno
import functools
import json
import logging
import os
import shutil
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from codec import checkpoint
from codec import parallel
from codec import train
from conftest import read_events
from conftest import records_of
from conftest import tiny_config

EXCERPT = 1600  # tiny config: 0.1 s at 16 kHz


@pytest.fixture(scope='module')
def setup():
  config = tiny_config()
  models = train.make_models(config)
  mesh = parallel.make_mesh()
  state = jax.jit(functools.partial(train.create_train_state, models, excerpt_samples=EXCERPT),
                  out_shardings=parallel.replicated(mesh))(jax.random.key(0))
  step = jax.jit(functools.partial(train.train_step, models))
  audio = np.asarray(jax.random.normal(jax.random.key(1), (4, EXCERPT))) * 0.1
  return models, mesh, state, step, audio


def _max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_one_step_updates_both_nets_with_finite_metrics(setup):
  _, mesh, state, step, audio = setup
  new, metrics = step(state, parallel.shard_global(audio, mesh), jax.random.key(2))
  assert int(new.step) == 1
  assert _max_diff(new.gen_params, state.gen_params) > 0
  assert _max_diff(new.disc_params, state.disc_params) > 0
  for name in ('disc_loss', 'adv_loss', 'feat_loss', 'mel_loss', 'commitment_loss',
               'codebook_loss', 'gen_grad_norm', 'disc_grad_norm', 'real_logit_mean',
               'fake_logit_mean', 'learning_rate', 'snr_db', 'amplitude_ratio'):
    assert np.isfinite(float(metrics[name])), name
  # Codes per level: the 4 items' frames, minus the levels quantizer dropout removed.
  counts = np.asarray(metrics["code_counts"])
  assert counts.shape == (3, 16) and counts[0].sum() == 4 * 5  # 1600 samples / hop 320
  assert np.all(np.diff(counts.sum(axis=1)) <= 0)
  assert float(metrics['nonfinite']) == 0.0
  # LSGAN at init: outputs near 0 give about 1 per discriminator (0 on fake, 1 on real).
  assert 0.5 < float(metrics['disc_loss']) < 1.5


def test_non_finite_step_leaves_the_state_unchanged(setup):
  models, mesh, state, step, audio = setup
  bad = audio.copy()
  bad[0, 10] = np.nan
  new, metrics = step(state, parallel.shard_global(bad, mesh), jax.random.key(2))
  assert float(metrics['nonfinite']) == 1.0
  assert _max_diff(new.gen_params, state.gen_params) == 0.0
  assert _max_diff(new.disc_params, state.disc_params) == 0.0
  # The skipped update does not count: the next step applies (and reports) the first rate.
  assert float(models.gen_opt.learning_rate_at(1)) != float(models.gen_opt.learning_rate_at(0))
  _, metrics = step(new, parallel.shard_global(audio, mesh), jax.random.key(3))
  assert float(metrics['nonfinite']) == 0.0
  assert float(metrics['learning_rate']) == float(models.gen_opt.learning_rate_at(0))


def test_one_net_non_finite_skips_both_updates(setup):
  """The generator's gradient made non-finite, the discriminator's fine: neither net moves."""
  models, mesh, state, _, audio = setup

  class NonFinite:
    """The generator's optimizer, fed a gradient with a NaN in it."""

    def __init__(self, inner):
      self.inner = inner

    def __getattr__(self, name):
      return getattr(self.inner, name)

    def update(self, grads, opt_state, params):
      grads = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
      return self.inner.update(grads, opt_state, params)

  poisoned = dataclasses.replace(models, gen_opt=NonFinite(models.gen_opt))
  step = jax.jit(functools.partial(train.train_step, poisoned))
  new, metrics = step(state, parallel.shard_global(audio, mesh), jax.random.key(2))
  assert float(metrics['nonfinite']) == 1.0 and np.isfinite(float(metrics['disc_grad_norm']))
  assert _max_diff(new.disc_params, state.disc_params) == 0.0
  assert _max_diff(new.disc_opt_state, state.disc_opt_state) == 0.0
  assert _max_diff(new.gen_params, state.gen_params) == 0.0
  assert int(new.step) == int(state.step) + 1


def test_state_is_replicated_and_batch_sharded_over_all_devices(setup):
  _, mesh, state, step, audio = setup
  assert jax.device_count() == 4
  batch = parallel.shard_global(audio, mesh)
  assert len(batch.sharding.device_set) == 4
  assert batch.addressable_shards[0].data.shape == (1, EXCERPT)
  new, _ = step(state, batch, jax.random.key(2))
  leaf = jax.tree.leaves(new.gen_params)[0]
  assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4


def test_one_device_and_four_devices_agree_after_three_steps(setup):
  """Same global batch on 1 and 4 devices: only the order of the cross-device sums differs.

  Tolerances: the first step's losses and gradient norms agree to rtol 1e-5 (same maths, other
  summation order). Adam's first updates are about lr * sign(gradient), so an entry whose
  gradient is within round-off of zero may move either way; after 3 steps every parameter agrees
  within that bound, 2 * lr per step (on this tiny model the later losses then drift by ~1%).
  """
  models, mesh, state, step, audio = setup
  one = jax.devices()[0]
  state_1 = jax.device_put(jax.tree.map(np.asarray, state), one)
  state_4 = state
  for i in range(3):
    batch = np.roll(audio, i, axis=1)
    state_1, metrics_1 = step(state_1, jax.device_put(batch, one), jax.random.key(2))
    state_4, metrics_4 = step(state_4, parallel.shard_global(batch, mesh), jax.random.key(2))
    if i == 0:
      for name in ('disc_loss', 'gen_loss', 'mel_loss', 'feat_loss', 'adv_loss', 'gen_grad_norm',
                   'disc_grad_norm'):
        np.testing.assert_allclose(metrics_1[name], metrics_4[name], rtol=1e-5, err_msg=name)
  bound = 3 * 2 * float(models.gen_opt.learning_rate_at(0)) + 1e-6
  assert _max_diff(state_1.gen_params, state_4.gen_params) <= bound
  assert _max_diff(state_1.disc_params, state_4.disc_params) <= bound


def test_batch_size_must_divide_over_devices():
  with pytest.raises(ValueError, match='--batch_size 6 must be divisible'):
    train.check_config(tiny_config(batch_size=6))


def test_negative_eval_interval_is_refused():
  with pytest.raises(ValueError, match='--config.eval_every_steps'):
    train.check_config(tiny_config(eval_every_steps=-1))


def test_silent_validation_folder_fails_before_the_first_step(tiny_corpus, tmp_path):
  """A validation set with no usable excerpt is refused up front, naming the flags to pass."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  quiet = tmp_path / 'quiet'
  quiet.mkdir()
  sf.write(quiet / 'silence.flac', np.zeros(8000, np.float32), 16000)
  config = tiny_config(tiny_corpus, **{'data.val_dir': str(quiet)})
  with pytest.raises(ValueError, match=r'--val_dir .*quiet.*--config\.data\.val_fraction'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / 'checkpoints').exists() or not any(
      (tmp_path / 'run' / 'checkpoints').iterdir())


def test_learning_rate_cooldown_ends_at_the_runs_last_step(tiny_corpus, tmp_path, monkeypatch):
  """The optimizers learn the run's total steps (epochs, or max_steps when it stops earlier)."""
  made = []

  def make_models(config, backend=None, total_steps=None):
    made.append(total_steps)
    raise KeyboardInterrupt  # enough: nothing compiles

  monkeypatch.setattr(train, 'make_models', make_models)
  for max_steps, total in ((0, 24), (5, 5)):
    config = tiny_config(tiny_corpus, num_epochs=2, max_steps=max_steps,
                         **{'optim.cooldown_steps': 4})
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(config, str(tmp_path / f'run{max_steps}'))
    assert made[-1] == total


def test_cooldown_of_a_generator_held_by_the_discriminator_warmup_ends_with_the_run():
  """The generator makes no update during the discriminators' warm-up, so its optimizer's count
  lags the step by the warm-up: its last update (count 24 - 6 - 1) is its last nonzero rate."""
  config = tiny_config(**{'optim.cooldown_steps': 4, 'optim.discriminator_warmup_steps': 6})
  models = train.make_models(config, total_steps=24)
  for opt, last in ((models.gen_opt, 17), (models.disc_opt, 23)):
    rates = [float(opt.learning_rate_at(n)) for n in (last - 4, last, last + 1)]
    assert rates[0] > 0 and 0 < rates[1] < rates[0] / 3 and rates[2] == 0, rates
  with pytest.raises(ValueError, match=r'optim\.cooldown_steps=4 needs the run\'s total steps'):
    train.make_models(config)


def test_cooldown_of_discriminators_updated_on_a_share_of_the_steps_follows_the_steps():
  """At optim.discriminator_update_probability < 1 their optimizer counts only the drawn steps:
  its rate stays whole until the run's last optim.cooldown_steps steps, then falls over the
  updates drawn among them and reaches 0 after the run's last update."""
  share = {'optim.discriminator_update_probability': 0.5}
  config = tiny_config(**share, **{'optim.cooldown_steps': 4})
  drawn = [train.updates_discriminators(0.5, config.seed, step) for step in range(24)]
  updates, in_cooldown = sum(drawn), sum(drawn[20:])
  assert updates < 20 and in_cooldown >= 2, drawn  # a share, and a fall over 2 or more updates
  opt = train.make_models(config, total_steps=24).disc_opt
  plain = train.make_models(tiny_config(**share), total_steps=24).disc_opt
  rate = lambda o, count: float(o.learning_rate_at(count))
  first = updates - in_cooldown  # the count of the first update in the last 4 steps
  assert rate(opt, first) == rate(plain, first) > 0
  assert 0 < rate(opt, updates - 1) < rate(plain, updates - 1) and rate(opt, updates) == 0


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_ask_the_loop_to_save_and_stop(signum):
  interrupt = train._Interrupt()  # pylint: disable=protected-access
  try:
    assert not interrupt.stop_now(log_step=False)
    os.kill(os.getpid(), signum)
    assert interrupt.stop_now(log_step=False)  # one host: at once, not only at log steps
    with pytest.raises(KeyboardInterrupt):  # a second one quits now
      os.kill(os.getpid(), signum)
  finally:
    interrupt.restore()
  assert signal.getsignal(signum) is not interrupt._handle  # pylint: disable=protected-access


def test_schedule_evaluates_every_n_steps_and_at_the_end():
  config = tiny_config(num_epochs=3, eval_every_steps=4, max_steps=30)
  schedule = train.Schedule.from_config(config, steps_per_epoch=10)
  assert [s for s in range(1, 31) if schedule.evaluates(s)] == [4, 8, 12, 16, 20, 24, 28, 30]
  assert not schedule.on_schedule(30)
  assert [schedule.fractional_epoch(s) for s in (4, 10, 25)] == [0.4, 1, 2.5]
  assert [schedule.epoch_of(s) for s in (1, 10, 11)] == [1, 1, 2]
  # 0: at each epoch end.
  by_epoch = train.Schedule.from_config(tiny_config(num_epochs=3), steps_per_epoch=10)
  assert [s for s in range(1, 31) if by_epoch.evaluates(s)] == [10, 20, 30]


def test_loop_writes_metrics_checkpoints_and_curves(two_epoch_run):
  _, workdir, history, _ = two_epoch_run
  # 12 steps per epoch, evaluated every 6: two verdicts per epoch, fractional mid-epoch.
  assert [(r['step'], r['epoch']) for r in history] == [(6, 0.5), (12, 1), (18, 1.5), (24, 2)]
  lines = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [(l['step'], l['epoch']) for l in lines] == [(6, 0.5), (12, 1), (18, 1.5), (24, 2)]
  verdicts = [json.loads(l) for l in (workdir / 'health.jsonl').read_text().splitlines()]
  assert [(v['step'], v['epoch']) for v in verdicts] == [(6, 0.5), (12, 1), (18, 1.5), (24, 2)]
  assert all(l['train_steps'] == 6 for l in lines)  # each record covers its own interval
  for l in lines:  # every verdict comes with its codebook statistics and rate-distortion points
    assert len(l['rd_snr_db']) == len(l['rd_mel_distance']) == 3
    assert l['rd_mel_distance'][-1] == pytest.approx(l['mel_distance'], rel=1e-5)
    # 4 excerpts of 0.2 s at 50 frames/s on each level; 6 steps of 4 x 5 frames, less dropout.
    assert l['codebook_frames'] == [40.0] * 3 and l['train_codebook_frames'][0] == 6 * 4 * 5
    for prefix in ('', 'train_'):
      usage = l[f'{prefix}codebook_usage_per_level']
      dead = l[f'{prefix}codebook_dead_codes_per_level']
      assert [u * 16 + d for u, d in zip(usage, dead)] == pytest.approx([16.0] * 3)
      assert all(1 <= p <= 16 for p in l[f'{prefix}codebook_perplexity_per_level'])
      assert 0 < l[f'{prefix}codebook_entropy_kbps'] <= l[f'{prefix}codebook_nominal_kbps']
    assert l['codebook_nominal_kbps'] == pytest.approx(3 * 4 * 50 / 1000)
    assert all(x > 0 for x in l['latent_norm_per_level'] + l['codebook_norm_per_level'])
  assert all('codebook' in {f['check'] for f in v['flags']} for v in verdicts)
  for key in ('step', 'disc_loss', 'feat_loss', 'adv_loss', 'mel_loss', 'snr_db', 'si_sdr_db',
              'amplitude_ratio', 'mel_distance', 'codebook_usage'):
    assert all(np.isfinite(l[key]) for l in lines), key
  assert (workdir / 'curves.png').stat().st_size > 0
  assert (workdir / 'config.json').exists()
  # One TensorBoard run: the hyper-parameters, code histograms and the rate-distortion image are
  # in the run's own event file, not in a second run beside it.
  assert {p.parent for p in workdir.rglob('events.out.tfevents.*')} == {workdir}
  tags = {tag for _, tag, _ in read_events(workdir)}
  assert {'_hparams_/experiment', 'train/codes/level_0', 'val/codes/level_2',
          'val/codebook_row_norms/level_1', 'val/rate_distortion', 'val/rd_snr_db/level_2',
          'train/codebook/entropy_kbps', 'val/codebook/dead_codes_per_level/level_0'} <= tags
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps[-1] == history[-1]['step']
  assert any(p.name.isdigit() for p in (workdir / 'best').iterdir())


def test_no_recompilation_across_steps_epochs_and_validation(two_epoch_run):
  *_, compile_logs = two_epoch_run
  step_compiles = [m for m in compile_logs if 'Compiling' in m and 'train_step' in m]
  eval_compiles = [m for m in compile_logs if 'Compiling' in m and 'eval_step' in m]
  assert len(step_compiles) == 1, step_compiles
  assert len(eval_compiles) == 1, eval_compiles


def test_resume_continues_to_the_same_parameters(tiny_corpus, tmp_path, two_epoch_run):
  """Stopping after epoch 1 and restarting gives exactly the uninterrupted run's parameters and
  records (the stopped run's checkpoint keeps the steps of its dropped off-schedule record)."""
  config, full_dir, history, _ = two_epoch_run
  steps_per_epoch = next(r['step'] for r in history if r['epoch'] == 1)
  workdir = tmp_path / 'resumed'
  first = config.copy_and_resolve_references()
  first.max_steps = steps_per_epoch + 1
  stopped = train.train_and_evaluate(first, str(workdir))
  assert [r['step'] for r in stopped] == [6, 12, 13] and stopped[-1]['partial']
  resumed = train.train_and_evaluate(config, str(workdir))
  # The off-schedule evaluation at step 13 is dropped; the schedule continues from step 12.
  assert [r['step'] for r in resumed] == [r['step'] for r in history]
  full, _, _ = checkpoint.restore_params(full_dir, step=history[-1]['step'], best=False)
  again, _, _ = checkpoint.restore_params(workdir, step=history[-1]['step'], best=False)
  assert _max_diff(full, again) == 0.0
  assert records_of(workdir) == records_of(full_dir)
  assert (workdir / 'health.jsonl').read_text() == (full_dir / 'health.jsonl').read_text()


def test_init_from_a_run_starts_a_launched_run_from_its_weights(tmp_path, two_epoch_run):
  """--init_from RUN_DIR inside the loop: both nets start from the source's best weights (a
  first AdamW update from fresh moments moves each entry by at most the learning rate, plus
  weight decay), not from this run's seed, and the run counts its own steps from 1."""
  config, source_dir, _, _ = two_epoch_run
  fine_tune = ml_collections.ConfigDict(config.to_dict())
  fine_tune.init_from, fine_tune.max_steps, fine_tune.seed = str(source_dir), 1, 7
  history = train.train_and_evaluate(fine_tune, str(tmp_path / 'fine_tune'))
  assert [r['step'] for r in history] == [1]
  source_gen, source_disc, _ = checkpoint.restore_params(str(source_dir))  # what init_from reads
  gen, disc, step = checkpoint.restore_params(str(tmp_path / 'fine_tune'), best=False)
  assert step == 1
  lr = config.optim.learning_rate
  for ours, source in ((gen, source_gen), (disc, source_disc)):
    for a, b in zip(jax.tree.leaves(ours), map(np.asarray, jax.tree.leaves(source))):
      bound = lr * (1 + config.optim.weight_decay * np.abs(b)) * (1 + 1e-5) + 2 * np.spacing(np.abs(b))
      assert np.all(np.abs(np.asarray(a) - np.asarray(b)) <= bound)
  assert max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(gen), jax.tree.leaves(source_gen))) > 0


def test_damaged_latest_checkpoint_is_skipped_kept_and_rewritten(tiny_corpus, tmp_path,
                                                                 two_epoch_run):
  """Files of the latest checkpoint overwritten: resume from the one before, to the same end.

  The one before is made a checkpoint of an older version (no records' accumulators in its
  metadata): it restores, with a note that the next record covers only the steps after it.
  """
  config, full_dir, history, _ = two_epoch_run
  workdir = tmp_path / 'damaged_run'
  shutil.copytree(full_dir, workdir)
  last = history[-1]['step']
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps[-1] == last
  damaged = workdir / 'checkpoints' / str(last)
  for name in ('_CHECKPOINT_METADATA', 'state/_METADATA', 'meta/metadata'):
    (damaged / name).write_bytes(b'\xff\xfe garbage \x00' * 8)
  older = workdir / 'checkpoints' / str(steps[-2]) / 'meta' / 'metadata'
  meta = json.loads(older.read_text())
  assert meta.pop('records')['interval']['steps']  # mid-interval: steps had accumulated
  older.write_text(json.dumps(meta))
  resumed = train.train_and_evaluate(config, str(workdir))
  assert [r['step'] for r in resumed] == [r['step'] for r in history]
  log_text = (workdir / 'train.log').read_text()
  assert f'Skipping checkpoint {damaged}' in log_text, log_text[-2000:]
  assert f'Resumed from step {steps[-2]}' in log_text
  assert (f'Note: checkpoint {steps[-2]} was written without the records\' accumulators'
          in log_text)
  assert resumed[-1]['train_steps'] == last - steps[-2] < history[-1]['train_steps']
  kept = workdir / 'damaged' / f'checkpoint_{last}' / 'state' / '_METADATA'
  assert kept.read_bytes().startswith(b'\xff\xfe garbage')  # never deleted
  full, _, _ = checkpoint.restore_params(full_dir, step=last, best=False)
  again, _, _ = checkpoint.restore_params(workdir, step=last, best=False)  # written again
  assert _max_diff(full, again) == 0.0


def test_full_disk_at_a_checkpoint_write_is_one_message(tmp_path, two_epoch_run, monkeypatch):
  """ENOSPC injected at the checkpoint write of a resumed run: the launcher's one message names
  the path, the free space and the last complete checkpoint, which stays."""
  from codec import launch  # pylint: disable=g-import-not-at-top
  config, full_dir, history, _ = two_epoch_run
  workdir = tmp_path / 'full_disk'
  shutil.copytree(full_dir, workdir)
  last = history[-1]['step']
  shutil.rmtree(workdir / 'checkpoints' / str(last))
  before = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())

  def no_space(self, step, *args, **kwargs):
    target = self.workdir / 'checkpoints' / str(step)
    raise OSError(errno.ENOSPC, 'No space left on device', str(target))

  monkeypatch.setattr(checkpoint.Checkpointer, 'save', no_space)
  with pytest.raises(OSError) as caught:
    train.train_and_evaluate(config, str(workdir))
  message = launch.disk_full_message(launch.disk_full(caught.value), str(workdir))
  assert f'no space left on device writing {workdir / "checkpoints" / str(last)}' in message
  assert 'MiB free there' in message
  assert f'last complete checkpoint is step {before[-1]}' in message, message
  assert before == sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()
                          if p.name.isdigit())  # nothing complete removed


def test_full_disk_is_recognised_in_orbax_tensorstore_errors(tmp_path):
  """What a real full tmpfs gave: TensorStore's failed write, as a ValueError, behind another."""
  from codec import launch  # pylint: disable=g-import-not-at-top
  target = tmp_path / 'checkpoints' / '8.orbax-checkpoint-tmp' / 'state' / 'd' / 'x'
  orbax_error = ValueError(f'RESOURCE_EXHAUSTED: Error writing local file "{target}": Failed to '
                           "write 234121 bytes to file 14: No space left on device "
                           "[os_error_code='28']")
  try:
    try:
      raise orbax_error
    except ValueError as e:
      raise RuntimeError('save failed') from e
  except RuntimeError as e:
    outer = e
  assert launch.disk_full(outer) is orbax_error
  assert f'writing {target} (' in launch.disk_full_message(orbax_error, str(tmp_path))
  assert launch.disk_full(RuntimeError('another failure')) is None


def test_failed_save_keeps_the_last_good_checkpoints(tmp_path, monkeypatch):
  """ENOSPC while checkpoint 3 is written (its temporary folder made) with keep_checkpoints=2
  reached: the error surfaces, checkpoints 1 and 2 stay (older ones go only once a new one is
  complete), and a new start restores 2. The best checkpoint (max_to_keep=1) is kept the same."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  config = tiny_config(keep_checkpoints=2)
  tree = lambda value: {'w': jnp.full((4,), value, jnp.float32)}
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)
  for step in (1, 2):
    ckpt.save(step, tree(step), {'next_batch': step}, [], wait=True)
  ckpt.save_best(2, tree(2), {'next_batch': 2}, [], mel_distance=2.0)
  ckpt.best.wait_until_finished()
  written = []

  def no_space(handler, item, directory):
    written.append(directory)
    assert '.orbax-checkpoint-tmp' in str(directory.parent)  # the new step's temporary folder
    raise OSError(errno.ENOSPC, 'No space left on device', str(directory / 'metadata'))

  monkeypatch.setattr(ocp.JsonCheckpointHandler, '_save_fn', no_space)
  with pytest.raises(OSError, match='No space left'):
    ckpt.save(3, tree(3), {'next_batch': 3}, [], wait=True)
  with pytest.raises(OSError, match='No space left'):
    ckpt.save_best(3, tree(3), {'next_batch': 3}, [], mel_distance=1.0)
    ckpt.best.wait_until_finished()
  assert written
  monkeypatch.undo()
  steps = lambda d: sorted(int(p.name) for p in (tmp_path / d).iterdir() if p.name.isdigit())
  assert steps('checkpoints') == [1, 2] and steps('best') == [2]
  fresh = checkpoint.Checkpointer(str(tmp_path), config)
  state, data_state, _, _ = fresh.restore_latest(tree(0))
  assert data_state == {'next_batch': 2} and np.all(np.asarray(state['w']) == 2)
  fresh.close()


@pytest.fixture
def small_disk(tmp_path):
  """A 2 MiB tmpfs (mount needs root: skipped where it is refused)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  disk = tmp_path / 'disk'
  disk.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', str(disk)],
                           capture_output=True, text=True, check=False)
  if mounted.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs here: {mounted.stderr.strip()}')
  try:
    yield disk
  finally:
    subprocess.run(['umount', '-l', str(disk)], check=False)


def test_really_full_disk_fails_the_save_and_keeps_the_checkpoints(small_disk):
  """A tmpfs filled up to the last 64 KiB: the next save fails with TensorStore's error, which the
  launcher recognises and names; the complete checkpoints stay and restore, and once space is
  freed the same step saves."""
  from codec import launch  # pylint: disable=g-import-not-at-top
  config = tiny_config(keep_checkpoints=2)
  noise = np.random.default_rng(0).normal(size=(64, 1024)).astype(np.float32)  # 256 KiB
  tree = lambda value: {'w': jnp.asarray(noise + value)}  # incompressible
  ckpt = checkpoint.Checkpointer(str(small_disk), config)
  for step in (1, 2):
    ckpt.save(step, tree(step), {'next_batch': step}, [], wait=True)
  filler = small_disk / 'filler'
  filler.write_bytes(b'\0' * (shutil.disk_usage(small_disk).free - (64 << 10)))
  with pytest.raises(Exception) as caught:  # pylint: disable=broad-except  (Orbax's wrapping)
    ckpt.save(3, tree(3), {'next_batch': 3}, [], wait=True)
  full = launch.disk_full(caught.value)
  assert full is not None, caught.value
  message = launch.disk_full_message(full, str(small_disk))
  assert str(small_disk / 'checkpoints') in message and 'MiB free there' in message, message
  assert 'the last complete checkpoint is step 2' in message, message
  steps = sorted(int(p.name) for p in (small_disk / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps == [1, 2]
  filler.unlink()  # space freed: a new start restores step 2 and writes step 3
  fresh = checkpoint.Checkpointer(str(small_disk), config)
  state, data_state, _, _ = fresh.restore_latest(tree(0))
  assert data_state == {'next_batch': 2} and np.all(np.asarray(state['w']) == noise + 2)
  fresh.save(3, tree(3), {'next_batch': 3}, [], wait=True)
  fresh.close()


def test_full_disk_at_tensorboard_and_log_writes_stops_with_one_message(small_disk):
  """A full tmpfs under a run's logs: the TensorBoard writer's thread dies on its write (training
  would go on without curves) and train.log's writes fail (logging would print a traceback per
  line); both reach the training thread as ENOSPC naming the file, which the launcher turns into
  its one message. Once space is freed the log writes again."""
  from codec import launch  # pylint: disable=g-import-not-at-top
  from codec import logs  # pylint: disable=g-import-not-at-top
  run = logs.RunLog(str(small_disk / 'run'), tiny_config())
  counts = np.ones((3, 16), np.float32)
  run.log_train(1, [{'gen_loss': np.float32(1.0)}], counts, frame_rate=50.0)
  run.writer.flush()
  filler = small_disk / 'filler'
  filler.write_bytes(b'\0' * shutil.disk_usage(small_disk).free)
  raised = []

  def log_until_it_fails():  # the writer thread fails on its own time
    try:
      for step in range(2, 3000):
        run.log_train(step, [{'gen_loss': np.float32(1.0)}], counts, frame_rate=50.0)
        time.sleep(0.01)
    except OSError as e:
      raised.append(e)

  logging_thread = threading.Thread(target=log_until_it_fails, daemon=True)
  logging_thread.start()
  logging_thread.join(timeout=60)
  assert not logging_thread.is_alive(), 'logging blocked on the dead TensorBoard writer'
  (error,) = raised
  assert launch.disk_full(error) is error
  assert 'events.out.tfevents.' in error.filename, error
  assert 'events.out.tfevents.' in launch.disk_full_message(error, str(small_disk / 'run'))
  with pytest.raises(OSError) as caught:
    run.info('x' * 20000)
  assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(run.log_path)
  filler.unlink()
  run.info('space freed')
  run.close()
  assert 'space freed' in run.log_path.read_text()


def test_incompatible_checkpoint_is_refused_and_overwrite_starts_fresh(tiny_corpus, tmp_path,
                                                                      two_epoch_run, monkeypatch):
  _, workdir, _, _ = two_epoch_run
  other = tiny_config(tiny_corpus, num_epochs=2)
  other.model.codebook_size = 32
  with pytest.raises(checkpoint.IncompatibleCheckpoint, match='--overwrite'):
    train.train_and_evaluate(other, str(workdir))
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  # Same config, checkpoints of another optimizer-state layout.
  same = tiny_config(tiny_corpus, num_epochs=2)
  monkeypatch.setattr(checkpoint, 'STATE_LAYOUT', checkpoint.STATE_LAYOUT + 1)
  ckpt = checkpoint.Checkpointer(str(copy), same)
  with pytest.raises(checkpoint.IncompatibleCheckpoint, match='optimizer-state layout'):
    ckpt.restore_latest(None)
  ckpt.close()
  other.overwrite = True
  checkpoint.Checkpointer(str(copy), other).close()
  assert not any(p.name.isdigit() for p in (copy / 'checkpoints').iterdir())


def test_bfloat16_compute_trains_with_float32_state():
  # One of each kind of block (two down-sampling stages instead of four, one period of one
  # strided layer, one band, one mel resolution): the dtype handling is the same in every copy,
  # and XLA compiles a bfloat16 step slowly.
  config = tiny_config(**{'model.encoder_rates': (2, 4), 'model.decoder_rates': (4, 2),
                          'model.latent_dim': 16, 'discriminator.periods': (2,),
                          'discriminator.period_channels': (4,),
                          'discriminator.bands': ((0.0, 1.0),), 'loss.mel_windows': (256,),
                          'loss.mel_bins': (16,)})
  config.optim.compute_dtype = 'bfloat16'
  models = train.make_models(config)
  state = train.create_train_state(models, jax.random.key(0), EXCERPT)
  audio = jax.random.normal(jax.random.key(1), (4, EXCERPT)) * 0.1
  new, metrics = jax.jit(functools.partial(train.train_step, models))(state, audio,
                                                                      jax.random.key(2))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new.gen_params))
  assert metrics['gen_loss'].dtype == jnp.float32 and np.isfinite(float(metrics['gen_loss']))
  assert _max_diff(new.gen_params, state.gen_params) > 0
