"""float32 (and bfloat16) matrix-product GFLOP/s on this machine through XLA, the ceiling for the codec.

Every conv of the codec is (or lowers to) a matrix product, so these numbers bound what a training
step can reach. Square 2048^2 is the reference point bench/train_step.py also measures; the other
shapes are the codec's own (M = batch x positions, K = taps x channels in, N = channels out).

  python bench/matmul_peak.py [--repeats 10]
"""
import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

SHAPES = [  # (M, K, N, what)
    (2048, 2048, 2048, 'square 2048'),
    (4096, 4096, 4096, 'square 4096'),
    (800, 5376, 768, 'decoder res conv k7, 768 ch, 200 frames x 4 (im2col)'),
    (4000, 2688, 384, 'decoder res conv k7, 384 ch, 1000 frames x 4 (im2col)'),
    (16000, 1344, 192, 'decoder res conv k7, 192 ch, 4000 frames x 4 (im2col)'),
    (32000, 672, 96, 'decoder res conv k7, 96 ch, 8000 frames x 4 (im2col)'),
    (32000, 96, 96, 'decoder 1x1 conv, 96 ch'),
    (800, 5120, 1024, 'period disc 1024->1024 k5 (p=2, batch 8)'),
    (16384, 864, 32, 'band disc 32->32 (3,9) (im2col)'),
]


def gflops(m: int, k: int, n: int, dtype, repeats: int) -> float:
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * m * k * n / statistics.median(times) / 1e9


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--repeats', type=int, default=10)
  args = parser.parse_args()
  print(f'device: {jax.devices()[0].platform}:{jax.devices()[0].device_kind}')
  rows = []
  for m, k, n, what in SHAPES:
    f32 = gflops(m, k, n, jnp.float32, args.repeats)
    bf16 = gflops(m, k, n, jnp.bfloat16, args.repeats)
    rows.append({'m': m, 'k': k, 'n': n, 'what': what, 'f32_gflops': round(f32, 1),
                 'bf16_gflops': round(bf16, 1)})
    print(f'{m:6d} x {k:5d} x {n:5d}  f32 {f32:7.1f}  bf16 {bf16:7.1f} GFLOP/s   {what}')
  print(json.dumps({'bench': 'matmul_peak', 'rows': rows}))


if __name__ == '__main__':
  main()
