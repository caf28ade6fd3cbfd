"""Real-time factor of the chunked, jitted encode + decode (codec/inference.py) on this machine.

The 16 kHz reference model (experiments/dac_16khz.py, 74M generator parameters) with random
weights (speed does not depend on them) codes 1 s, 10 s and 60 s of speech-like audio with all 12
codebooks. Per length: the first call (which compiles the window shapes it meets), then the best
of --repeats timed calls of encode and decode (one past 10 s); RTF = audio seconds / processing
seconds (> 1: faster than real time). On a shared machine the wall clock counts other jobs' time
slices too, so the process's CPU seconds spread over all cores are reported as well (CPU-time
RTF: an idle-machine estimate). Also the peak resident memory. Ends with one JSON line.

The PyTorch reference does 10 s in 3.4 s + 6.0 s on this machine's 2 cores (1.07x real time,
shared/REFERENCE.md); the model costs 80 GFLOP per audio second and a float32 matrix product peaks
near 200 GFLOP/s here, so 2.5x is the ceiling.

  python bench/inference.py [--seconds 1,10,60] [--repeats 2] [--chunk_seconds 10]
"""
import argparse
import json
import os
import pathlib
import resource
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from codec import generator  # pylint: disable=g-import-not-at-top,wrong-import-position
from codec import inference  # pylint: disable=g-import-not-at-top,wrong-import-position
from codec import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

REFERENCE_RTF_10S = 1.07
GFLOP_PER_SECOND = 24.6 + 55.6  # encode + decode per audio second (PyTorch FLOP counter)


def speechlike(seconds: float, rate: int) -> np.ndarray:
  rng = np.random.default_rng(0)
  t = np.arange(int(seconds * rate)) / rate
  envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
  carrier = np.sin(2 * np.pi * (150 + 50 * np.sin(2 * np.pi * 0.7 * t)) * t)
  return (0.2 * envelope * (carrier + 0.3 * rng.standard_normal(len(t)))).astype(np.float32)


def random_params(gen: generator.Generator):
  """Parameters distributed like the generator's init, drawn in numpy: jitting `gen.init` takes
  longer than the whole benchmark. Kernels N(0, 0.02) with the weight-norm scale set to their norm
  (the effective kernel is the drawn one, as at init), Snake alphas 1, biases 0, codebooks N(0, 1).
  """
  audio = jax.ShapeDtypeStruct((1, gen.hop_length * 8), jnp.float32)
  shapes = jax.eval_shape(gen.init, jax.random.key(0), audio)['params']
  rng = np.random.default_rng(0)

  def fill(tree, transposed=False):
    if 'kernel' in tree:  # a weight-normalised conv: kernel, scale, bias
      kernel = (0.02 * rng.standard_normal(tree['kernel'].shape)).astype(np.float32)
      keep = 1 if transposed else kernel.ndim - 1  # WNConvTranspose1d keeps input channels
      axes = tuple(a for a in range(kernel.ndim) if a != keep)
      return {'kernel': kernel, 'scale': np.sqrt(np.sum(kernel**2, axis=axes)),
              'bias': np.zeros(tree['bias'].shape, np.float32)}
    out = {}
    for name, value in tree.items():
      if name == 'alpha':
        out[name] = np.ones(value.shape, np.float32)
      elif name == 'codebook':
        out[name] = rng.standard_normal(value.shape).astype(np.float32)
      else:
        out[name] = fill(value, name.startswith('WNConvTranspose1d'))
    return out

  return fill(shapes)


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(fn, *args):
  """(fn(*args), wall seconds, CPU seconds of this process over all its threads)."""
  wall, cpu = time.perf_counter(), time.process_time()
  out = fn(*args)
  return out, time.perf_counter() - wall, time.process_time() - cpu


def best(fn, args, repeats: int) -> tuple[float, float]:
  """(wall, CPU) seconds of the fastest of `repeats` calls."""
  runs = [timed(fn, *args)[1:] for _ in range(repeats)]
  return min(runs)


