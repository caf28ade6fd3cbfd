"""Records the spread of PyTorch DAC's initial weights, layer by layer, for tests/test_dac_init.py.

Runs on the CPU with torch and dac installed (`../shared/REFERENCE.md` says how):

  python tools/make_dac_init_stats.py  # -> tests/fixtures/dac_init_stats.json

What is recorded is what `dac.DAC(**kwargs)` and DAC's `Discriminator` hold right after
construction, the nets DAC's trainer starts from: the 16 kHz generator at the narrow widths of
tools/make_dac_fixtures.py ('g16') and its narrowed discriminators, over SEEDS seeds. Per tensor of
the state dict (weight-norm directions `weight_v`, whose value is the effective weight at init,
biases, Snake alphas, codebooks), pooled over the seeds: the number of entries, their mean, mean
square and largest magnitude. Those say which distribution each tensor starts from (zero, uniform
of which bound, normal of which scale) without storing the tensors; with the torch and dac versions.
"""
import argparse
import json
import pathlib

import numpy as np
import torch

import dac
import make_dac_fixtures

SEEDS = 8
NAME = 'g16'


def _accumulate(stats: dict, module: torch.nn.Module) -> None:
  for key, value in module.state_dict().items():
    if key.endswith('weight_g'):  # ||weight_v|| by construction: nothing of its own to check
      continue
    x = value.detach().double().numpy().ravel()
    s = stats.setdefault(key, {'n': 0, 'sum': 0.0, 'sum_sq': 0.0, 'max_abs': 0.0})
    s['n'] += x.size
    s['sum'] += float(np.sum(x))
    s['sum_sq'] += float(np.sum(x * x))
    s['max_abs'] = max(s['max_abs'], float(np.max(np.abs(x))))


def _summary(stats: dict) -> dict:
  return {k: {'n': s['n'], 'mean': s['sum'] / s['n'], 'mean_square': s['sum_sq'] / s['n'],
              'max_abs': s['max_abs']} for k, s in sorted(stats.items())}


def init_stats() -> dict:
  """{'versions', 'seeds', 'generator': {kwargs, tensors}, 'discriminator': {config, tensors}}."""
  kwargs = make_dac_fixtures.GENERATORS[NAME]
  gen, disc = {}, {}
  for seed in range(SEEDS):
    torch.manual_seed(seed)
    _accumulate(gen, dac.DAC(**kwargs))
    _accumulate(disc, make_dac_fixtures._narrow_discriminator())  # pylint: disable=protected-access
  return {'versions': {'torch': torch.__version__, 'dac': dac.__version__}, 'seeds': SEEDS,
          'generator': {'kwargs': kwargs, 'tensors': _summary(gen)},
          'discriminator': {'config': make_dac_fixtures.DISCRIMINATOR, 'tensors': _summary(disc)}}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('-o', '--output', default=str(
      pathlib.Path(__file__).resolve().parents[1] / 'tests' / 'fixtures' / 'dac_init_stats.json'))
  args = parser.parse_args()
  stats = init_stats()
  path = pathlib.Path(args.output)
  path.write_text(json.dumps(stats, indent=1) + '\n')
  print(f'{path}: {path.stat().st_size / 1e3:.0f} kB, {stats["versions"]}')


if __name__ == '__main__':
  main()
