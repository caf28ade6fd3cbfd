"""Speed of one full GAN training step (generator + 8 discriminators, both updates), as the trainer runs it.

Builds `codec.train.train_step` for a config exactly as the trainer does (same models, optimizers,
jit with the state donated), compiles it, warms up, and times `--steps` steps on random audio.
Prints compile time, median s/step, audio-seconds trained per second, peak RSS, the step's FLOPs
(XLA cost analysis) and the achieved FLOP/s next to a float32 2048x2048 matmul measured in the
same run (and, on a GPU, the fraction of the device's peak). Ends with one JSON line.

  python bench/train_step.py --config experiments/dac_16khz.py --batch_size 4 --seconds 0.5 \\
      [--dtype float32|bfloat16] [--kernels auto|xla|cpu] [--steps 5] [--peer [--peer_python /work/torchvenv/bin/python]] \\
      [--no-malloc_hugepages]

Like the trainer, it runs with glibc's huge-page malloc (codec/hugepages.py) on the CPU backend
unless told not to, and with the kernels codec/compute.py picks unless --kernels says otherwise.

--peer also times the PyTorch reference (descript-audio-codec's DAC + Discriminator, its losses and
AdamW, same batch and excerpt length) in a subprocess run by --peer_python, an interpreter that can
import torch and dac (a separate venv keeps the project's clean), and prints the speed ratio.
This file is that subprocess's script too (`--peer_worker`): it imports jax only in the JAX path.
"""
import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_PEER_PYTHON = '/work/torchvenv/bin/python'

# Dense peak FLOP/s by device kind (vendor datasheets, no sparsity): (float32, bfloat16).
# float32 is the non-tensor-core rate; a device not listed reports 'n/a'.
DEVICE_PEAKS = {
    'NVIDIA H100 80GB HBM3': (67e12, 989e12),  # SXM
    'NVIDIA H100 PCIe': (51e12, 756e12),
    'NVIDIA H100 NVL': (60e12, 835e12),
    'NVIDIA H200': (67e12, 989e12),
    'NVIDIA A100-SXM4-80GB': (19.5e12, 312e12),
    'NVIDIA A100-SXM4-40GB': (19.5e12, 312e12),
    'NVIDIA A100-PCIE-40GB': (19.5e12, 312e12),
    'NVIDIA A100 80GB PCIe': (19.5e12, 312e12),
    'NVIDIA L4': (30.3e12, 121e12),
    'NVIDIA A10G': (31.2e12, 70e12),
    'Tesla T4': (8.1e12, 65e12),
    'Tesla V100-SXM2-16GB': (15.7e12, 125e12),
    'TPU v4': (275e12, 275e12),
    'TPU v5 lite': (197e12, 197e12),
    'TPU v5e': (197e12, 197e12),
}


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far, in MiB.

  /proc/self/status's VmHWM, which is this program's own: getrusage's ru_maxrss survives exec, so
  the --peer subprocess would report the (larger) JAX parent's peak it was forked from.
  """
  try:
    for line in open('/proc/self/status'):
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024.0  # kB
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def cpu_model() -> str:
  try:
    for line in open('/proc/cpuinfo'):
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return 'unknown'


# ------------------------------------------------------------------------------------------ JAX


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
  """float32 n x n matrix product, jitted; median GFLOP/s over `repeats` runs."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / statistics.median(times) / 1e9


def _flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


