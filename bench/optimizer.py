"""Our fused AdamW (codec/optimizer.py) against optax's chain under a plain jit, at the model's shapes.

The contenders, each one jitted update of (params, gradients, state) with params and state donated
as the trainer donates them, on gradients drawn once (norm over the clip, so clipping applies):
- fused: `optimizer.AdamW.update` (clip, AdamW, exponential decay and the non-finite skip, one
  elementwise pass per array);
- optax: `optax.chain(clip_by_global_norm(clip), adamw(exponential_decay(...)))` + apply_updates;
- optax+finite: the same inside `optax.apply_if_finite`, the fused one's equivalent.
Runs alternate (fused, optax, optax+finite, fused, ...) so that a change of the machine's load hits
all alike; each run is the median of --calls calls. Prints one row per run pair and the medians.
Decide only from a quiet machine: the pairs' spread says how quiet it was.

  python bench/optimizer.py [--config experiments/dac_16khz.py] [--pairs 5] [--calls 5]
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position

from codec import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from codec import optimizer  # pylint: disable=g-import-not-at-top,wrong-import-position
from codec import summary  # pylint: disable=g-import-not-at-top,wrong-import-position


def optax_chain(optim, clip: float, if_finite: bool) -> optax.GradientTransformation:
  schedule = optax.exponential_decay(optim.learning_rate, transition_steps=1,
                                     decay_rate=optim.lr_decay)
  chain = optax.chain(optax.clip_by_global_norm(clip),
                      optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optimizer.EPS,
                                  weight_decay=optim.weight_decay))
  return optax.apply_if_finite(chain, max_consecutive_errors=100) if if_finite else chain


def contenders(optim, clip: float):
  """name -> (init(params) -> state, jitted update(params, grads, state) -> (params, state))."""
  fused = optimizer.AdamW.from_config(optim, clip)

  def fused_update(params, grads, state):
    params, state, _ = fused.update(grads, state, params)
    return params, state

  out = {'fused': (fused.init, jax.jit(fused_update, donate_argnums=(0, 2)))}
  for name, if_finite in (('optax', False), ('optax+finite', True)):
    tx = optax_chain(optim, clip, if_finite)

    def update(params, grads, state, tx=tx):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    out[name] = (tx.init, jax.jit(update, donate_argnums=(0, 2)))
  return out


def random_tree(shapes, seed: int, scale: float):
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([scale * jax.random.normal(k, s.shape, jnp.float32)
                            for k, s in zip(keys, leaves)])


def bench_net(name: str, shapes, optim, clip: float, pairs: int, calls: int) -> dict:
  params_shapes = shapes
  grads = random_tree(params_shapes, 1, 1.0)  # norm ~sqrt(entries), far over either clip
  runs = {}
  state = {}
  for label, (init, update) in contenders(optim, clip).items():
    params = random_tree(params_shapes, 0, 0.02)
    opt_state = init(params)
    params, opt_state = update(params, grads, opt_state)  # compile + warm up
    jax.block_until_ready(params)
    state[label] = (params, opt_state, update)
    runs[label] = []
  for _ in range(pairs):
    for label in runs:
      params, opt_state, update = state[label]
      times = []
      for _ in range(calls):
        start = time.perf_counter()
        params, opt_state = update(params, grads, opt_state)
        jax.block_until_ready(params)
        times.append(time.perf_counter() - start)
      state[label] = (params, opt_state, update)
      runs[label].append(statistics.median(times))
  count = sum(s.size for s in jax.tree.leaves(params_shapes))
  return {'net': name, 'parameters': count, 'runs_s': runs,
          'median_s': {k: statistics.median(v) for k, v in runs.items()}}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='experiments/dac_16khz.py')
  parser.add_argument('--pairs', type=int, default=5, help='alternating rounds')
  parser.add_argument('--calls', type=int, default=5, help='timed calls per run (median)')
  args = parser.parse_args(argv)
  config = config_lib.load(args.config)
  gen_shapes, disc_shapes = summary.param_shapes(config)
  device = jax.devices()[0]
  print(f'optimizer update  {args.config}  ({device.platform}:{device.device_kind}, '
        f'{os.cpu_count()} cpus; load average before: {os.getloadavg()[0]:.2f})')
  results = []
  for name, shapes, clip in (('generator', gen_shapes, config.optim.clip_generator),
                             ('discriminator', disc_shapes, config.optim.clip_discriminator)):
    r = bench_net(name, shapes, config.optim, clip, args.pairs, args.calls)
    results.append(r)
    labels = list(r['runs_s'])
    print(f'\n{name} ({r["parameters"]:,} parameters), ms per update, run by run:')
    print('  round  ' + '  '.join(f'{l:>13s}' for l in labels) + '   optax/fused')
    for i in range(args.pairs):
      row = [r['runs_s'][l][i] * 1e3 for l in labels]
      print(f'  {i + 1:5d}  ' + '  '.join(f'{v:13.1f}' for v in row) + f'   {row[1] / row[0]:10.2f}')
    med = [r['median_s'][l] * 1e3 for l in labels]
    print('  median ' + '  '.join(f'{v:13.1f}' for v in med) + f'   {med[1] / med[0]:10.2f}')
  print(json.dumps({'bench': 'optimizer', 'config': args.config, 'device': device.device_kind,
                    'results': results}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
