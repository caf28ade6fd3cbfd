"""The launcher as users run it: README's command line, bad flags, SIGKILL and resume, two hosts."""
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import README_FLAGS
from conftest import read_events
from conftest import records_of
from conftest import ROOT
from conftest import free_port
from conftest import wait_all

pytestmark = pytest.mark.slow

# The weights of the suite's other training runs (so the step comes from the compilation cache).
WEIGHT_FLAGS = [f'--{name}={value}' for name, value in README_FLAGS.items()]


def launch(*args, wait=True, env=None, console=None):
  """The launcher in a subprocess. Not waited for, its output goes to a pipe, or to the file
  `console` (for processes the test does not read while they run: a pipe would fill up)."""
  command = [sys.executable, 'run_experiment.py', *map(str, args)]
  env = {**os.environ, **(env or {})}
  if not wait and console is not None:
    with open(console, 'w') as out:
      return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
  if not wait:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_readme_command_line_trains_and_writes_a_run(tiny_corpus, tmp_path):
  run = tmp_path / 'run'
  result = launch('--config', 'experiments/dac_16khz.py:tiny', '--data_dir', tiny_corpus,
                  '--checkpoint_dir', run, '--batch_size', '4', '--num_epochs', '2', *WEIGHT_FLAGS,
                  '--experiment_name', 'telugu_codec_DAC_FIXED', '--config.data.val_fraction=0.2')
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'Resolved config' in result.stdout
  if platform.libc_ver()[0] == 'glibc':  # the launcher re-executed itself with huge-page malloc
    assert 'malloc: GLIBC_TUNABLES=glibc.malloc.hugetlb=1' in result.stdout
  config = json.loads((run / 'config.json').read_text())
  assert config['loss']['feat_weight'] == 10.0 and config['loss']['recon_weight'] == 0.1
  assert config['experiment_name'] == 'telugu_codec_DAC_FIXED'
  records = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in records] == [1, 2]
  for r in records:
    for key in ('step', 'disc_loss', 'feat_loss', 'adv_loss', 'mel_loss', 'snr_db', 'si_sdr_db',
                'amplitude_ratio', 'mel_distance', 'codebook_usage'):
      assert isinstance(r[key], (int, float)) and np.isfinite(r[key]), key
  health = [json.loads(l) for l in (run / 'health.jsonl').read_text().splitlines()]
  assert [h['epoch'] for h in health] == [1, 2]
  assert all({'color', 'check', 'message'} <= set(f) for h in health for f in h['flags'])
  assert any(p.name.isdigit() for p in (run / 'checkpoints').iterdir())
  assert 'Health at step 24 (epoch 2)' in result.stdout
  assert not (run / 'run.lock').exists()  # released at the end


