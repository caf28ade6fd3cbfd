"""PyTorch DAC state dicts <-> our Flax parameters, for the generator and the discriminators.

A state dict here is a flat `{name: np.ndarray}` in PyTorch's layout (torch is needed only to read
or write a `.pth`: `read_pth`, `write_pth`, with the `[torch]` extra). The mapping is built from
the layer sizes of a config, so it is the same in both directions:
- conv weights: torch [C_out, C_in, *K] <-> ours [*K, C_in, C_out]; transposed convs torch
  [C_in, C_out, K] <-> ours [K, C_in, C_out] (same tap order: no flip);
- weight norm: g of shape [C, 1, ...] <-> our `scale` [C]; both layouts are read (`weight_g` /
  `weight_v`, and `parametrizations.weight.original0` / `original1`), `weight_g`/`weight_v` written;
- Snake alpha [1, C, 1] <-> [C]; codebooks [K, D] as they are.
"""
import dataclasses
import pathlib

import ml_collections
import numpy as np

TORCH_EXTRA = "pip install -e '.[torch]'"


@dataclasses.dataclass(frozen=True)
class Entry:
  torch_name: str  # module path in the state dict, without the parameter suffix
  flax_path: tuple[str, ...]  # module path in our params
  kind: str  # 'conv', 'tconv' (transposed conv), 'snake', 'codebook'


def _residual_units(torch_prefix: str, flax_prefix: tuple, first_unit: int, first_block: int):
  """The 3 residual units at torch blocks first_block.. of torch_prefix, ours ResidualUnit_n.."""
  entries = []
  for j in range(3):
    t = f'{torch_prefix}.block.{first_block + j}.block'
    f = (*flax_prefix, f'ResidualUnit_{first_unit + j}')
    entries += [Entry(f'{t}.0', (*f, 'Snake_0'), 'snake'), Entry(f'{t}.1', (*f, 'WNConv_0'), 'conv'),
                Entry(f'{t}.2', (*f, 'Snake_1'), 'snake'), Entry(f'{t}.3', (*f, 'WNConv_1'), 'conv')]
  return entries


def generator_entries(model: ml_collections.ConfigDict) -> list[Entry]:
  """The generator's layers, DAC's names against ours, for config.model."""
  n_enc, n_dec = len(model.encoder_rates), len(model.decoder_rates)
  enc, dec = ('encoder',), ('decoder',)
  entries = [Entry('encoder.block.0', (*enc, 'WNConv_0'), 'conv')]
  for i in range(n_enc):
    t = f'encoder.block.{i + 1}'
    entries += _residual_units(t, enc, 3 * i, 0)
    entries += [Entry(f'{t}.block.3', (*enc, f'Snake_{i}'), 'snake'),
                Entry(f'{t}.block.4', (*enc, f'WNConv_{i + 1}'), 'conv')]
  entries += [Entry(f'encoder.block.{n_enc + 1}', (*enc, f'Snake_{n_enc}'), 'snake'),
              Entry(f'encoder.block.{n_enc + 2}', (*enc, f'WNConv_{n_enc + 1}'), 'conv')]
  for q in range(model.n_codebooks):
    t, f = f'quantizer.quantizers.{q}', ('quantizer', f'levels_{q}')
    entries += [Entry(f'{t}.in_proj', (*f, 'in_proj'), 'conv'),
                Entry(f'{t}.out_proj', (*f, 'out_proj'), 'conv'),
                Entry(f'{t}.codebook', f, 'codebook')]
  entries.append(Entry('decoder.model.0', (*dec, 'WNConv_0'), 'conv'))
  for i in range(n_dec):
    t = f'decoder.model.{i + 1}'
    entries += [Entry(f'{t}.block.0', (*dec, f'Snake_{i}'), 'snake'),
                Entry(f'{t}.block.1', (*dec, f'WNConvTranspose1d_{i}'), 'tconv')]
    entries += _residual_units(t, dec, 3 * i, 2)
  entries += [Entry(f'decoder.model.{n_dec + 1}', (*dec, f'Snake_{n_dec}'), 'snake'),
              Entry(f'decoder.model.{n_dec + 2}', (*dec, 'WNConv_1'), 'conv')]
  return entries