def test_audio(batch: int, samples: int, sample_rate: int):
  """Deterministic speech-like excerpts (a gliding tone with noise), f32[B, T] near -16 dB."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  t = np.arange(samples) / sample_rate
  out = []
  for _ in range(batch):
    f0 = rng.uniform(100, 300)
    x = np.sin(2 * np.pi * f0 * (t + 0.3 * t * t)) + 0.2 * rng.standard_normal(samples)
    out.append(0.2 * x / np.max(np.abs(x)))
  return np.stack(out).astype(np.float32)


def run_jax(args) -> dict:
  import functools  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(ROOT))
  import jax  # pylint: disable=g-import-not-at-top
  from codec import config as config_lib  # pylint: disable=g-import-not-at-top
  from codec import train  # pylint: disable=g-import-not-at-top

  loadavg = os.getloadavg()[0]  # other work on the machine slows every number below
  config = config_lib.load(args.config)
  config.optim.compute_dtype = args.dtype
  config.model.kernels = args.kernels
  config.batch_size = args.batch_size
  config.data.excerpt_seconds = args.seconds
  train.check_config(config)
  sample_rate = config.model.sample_rate
  samples = int(round(args.seconds * sample_rate))

  models = train.make_models(config)
  state = jax.jit(functools.partial(train.create_train_state, models, excerpt_samples=samples))(
      jax.random.key(0))
  audio = jax.device_put(test_audio(args.batch_size, samples, sample_rate))
  rng = jax.random.key(1)
  step_fn = jax.jit(functools.partial(train.train_step, models), donate_argnums=0)

  start = time.perf_counter()
  compiled = step_fn.lower(state, audio, rng).compile()
  compile_s = time.perf_counter() - start
  flops = _flops(compiled)

  def one_step(state):
    start = time.perf_counter()
    state, metrics = compiled(state, audio, rng)
    jax.block_until_ready((state, metrics))
    return state, metrics, time.perf_counter() - start

  warmup = []
  for _ in range(args.warmup):
    state, metrics, seconds = one_step(state)
    warmup.append(seconds)
  times = []
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(args.steps):
    state, metrics, seconds = one_step(state)
    times.append(seconds)
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps
  nonfinite = float(metrics['nonfinite'])
  step_s = statistics.median(times)
  matmul = matmul_gflops()
  device = jax.devices()[0]
  stats = device.memory_stats() or {}  # None on CPU
  peak_device = stats.get('peak_bytes_in_use')
  peak = DEVICE_PEAKS.get(device.device_kind)
  gflops = flops / step_s / 1e9 if flops else None
  frac = None
  if peak and gflops and device.platform != 'cpu':
    frac = gflops * 1e9 / peak[0 if args.dtype == 'float32' else 1]
  return {
      'config': args.config, 'batch_size': args.batch_size, 'seconds': args.seconds,
      'dtype': args.dtype, 'compile_s': round(compile_s, 2), 'warmup_s': [round(s, 3) for s in warmup],
      'step_times_s': [round(s, 3) for s in times], 'median_step_s': round(step_s, 4),
      'audio_s_per_s': round(args.batch_size * args.seconds / step_s, 4),
      'peak_rss_mib': round(peak_rss_mib(), 1), 'flops_per_step': flops,
      'gflops_per_s': round(gflops, 2) if gflops else None,
      'matmul_gflops_per_s': round(matmul, 2),
      'frac_of_matmul': round(gflops / matmul, 3) if gflops else None,
      'device': f'{device.platform}:{device.device_kind}', 'frac_of_device_peak': frac,
      'peak_device_mib': round(peak_device / 2**20, 1) if peak_device else None,
      'nonfinite': nonfinite, 'sample_rate': sample_rate, 'loadavg': round(loadavg, 2),
      'page_faults_per_step': int(faults),
      'gen_params': sum(x.size for x in jax.tree.leaves(state.gen_params)),
  }


# -------------------------------------------------------------------------------- PyTorch peer


def _peer_models(sample_rate: int):
  """DAC's generator and discriminator for the project's 16 / 44.1 kHz configs."""
  import dac  # pylint: disable=g-import-not-at-top
  if sample_rate == 16000:
    rates, n_codebooks = [2, 4, 5, 8], 12
  elif sample_rate == 44100:
    rates, n_codebooks = [2, 4, 8, 8], 9
  else:
    raise ValueError(f'no reference model for {sample_rate} Hz')
  gen = dac.model.DAC(encoder_dim=64, encoder_rates=rates, latent_dim=None, decoder_dim=1536,
                      decoder_rates=list(reversed(rates)), n_codebooks=n_codebooks,
                      codebook_size=1024, codebook_dim=8, quantizer_dropout=0.5,
                      sample_rate=sample_rate)
  disc = dac.model.Discriminator(sample_rate=sample_rate)
  return gen, disc


def run_peer_worker(args) -> dict:
  """One PyTorch DAC training step, in DAC's order, timed like the JAX one."""
  import torch  # pylint: disable=g-import-not-at-top
  from audiotools import AudioSignal  # pylint: disable=g-import-not-at-top
  from dac.nn import loss as dac_loss  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  sample_rate = args.sample_rate
  samples = int(round(args.seconds * sample_rate))
  gen, disc = _peer_models(sample_rate)
  gen.train()
  disc.train()
  opt_g = torch.optim.AdamW(gen.parameters(), lr=1e-4, betas=(0.8, 0.99), weight_decay=0.01)
  opt_d = torch.optim.AdamW(disc.parameters(), lr=1e-4, betas=(0.8, 0.99), weight_decay=0.01)
  sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=0.999996)
  sched_d = torch.optim.lr_scheduler.ExponentialLR(opt_d, gamma=0.999996)
  gan_loss = dac_loss.GANLoss(disc)
  mel_loss = dac_loss.MelSpectrogramLoss(
      n_mels=[5, 10, 20, 40, 80, 160, 320], window_lengths=[32, 64, 128, 256, 512, 1024, 2048],
      mel_fmin=[0.0] * 7, mel_fmax=[None] * 7, pow=1.0, clamp_eps=1e-5, mag_weight=0.0)
  audio = torch.from_numpy(test_audio(args.batch_size, samples, sample_rate))[:, None, :]

  def step():
    out = gen(audio, sample_rate)
    recon_audio = out['audio']
    length = recon_audio.shape[-1]  # the 16 kHz decoder returns 8 samples fewer
    signal = AudioSignal(audio[..., :length], sample_rate)
    recons = AudioSignal(recon_audio, sample_rate)
    d_loss = gan_loss.discriminator_loss(recons, signal)
    opt_d.zero_grad()
    d_loss.backward()
    torch.nn.utils.clip_grad_norm_(disc.parameters(), 10.0)
    opt_d.step()
    sched_d.step()
    mel = mel_loss(recons, signal)
    adv, feat = gan_loss.generator_loss(recons, signal)
    total = (15.0 * mel + 1.0 * adv + 2.0 * feat + 0.25 * out['vq/commitment_loss'] +
             1.0 * out['vq/codebook_loss'])
    opt_g.zero_grad()
    total.backward()
    torch.nn.utils.clip_grad_norm_(gen.parameters(), 1000.0)
    opt_g.step()
    sched_g.step()
    return float(total), float(d_loss), length

  warmup, times = [], []
  for i in range(args.warmup + args.steps):
    start = time.perf_counter()
    _, _, length = step()
    (warmup if i < args.warmup else times).append(time.perf_counter() - start)
  step_s = statistics.median(times)
  return {
      'bench': 'train_step_peer', 'framework': f'torch {torch.__version__}',
      'threads': torch.get_num_threads(), 'batch_size': args.batch_size, 'seconds': args.seconds,
      'sample_rate': sample_rate, 'output_samples': length, 'input_samples': samples,
      'warmup_s': [round(s, 3) for s in warmup], 'step_times_s': [round(s, 3) for s in times],
      'median_step_s': round(step_s, 4),
      'audio_s_per_s': round(args.batch_size * args.seconds / step_s, 4),
      'peak_rss_mib': round(peak_rss_mib(), 1),
      'gen_params': sum(p.numel() for p in gen.parameters()),
      'disc_params': sum(p.numel() for p in disc.parameters()),
  }


