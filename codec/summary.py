"""`python -m codec summary`: parameter table, counts, hop, frame rate and bitrate of a config."""
import collections
import math

import jax
import jax.numpy as jnp
import ml_collections

from codec import discriminators
from codec import generator


def param_shapes(config: ml_collections.ConfigDict):
  """Abstract (shape-only) parameters of both nets: nothing is allocated or computed."""
  gen = generator.Generator.from_config(config.model)
  disc = discriminators.Discriminators.from_config(config.discriminator)
  audio = jax.ShapeDtypeStruct((1, gen.hop_length * 8), jnp.float32)
  long_audio = jax.ShapeDtypeStruct((1, max(config.discriminator.fft_sizes, default=0) * 4), jnp.float32)
  gen_params = jax.eval_shape(gen.init, jax.random.key(0), audio)['params']
  disc_params = jax.eval_shape(disc.init, jax.random.key(0), long_audio)['params']
  return gen_params, disc_params


def count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def module_table(tree, depth: int = 2) -> list[tuple[str, int]]:
  """Parameter count per module path, truncated to `depth` levels."""
  totals = collections.OrderedDict()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = '/'.join(str(getattr(k, 'key', k)) for k in path[:depth])
    totals[name] = totals.get(name, 0) + math.prod(leaf.shape)
  return list(totals.items())


def bitrate(model: ml_collections.ConfigDict) -> tuple[int, float, float]:
  """(hop length, frames per second, bits per second) at the full number of codebooks."""
  hop = math.prod(model.encoder_rates)
  frame_rate = model.sample_rate / hop
  return hop, frame_rate, frame_rate * model.n_codebooks * math.log2(model.codebook_size)


def summarize(config: ml_collections.ConfigDict) -> str:
  gen_params, disc_params = param_shapes(config)
  rows = [('generator/' + k, n) for k, n in module_table(gen_params)]
  rows += [('discriminator/' + k, n) for k, n in module_table(disc_params, depth=1)]
  width = max(len(k) for k, _ in rows)
  lines = [f'{"module":<{width}}  {"parameters":>12}', '-' * (width + 14)]
  lines += [f'{k:<{width}}  {n:>12,}' for k, n in rows]
  hop, frame_rate, bps = bitrate(config.model)
  lines += [
      '',
      f'generator parameters: {count(gen_params)}',
      f'discriminator parameters: {count(disc_params)}',
      f'sample rate: {config.model.sample_rate} Hz',
      f'hop length: {hop}',
      f'frame rate: {frame_rate:g} Hz',
      f'bitrate: {bps / 1000:g} kbps ({config.model.n_codebooks} codebooks x '
      f'{math.log2(config.model.codebook_size):g} bits)',
  ]
  return '\n'.join(lines)