def discriminator_entries(disc: ml_collections.ConfigDict) -> list[Entry]:
  """The discriminators' layers (DAC's `Discriminator(rates=[])`) against ours."""
  entries = []
  n_layers = len(disc.period_channels)
  for d in range(len(disc.periods)):
    f = (f'PeriodDiscriminator_{d}',)
    entries += [Entry(f'discriminators.{d}.convs.{i}.0', (*f, f'WNConv_{i}'), 'conv')
                for i in range(n_layers)]
    entries.append(Entry(f'discriminators.{d}.conv_post', (*f, f'WNConv_{n_layers}'), 'conv'))
  for b in range(len(disc.fft_sizes)):
    t, f = f'discriminators.{len(disc.periods) + b}', (f'BandDiscriminator_{b}',)
    for band in range(len(disc.bands)):
      entries += [Entry(f'{t}.band_convs.{band}.{i}.0', (*f, f'WNConv_{5 * band + i}'), 'conv')
                  for i in range(5)]
    entries.append(Entry(f'{t}.conv_post', (*f, f'WNConv_{5 * len(disc.bands)}'), 'conv'))
  return entries


def _weight_norm_pair(state: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
  """(g, v) of a weight-normalised layer, in either of PyTorch's layouts."""
  for g_key, v_key in (('weight_g', 'weight_v'),
                       ('parametrizations.weight.original0', 'parametrizations.weight.original1')):
    if f'{name}.{g_key}' in state:
      return state[f'{name}.{g_key}'], state[f'{name}.{v_key}']
  raise KeyError(f'{name}.weight_g (or {name}.parametrizations.weight.original0)')


def _to_flax(state: dict, entry: Entry) -> dict:
  name = entry.torch_name
  if entry.kind == 'snake':
    return {'alpha': state[f'{name}.alpha'].reshape(-1)}
  if entry.kind == 'codebook':
    return {'codebook': state[f'{name}.weight']}
  g, v = _weight_norm_pair(state, name)
  if entry.kind == 'tconv':
    kernel = v.transpose(2, 0, 1)  # [C_in, C_out, K] -> [K, C_in, C_out]
  else:
    kernel = v.transpose(*range(2, v.ndim), 1, 0)  # [C_out, C_in, *K] -> [*K, C_in, C_out]
  return {'kernel': kernel, 'scale': g.reshape(-1), 'bias': state[f'{name}.bias']}


def _to_torch(params: dict, entry: Entry) -> dict:
  name = entry.torch_name
  if entry.kind == 'snake':
    return {f'{name}.alpha': params['alpha'].reshape(1, -1, 1)}
  if entry.kind == 'codebook':
    return {f'{name}.weight': params['codebook']}
  kernel = params['kernel']
  if entry.kind == 'tconv':
    v = kernel.transpose(1, 2, 0)
  else:
    v = kernel.transpose(kernel.ndim - 1, kernel.ndim - 2, *range(kernel.ndim - 2))
  g = params['scale'].reshape(-1, *([1] * (v.ndim - 1)))
  return {f'{name}.weight_g': g, f'{name}.weight_v': v, f'{name}.bias': params['bias']}


def _get(tree: dict, path: tuple) -> dict:
  for key in path:
    tree = tree[key]
  return tree


def state_to_params(state: dict, entries: list[Entry], source: str = 'state dict') -> dict:
  """A PyTorch state dict {name: array} -> our params tree (float32 numpy arrays).

  Raises ValueError naming the first missing or unused name of `source`."""
  state = {k: np.asarray(v, np.float32) for k, v in state.items()}
  params, used = {}, set()
  for entry in entries:
    try:
      leaves = _to_flax(state, entry)
    except KeyError as e:
      raise ValueError(f'{source}: no {e.args[0]}: the file does not hold a model of this '
                       'configuration (or is not a DAC checkpoint)') from None
    node = params
    for key in entry.flax_path:
      node = node.setdefault(key, {})
    node.update(leaves)
    used.update(k for k in state if k.startswith(entry.torch_name + '.'))
  unused = sorted(set(state) - used)
  if unused:
    raise ValueError(f'{source}: {unused[0]} (and {len(unused) - 1} more) match no layer of this '
                     'configuration: the file holds another architecture')
  return params


def params_to_state(params: dict, entries: list[Entry]) -> dict:
  """Our params tree -> a PyTorch state dict {name: float32 numpy array} (weight_g/weight_v)."""
  state = {}
  for entry in entries:
    node = _get(params, entry.flax_path)
    state.update(_to_torch({k: np.asarray(v, np.float32) for k, v in node.items()
                            if not isinstance(v, dict)}, entry))
  return state


# -------------------------------------------------------------------------------------------------
# DAC's constructor arguments (metadata.kwargs) <-> config.model.


def model_config_from_kwargs(kwargs: dict, base: ml_collections.ConfigDict
                             ) -> ml_collections.ConfigDict:
  """config.model for `dac.DAC(**kwargs)`: DAC's defaults where kwargs leaves a field out."""
  model = ml_collections.ConfigDict(base.to_dict())
  defaults = dict(encoder_dim=64, encoder_rates=[2, 4, 8, 8], latent_dim=None, decoder_dim=1536,
                  decoder_rates=[8, 8, 4, 2], n_codebooks=9, codebook_size=1024, codebook_dim=8,
                  quantizer_dropout=False, sample_rate=44100)
  unknown = sorted(set(kwargs) - set(defaults))
  if unknown:
    raise ValueError(f'metadata.kwargs: unknown DAC argument {unknown[0]!r}')
  k = {**defaults, **kwargs}
  if not isinstance(k['codebook_dim'], int):
    raise ValueError('metadata.kwargs: codebook_dim must be one integer (a list per level is not '
                     'supported)')
  latent = k['latent_dim'] or k['encoder_dim'] * 2 ** len(k['encoder_rates'])
  model.update(sample_rate=int(k['sample_rate']), encoder_dim=int(k['encoder_dim']),
               encoder_rates=tuple(int(r) for r in k['encoder_rates']), latent_dim=int(latent),
               decoder_dim=int(k['decoder_dim']),
               decoder_rates=tuple(int(r) for r in k['decoder_rates']),
               n_codebooks=int(k['n_codebooks']), codebook_size=int(k['codebook_size']),
               codebook_dim=int(k['codebook_dim']),
               quantizer_dropout=float(k['quantizer_dropout']))
  return model


def kwargs_from_model_config(model: ml_collections.ConfigDict) -> dict:
  """`dac.DAC` constructor arguments for config.model."""
  return dict(encoder_dim=model.encoder_dim, encoder_rates=list(model.encoder_rates),
              latent_dim=model.latent_dim, decoder_dim=model.decoder_dim,
              decoder_rates=list(model.decoder_rates), n_codebooks=model.n_codebooks,
              codebook_size=model.codebook_size, codebook_dim=model.codebook_dim,
              quantizer_dropout=model.quantizer_dropout, sample_rate=model.sample_rate)


# -------------------------------------------------------------------------------------------------
# .pth files (torch needed).


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(f'reading or writing a PyTorch .pth needs torch: {TORCH_EXTRA} '
                      '(the README says how to get the CPU build)') from None
  return torch


def read_pth(path: str | pathlib.Path) -> tuple[dict, dict]:
  """A `dac.DAC.save` file -> (state dict {name: float32 array}, metadata.kwargs)."""
  torch = _torch()
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f'{path}: no such file')
  try:
    blob = torch.load(path, map_location='cpu', weights_only=False)
  except RuntimeError as error:  # e.g. a torch.package archive: DAC.save's default package=True
    raise ValueError(f'{path}: not a state-dict checkpoint ({str(error).splitlines()[0]}); save '
                     'it with dac.DAC.save(path, package=False), as the released weights are')
  if not isinstance(blob, dict) or 'state_dict' not in blob:
    raise ValueError(f'{path}: not a DAC checkpoint (expected {{"state_dict": ..., "metadata": '
                     '{"kwargs": ...}}, as dac.DAC.save writes)')
  kwargs = blob.get('metadata', {}).get('kwargs', {})  # DAC's own default config without one
  state = {k: v.detach().float().numpy() for k, v in blob['state_dict'].items()}
  return state, dict(kwargs)


def write_pth(path: str | pathlib.Path, state: dict, kwargs: dict) -> None:
  """Writes what `dac.DAC.load` reads: {'state_dict', 'metadata': {'kwargs'}}."""
  torch = _torch()
  # np.array: a writable copy (torch warns on read-only buffers, as the restored params are).
  tensors = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()}
  torch.save({'state_dict': tensors, 'metadata': {'kwargs': kwargs}}, path)
