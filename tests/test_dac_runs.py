"""import-dac / export-dac (codec/dac_runs.py) without torch: the .pth reading and writing are
replaced by the fixture's state dict (tests/fixtures/dac_reference.npz); the rest is the CLI's."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codec import __main__ as cli
from codec import dac_runs
from codec import dac_weights
from codec import inference
from codec import train

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'dac_reference.npz'


@pytest.fixture(scope='module')
def ref():
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def test_import_then_export_dac(ref, tmp_path, monkeypatch):
  state = {k[len('g16/state/'):]: v for k, v in ref.items() if k.startswith('g16/state/')}
  kwargs = json.loads(str(ref['g16/kwargs']))
  monkeypatch.setattr(dac_weights, 'read_pth', lambda path: (state, kwargs))
  written = {}
  monkeypatch.setattr(dac_weights, 'write_pth',
                      lambda path, s, k: written.update(path=path, state=s, kwargs=k))
  run = tmp_path / 'dac_run'
  cli.main(['import-dac', 'weights.pth', '-o', str(run)])

  codec = inference.load(run)
  assert codec.step == 0 and codec.sample_rate == 16000
  out = codec.gen.apply({'params': codec.params}, jnp.asarray(ref['g16/audio']))
  np.testing.assert_array_equal(out.codes, ref['g16/codes'])

  cli.main(['export-dac', '--checkpoint', str(run), '-o', str(tmp_path / 'back.pth')])
  assert written['kwargs'] == {**kwargs, 'latent_dim': 64, 'quantizer_dropout': 0.5}
  assert written['state'].keys() == state.keys()
  for k, v in state.items():
    np.testing.assert_array_equal(written['state'][k], v, err_msg=k)


def test_import_of_another_architecture_names_the_file(ref, tmp_path, monkeypatch, capsys):
  state = {k[len('g16/state/'):]: v for k, v in ref.items() if k.startswith('g16/state/')}
  kwargs = {**json.loads(str(ref['g16/kwargs'])), 'n_codebooks': 4}
  monkeypatch.setattr(dac_weights, 'read_pth', lambda path: (state, kwargs))
  with pytest.raises(SystemExit):
    cli.main(['import-dac', 'weights.pth', '-o', str(tmp_path / 'x')])
  assert 'weights.pth: no quantizer.quantizers.3.in_proj' in capsys.readouterr().err


def test_init_from_reads_pth_and_run_dirs_and_refuses_another_architecture(ref, tmp_path,
                                                                          monkeypatch):
  state = {k[len('g16/state/'):]: v for k, v in ref.items() if k.startswith('g16/state/')}
  kwargs = json.loads(str(ref['g16/kwargs']))
  monkeypatch.setattr(dac_weights, 'read_pth', lambda path: (state, kwargs))
  pth = tmp_path / 'weights.pth'
  pth.write_bytes(b'')
  run = tmp_path / 'imported'
  config = dac_runs.import_dac(str(pth), str(run))
  expected = dac_weights.state_to_params(state, dac_weights.generator_entries(config.model))
  for source in (pth, run):
    config.init_from = str(source)
    gen_params, disc_params = dac_runs.initial_weights(config)
    assert disc_params is None  # DAC's file and the imported run hold no discriminators
    jax.tree.map(np.testing.assert_array_equal, gen_params, expected)
  config.model.n_codebooks = 4
  with pytest.raises(ValueError, match=r'model\.n_codebooks: this run has 4, the source 3'):
    dac_runs.initial_weights(config)


def test_discriminator_warmup_holds_the_generator_update_back():
  new, old = {'w': jnp.ones(3)}, {'w': jnp.zeros(3)}
  for step, expected in ((0, 0.0), (1, 0.0), (2, 1.0)):
    held = train.hold_during_warmup(jnp.asarray(step), 2, new, old)
    np.testing.assert_array_equal(held['w'], np.full(3, expected))
  assert train.hold_during_warmup(jnp.asarray(0), 0, new, old) is new