def run_peer(args, sample_rate: int) -> dict:
  """Runs the reference step in a subprocess (--peer_python); returns its JSON or a note."""
  python = args.peer_python
  if not pathlib.Path(python).exists():
    return {'note': f'--peer: {python} does not exist; install torch and descript-audio-codec '
                    'into a separate venv (docs/performance.md) and pass --peer_python'}
  check = subprocess.run([python, '-c', 'import torch, dac'], capture_output=True, text=True)
  if check.returncode:
    return {'note': f'--peer: {python} cannot import torch and dac: '
                    f'{check.stderr.strip().splitlines()[-1] if check.stderr.strip() else "?"}'}
  cmd = [python, __file__, '--peer_worker', '--sample_rate', str(sample_rate),
         '--batch_size', str(args.batch_size), '--seconds', str(args.seconds),
         '--steps', str(args.steps), '--warmup', str(args.warmup)]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  if proc.returncode or not lines:
    return {'note': f'--peer: the reference run failed (exit {proc.returncode}): '
                    f'{proc.stderr.strip()[-2000:]}'}
  return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------ main


def _fmt(x, spec='.3g'):
  return 'n/a' if x is None else format(x, spec)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='experiments/dac_16khz.py')
  parser.add_argument('--batch_size', type=int, default=4)
  parser.add_argument('--seconds', type=float, default=0.5)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--kernels', default='auto', choices=('auto', 'xla', 'cpu'),
                      help='config.model.kernels (codec/compute.py)')
  parser.add_argument('--steps', type=int, default=5, help='timed steps (at least 5)')
  parser.add_argument('--warmup', type=int, default=1, help='untimed steps after compiling')
  parser.add_argument('--peer', action='store_true', help='also time the PyTorch reference')
  parser.add_argument('--peer_python', default=DEFAULT_PEER_PYTHON,
                      help='interpreter that imports torch and dac (descript-audio-codec)')
  parser.add_argument('--peer_worker', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--sample_rate', type=int, default=16000, help=argparse.SUPPRESS)
  parser.add_argument('--malloc_hugepages', action=argparse.BooleanOptionalAction, default=True,
                      help='as the trainer does (codec/hugepages.py), re-execute with glibc\'s '
                           'huge-page malloc tunable, which removes most of the page faults XLA '
                           'CPU takes on its fresh buffers every step; --no-malloc_hugepages: '
                           'plain malloc (the --peer run inherits the same environment)')
  args = parser.parse_args(argv)
  if args.steps < 5:
    parser.error('--steps must be at least 5 (the median of at least 5 steps is reported)')
  sys.path.insert(0, str(ROOT))
  from codec import compute  # pylint: disable=g-import-not-at-top  (imports no jax)
  from codec import hugepages  # pylint: disable=g-import-not-at-top  (imports no jax)
  if (compute.malloc_hugepages(args.malloc_hugepages, compute.launch_backend(os.environ)) and
      not args.peer_worker):
    hugepages.reexec_if_needed()

  if args.peer_worker:
    print(json.dumps(run_peer_worker(args)))
    return 0

  r = run_jax(args)
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  print(f'train_step  {args.config}  batch {args.batch_size} x {args.seconds} s  {args.dtype}  '
        f'({r["device"]}, {os.cpu_count()} cpus, {cpu_model()}; '
        f'GLIBC_TUNABLES={tunables or "(unset)"}; load average before: {r["loadavg"]})')
  print(f'  compile             {r["compile_s"]:.1f} s')
  print(f'  step (median of {len(r["step_times_s"])})  {r["median_step_s"]:.3f} s   '
        f'all: {r["step_times_s"]}  warmup: {r["warmup_s"]}')
  print(f'  throughput          {r["audio_s_per_s"]:.3f} audio-s/s')
  print(f'  peak RSS            {r["peak_rss_mib"]:.0f} MiB  '
        f'({r["page_faults_per_step"]:,} minor page faults per step)')
  flops = r['flops_per_step']
  per_audio_s = flops / (args.batch_size * args.seconds) / 1e9 if flops else None
  print(f'  FLOPs / step        {_fmt(flops and flops / 1e9, ".1f")} GFLOP (XLA cost analysis; '
        f'{_fmt(per_audio_s, ".0f")} GFLOP per audio-second)')
  print(f'  achieved            {_fmt(r["gflops_per_s"], ".1f")} GFLOP/s')
  print(f'  f32 matmul 2048^2   {r["matmul_gflops_per_s"]:.1f} GFLOP/s  '
        f'(step / matmul = {_fmt(r["frac_of_matmul"], ".2f")})')
  print(f'  of device peak      {_fmt(r["frac_of_device_peak"], ".1%")}')
  if r['nonfinite']:
    print('  WARNING: the last step reported non-finite losses or gradients')

  peer = None
  if args.peer:
    peer = run_peer(args, r['sample_rate'])
    if 'note' in peer:
      print(f'  peer                {peer["note"]}')
    else:
      print(f'  peer ({peer["framework"]}, {peer["threads"]} threads): '
            f'{peer["median_step_s"]:.3f} s/step, {peer["audio_s_per_s"]:.3f} audio-s/s, '
            f'peak RSS {peer["peak_rss_mib"]:.0f} MiB; all: {peer["step_times_s"]}')
      print(f'  speed vs peer       {r["audio_s_per_s"] / peer["audio_s_per_s"]:.2f}x')

  record = {'bench': 'train_step', 'config': args.config, 'batch_size': args.batch_size,
            'seconds': args.seconds, 'dtype': args.dtype, 'compile_s': r['compile_s'],
            'median_step_s': r['median_step_s'], 'audio_s_per_s': r['audio_s_per_s'],
            'peak_rss_mib': r['peak_rss_mib'], 'flops_per_step': flops,
            'gflops_per_s': r['gflops_per_s'], 'matmul_gflops_per_s': r['matmul_gflops_per_s'],
            'frac_of_device_peak': r['frac_of_device_peak'], 'device': r['device'],
            'peak_device_mib': r['peak_device_mib'], 'kernels': args.kernels,
            'nonfinite': r['nonfinite'],
            'page_faults_per_step': r['page_faults_per_step'],
            'glibc_tunables': tunables, 'loadavg_before': r['loadavg'],
            'peer': None}
  if peer is not None:
    record['peer'] = peer if 'note' in peer else {
        'median_step_s': peer['median_step_s'], 'audio_s_per_s': peer['audio_s_per_s'],
        'peak_rss_mib': peer['peak_rss_mib'], 'framework': peer['framework'],
        'speedup': round(r['audio_s_per_s'] / peer['audio_s_per_s'], 3)}
  print(json.dumps(record))
  return 0


if __name__ == '__main__':
  sys.exit(main())