@pytest.mark.parametrize('args, message', [
    (['--no_such_flag=1'], 'no_such_flag'),
    (['--config.modle.encoder_dim=8'], 'modle'),
    (['--batch_size=many'], 'batch_size'),
    (['--config.model.encoder_dim=wide'], 'encoder_dim'),
    (['--batch_size=6'], '--batch_size 6 must be divisible'),
    (['--data_dir=/no/such/folder'], '/no/such/folder'),
    (['--adv_weight=nan', '--config.model.n_codebooks=0'],
     '--adv_weight must be a finite number >= 0, got nan\n'
     '  --config.model.n_codebooks must be an integer >= 1, got 0'),
])
def test_bad_flags_fail_before_training(args, message, tmp_path):
  result = launch('--config', 'experiments/dac_16khz.py:tiny', '--checkpoint_dir', tmp_path,
                  *args, env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert result.returncode != 0
  assert message in result.stdout + result.stderr
  assert not (tmp_path / 'checkpoints').exists()
  assert 'Traceback' not in result.stdout + result.stderr  # one message, no traceback


def test_second_process_in_a_run_directory_is_refused_naming_the_first(tmp_path):
  from codec import run_lock  # pylint: disable=g-import-not-at-top
  with run_lock.hold(str(tmp_path)) as lock:  # this test's process owns the run directory
    result = launch('--config', 'experiments/dac_16khz.py:tiny', '--checkpoint_dir', tmp_path,
                    env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
    assert lock.exists()  # the refused process leaves the owner's lock alone
  output = result.stdout + result.stderr
  assert result.returncode != 0
  assert f'process {os.getpid()} on this host' in output and str(tmp_path) in output, output
  assert 'Traceback' not in output
  assert not (tmp_path / 'checkpoints').exists()


def test_use_wandb_without_wandb_says_how_to_install(tmp_path):
  pytest.importorskip  # wandb is not a dependency; skip if someone installed it
  if __import__('importlib').util.find_spec('wandb'):
    pytest.skip('wandb is installed here')
  result = launch('--config', 'experiments/dac_16khz.py:tiny', '--checkpoint_dir', tmp_path,
                  '--use_wandb')
  assert result.returncode != 0 and 'pip install wandb' in result.stdout + result.stderr


def _params(run_dir, step):
  from codec import checkpoint  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  gen, disc, _ = checkpoint.restore_params(run_dir, step=step, best=False)
  return [np.asarray(x) for x in jax.tree.leaves((gen, disc))]


def _wait_for(process, found, what: str, log_path, timeout: float = 300.0) -> None:
  """Polls found() until it holds; fails if the process ends first."""
  deadline = time.time() + timeout
  while not found():
    assert process.poll() is None, f'the run ended before {what}: ' + log_path.read_text()[-3000:]
    assert time.time() < deadline, f'no {what} after {timeout} s'
    time.sleep(0.01)


def test_sigkills_at_random_moments_end_like_an_uninterrupted_run(two_epoch_run, tiny_corpus,
                                                                  tmp_path):
  """The same command killed with SIGKILL at moments drawn from a seeded RNG, then run again:

  mid-save (while a checkpoint is still a temporary folder, at an evaluation's step or between
  them), during the compile of the step after a resume (read from the cache), and mid-epoch a
  little after a checkpoint, between two log steps. The run then ends with the uninterrupted run's parameters, bit for bit, and
  its metrics.jsonl and health.jsonl line for line (but for the wall-clock fields,
  conftest.WALL_CLOCK_FIELDS): each checkpoint holds the records' accumulators.
  """
  _, full_dir, history, _ = two_epoch_run
  rng = np.random.default_rng(20)
  run = tmp_path / 'killed'
  checkpoints = run / 'checkpoints'
  train_log = run / 'train.log'
  args = ['--config', 'experiments/dac_16khz.py:tiny', '--data_dir', tiny_corpus,
          '--checkpoint_dir', run, '--num_epochs', '2', '--config.checkpoint_every_steps=3',
          '--config.eval_every_steps=6', '--config.data.val_fraction=0.2', *WEIGHT_FLAGS]
  command = [sys.executable, 'run_experiment.py', *map(str, args)]
  console = tmp_path / 'console.txt'  # a file, not a pipe that would fill up unread

  def start():
    with open(console, 'a') as out:
      return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

  def kill(process):
    assert process.poll() is None, 'the run ended before its kill: ' + console.read_text()[-3000:]
    process.send_signal(signal.SIGKILL)
    process.wait()

  def complete():
    return {int(p.name) for p in checkpoints.glob('*') if p.name.isdigit()}

  # 1. Mid-save: the moment checkpoint `step` exists only as Orbax's temporary folder.
  save_step = int(rng.choice([6, 9]))  # a complete checkpoint (3) is there before it
  process = start()
  _wait_for(process, lambda: any(checkpoints.glob(f'{save_step}.orbax-checkpoint-tmp*')),
            f'checkpoint {save_step} being written', console)
  kill(process)
  assert save_step not in complete()
  # 2. During the compile of the step (read from the compilation cache), right after restoring.
  log_size = train_log.stat().st_size
  process = start()
  _wait_for(process, lambda: 'Resumed from step' in train_log.read_text()[log_size:],
            'the resume', console)
  time.sleep(float(rng.uniform(0.0, 1.0)))
  kill(process)
  # 3. Mid-epoch, between two log steps, a little after a checkpoint.
  after = int(rng.choice([9, 15]))
  process = start()
  _wait_for(process, lambda: after in complete(), f'checkpoint {after}', console)
  time.sleep(float(rng.uniform(0.0, 0.3)))
  kill(process)
  final_step = history[-1]['step']
  assert final_step not in complete(), 'killed too late to test resume'
  process = start()
  assert process.wait(timeout=600) == 0, console.read_text()[-3000:]
  assert train_log.read_text().count('Resumed from step') == 3
  for a, b in zip(_params(full_dir, final_step), _params(run, final_step)):
    np.testing.assert_array_equal(a, b)
  assert records_of(run) == records_of(full_dir)
  assert (run / 'health.jsonl').read_text() == (full_dir / 'health.jsonl').read_text()


def test_two_processes_train_like_one_and_stop_together_on_one_signal(two_epoch_run, tiny_corpus,
                                                                     tmp_path):
  """Two hosts on localhost (gloo CPU collectives, 2 devices each) vs one host with 4 devices.

  The first step starts from the same parameters and batch on both layouts, so its losses and
  gradient norms (logged at once) agree to summation round-off; without the cross-host gradient
  all-reduce each host would see only its half of the batch. Then SIGTERM reaches host 1 alone:
  both hosts save the same step together and exit 0 (a host saving alone would hang in the
  collective save), and the same commands resume from that step.
  """
  _, one_host, _, _ = two_epoch_run
  run = tmp_path / 'two_hosts'
  address = f'127.0.0.1:{free_port()}'
  steps = 3  # the one-host run keeps a checkpoint there
  common = ['--config', 'experiments/dac_16khz.py:tiny', '--data_dir', tiny_corpus,
            '--checkpoint_dir', run, '--num_epochs', '2', '--config.checkpoint_every_steps=3',
            '--config.data.val_fraction=0.2', *WEIGHT_FLAGS,
            '--config.distributed.num_processes=2',
            f'--config.distributed.coordinator_address={address}']
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  consoles = [tmp_path / f'host_{i}.txt' for i in range(2)]

  def start(*extra):
    return [launch(*common, *extra, f'--config.distributed.process_id={i}', wait=False, env=env,
                   console=console) for i, console in enumerate(consoles)]

  # --overwrite: host 0 deletes (nothing here), both wait at a barrier.
  processes = start('--overwrite')
  try:
    deadline = time.time() + 600
    while not (run / 'checkpoints' / str(steps)).is_dir():
      assert all(p.poll() is None for p in processes), [c.read_text()[-3000:] for c in consoles]
      assert time.time() < deadline, f'no checkpoint {steps} after 600 s'
      time.sleep(0.05)
    processes[1].send_signal(signal.SIGTERM)
  finally:
    wait_all(processes)  # a host saving alone would hang in the collective save: killed then
  outputs = [c.read_text() for c in consoles]
  assert all(p.returncode == 0 for p in processes), [o[-3000:] for o in outputs]
  saved = [re.findall(r'Saved step (\d+); run the same command again', o) for o in outputs]
  assert len(saved[0]) == len(saved[1]) == 1 and saved[0] == saved[1], saved
  stopped = int(saved[0][0])
  assert stopped > steps and (run / 'checkpoints' / str(stopped)).is_dir()
  first = lambda d: {tag: v for step, tag, v in read_events(d) if step == 1 and tag.startswith(
      'train/') and isinstance(v, float)}
  one, two = first(one_host), first(run)
  names = ('disc_loss', 'gen_loss', 'mel_loss', 'feat_loss', 'adv_loss', 'gen_grad_norm',
           'disc_grad_norm')
  for name in names:
    np.testing.assert_allclose(two[f'train/{name}'], one[f'train/{name}'], rtol=1e-5,
                               err_msg=name)
  # Adam's first updates are ~lr * sign(g): gradients within round-off of zero may flip, so each
  # step may move a parameter by up to 2 lr between the two device layouts.
  for a, b in zip(_params(one_host, steps), _params(run, steps)):
    np.testing.assert_allclose(a, b, atol=steps * 2 * 1e-4 + 1e-6)
  # The same commands resume on both hosts; max_steps at the saved step ends them there, before
  # a step compiles again (the steps of two hosts are checked above).
  processes = start(f'--config.max_steps={stopped}')
  wait_all(processes)
  outputs = [c.read_text() for c in consoles]
  assert all(p.returncode == 0 for p in processes), [o[-3000:] for o in outputs]
  assert all(f'Resumed from step {stopped}' in o for o in outputs), [o[-3000:] for o in outputs]


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_corpus, tmp_path):
  """A preemption (SIGTERM) of a real training process; Ctrl+C takes the same path."""
  run = tmp_path / 'interrupted'
  process = launch('--config', 'experiments/dac_16khz.py:tiny', '--data_dir', tiny_corpus,
                   '--checkpoint_dir', run, '--num_epochs', '50', '--config.data.val_fraction=0.2',
                   *WEIGHT_FLAGS, wait=False)
  first = run / 'checkpoints' / '4'  # training is under way (the tiny config saves every 4 steps)
  deadline = time.time() + 300
  while not first.exists() and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=300)
  assert process.returncode == 0, output
  assert 'SIGTERM: saving a checkpoint' in output, output[-3000:]
  saved = re.search(r'Saved step (\d+); run the same command again to resume', output)
  assert saved, output[-3000:]
  assert (run / 'checkpoints' / saved.group(1)).is_dir()
  assert not (run / 'run.lock').exists()