def measure(codec: inference.Codec, seconds: float, repeats: int) -> dict:
  audio = speechlike(seconds, codec.sample_rate)
  codes, first_encode, _ = timed(codec.encode, audio)
  _, first_decode, _ = timed(codec.decode, codes, len(audio))
  encode_s, encode_cpu = best(codec.encode, (audio,), repeats)
  decode_s, decode_cpu = best(codec.decode, (codes, len(audio)), repeats)
  total = encode_s + decode_s
  # On a machine shared with other jobs the wall clock includes their time slices; CPU seconds
  # spread over every core estimate what an idle machine would take (optimistic when the program
  # cannot keep every core busy).
  cpu_total = (encode_cpu + decode_cpu) / os.cpu_count()
  return {
      'seconds': seconds, 'encode_s': round(encode_s, 3), 'decode_s': round(decode_s, 3),
      'rtf': round(seconds / total, 3), 'gflop_per_s': round(GFLOP_PER_SECOND * seconds / total, 1),
      'cpu_rtf': round(seconds / cpu_total, 3),
      'first_call_s': round(first_encode + first_decode, 2),
      'compile_s': round(max(first_encode + first_decode - total, 0.0), 2),
      'peak_rss_mb': round(peak_rss_mb()),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--seconds', default='1,10,60', help='comma-separated audio lengths')
  parser.add_argument('--repeats', type=int, default=2, help='timed calls per length (best kept)')
  parser.add_argument('--chunk_seconds', type=float, default=inference.DEFAULT_CHUNK_SECONDS)
  parser.add_argument('--config', default='experiments/dac_16khz.py',
                      help='another model (e.g. experiments/dac_16khz.py:tiny to try the script)')
  args = parser.parse_args()

  config = config_lib.load(str(pathlib.Path(__file__).resolve().parent.parent / args.config))
  start = time.perf_counter()
  gen = generator.Generator.from_config(config.model)
  params = random_params(gen)
  init_s = time.perf_counter() - start
  codec = inference.Codec(config, params, chunk_seconds=args.chunk_seconds)
  print(f'{args.config}: {config.model.sample_rate} Hz, random weights ({init_s:.1f} s to initialise); '
        f'{jax.devices()[0].platform} x {jax.device_count()}, {os.cpu_count()} CPU cores; '
        f'windows of {codec.chunk_frames} frames + {codec.encoder_context}/{codec.decoder_context} '
        'frames of context (encode/decode)', flush=True)

  load = os.getloadavg()[0]
  print(f'load average before timing: {load:.2f} on {os.cpu_count()} cores'
        + (' (the machine is busy: wall-clock RTF understates an idle machine)' if load > 0.5
           else ''), flush=True)
  rows = []
  print(f'{"audio":>6}  {"encode s":>8}  {"decode s":>8}  {"RTF":>6}  {"GFLOP/s":>7}  '
        f'{"CPU-time RTF":>12}  {"1st call s":>10}  {"compile s":>9}  {"peak RSS MB":>11}',
        flush=True)
  for seconds in [float(s) for s in args.seconds.split(',')]:
    # One timed call past 10 s: long inputs are many identical windows, and it takes minutes.
    row = measure(codec, seconds, args.repeats if seconds <= 10 else 1)
    rows.append(row)
    print(f'{seconds:>5g}s  {row["encode_s"]:>8.2f}  {row["decode_s"]:>8.2f}  {row["rtf"]:>5.2f}x  '
          f'{row["gflop_per_s"]:>7.0f}  {row["cpu_rtf"]:>11.2f}x  {row["first_call_s"]:>10.1f}  '
          f'{row["compile_s"]:>9.1f}  {row["peak_rss_mb"]:>11,}', flush=True)
  result = {'bench': 'inference', 'config': args.config, 'device': jax.devices()[0].platform,
            'cpus': os.cpu_count(), 'load_average': round(load, 2),
            'chunk_seconds': args.chunk_seconds, 'reference_rtf_10s': REFERENCE_RTF_10S}
  for row in rows:
    tag = f'{row["seconds"]:g}s'
    result[f'rtf_{tag}'] = row['rtf']
    result[f'cpu_rtf_{tag}'] = row['cpu_rtf']
    result[f'encode_s_{tag}'] = row['encode_s']
    result[f'decode_s_{tag}'] = row['decode_s']
    result[f'compile_s_{tag}'] = row['compile_s']
  result['peak_rss_mb'] = round(peak_rss_mb())
  print(json.dumps(result))


if __name__ == '__main__':
  main()
