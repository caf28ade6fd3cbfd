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
from conftest import tiny_config

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'dac_reference.npz'


@pytest.fixture(scope='module')
def ref():
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def _tone() -> np.ndarray:
  """One second at 16 kHz of a 220 Hz tone in noise: f32[T]."""
  rng = np.random.default_rng(0)
  t = np.arange(16000) / 16000
  return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


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


def test_full_16khz_model_saved_by_dac_encodes_and_reconstructs_as_dac(tmp_path):
  """Live (where torch and dac import; CI has neither): DAC's 16 kHz model at full width (74 M
  parameters, too large for a committed fixture), saved by DAC's own `save`, through `import-dac`.
  `python -m codec encode` gives DAC's codes and `reconstruct` the audio DAC decodes from them
  (16-bit WAV: within one step of 2**-15, plus 1e-5 of the peak). A deliberate difference: an
  input shorter than one chunk is padded to a bucket length (one compile serves many lengths),
  so its last encoder_halo_frames codes and decoder_halo_frames frames of audio, which see that
  padding, are not DAC's one-pass result (README, "Deliberate differences"). `export-dac` of the
  imported run gives back a file `dac.DAC.load` reads, with DAC's tensors."""
  torch = pytest.importorskip('torch')
  dac = pytest.importorskip('dac')
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  from codec import codefile  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = dac.DAC(encoder_dim=64, encoder_rates=[2, 4, 5, 8], decoder_dim=1536,
                  decoder_rates=[8, 5, 4, 2], n_codebooks=12, codebook_size=1024, codebook_dim=8,
                  sample_rate=16000).eval()
  pth = tmp_path / 'weights_16khz.pth'
  model.save(str(pth), package=False)
  audio = _tone()
  wav = tmp_path / 'clip.wav'
  sf.write(wav, audio, 16000, subtype='FLOAT')
  with torch.no_grad():
    _, theirs, *_ = model.encode(torch.from_numpy(audio)[None, None])

  run = tmp_path / 'run'
  cli.main(['import-dac', str(pth), '-o', str(run)])
  config = inference.load_run_config(run)
  cli.main(['encode', str(wav), '-o', str(tmp_path / 'codes'), '--checkpoint', str(run),
            '--no_normalize'])
  ours, _ = codefile.read(tmp_path / 'codes' / 'clip.codes')
  ours = np.asarray(ours, np.int64).reshape(theirs.shape[1:])
  interior = ours.shape[1] - inference.encoder_halo_frames(config.model)
  np.testing.assert_array_equal(ours[:, :interior], theirs[0, :, :interior].numpy())

  cli.main(['reconstruct', str(wav), '-o', str(tmp_path / 'out'), '--checkpoint', str(run),
            '--no_normalize'])
  out, rate = sf.read(tmp_path / 'out' / 'clip.wav', dtype='float32')
  with torch.no_grad():
    decoded = model.decode(model.quantizer.from_codes(torch.from_numpy(ours)[None])[0])[0, 0]
  decoded = decoded.numpy()
  assert rate == 16000 and out.shape == audio.shape  # DAC's is 8 samples short (odd stride)
  n = (ours.shape[1] - inference.decoder_halo_frames(config.model)) * 320
  err = np.max(np.abs(out[:n] - decoded[:n]))
  assert err <= 1 / 32768 + 1e-5 * np.max(np.abs(decoded)), err

  # And back: export-dac writes what dac.DAC.load reads, with DAC's own tensors.
  cli.main(['export-dac', '--checkpoint', str(run), '-o', str(tmp_path / 'back.pth')])
  back = dac.DAC.load(str(tmp_path / 'back.pth')).eval()
  original = model.state_dict()
  assert back.state_dict().keys() == original.keys()
  for k, v in back.state_dict().items():
    np.testing.assert_array_equal(v.numpy(), original[k].numpy(), err_msg=k)


def test_discriminator_saved_by_dacs_trainer_imports_and_computes_as_dac(ref, tmp_path):
  """Live (torch and dac): DAC's trainer saves each net with `save_to_folder` (its conf/base.yml
  discriminator: periods 2, 3, 5, 7, 11, three STFT sizes, no MSD); `import-dac --discriminator`
  reads it, and the imported discriminators give DAC's logits and feature maps within 1e-5 of
  each map's peak."""
  torch = pytest.importorskip('torch')
  dac = pytest.importorskip('dac')
  from dac.model.discriminator import Discriminator  # pylint: disable=g-import-not-at-top
  from codec import checkpoint  # pylint: disable=g-import-not-at-top
  from codec import discriminators  # pylint: disable=g-import-not-at-top
  from test_dac_parity import _close, _dac_layout  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  dac.DAC(**json.loads(str(ref['g16/kwargs']))).save_to_folder(tmp_path / 'latest', package=False)
  disc = Discriminator(sample_rate=16000).eval()
  disc.save_to_folder(tmp_path / 'latest', package=False)
  run = tmp_path / 'run'
  cli.main(['import-dac', str(tmp_path / 'latest' / 'dac' / 'weights.pth'), '-o', str(run),
            '--discriminator', str(tmp_path / 'latest' / 'discriminator' / 'weights.pth')])

  audio = ref['loss/real']
  with torch.no_grad():
    theirs = disc(torch.from_numpy(audio)[:, None])
  config = inference.load_run_config(run)
  _, disc_params, _ = checkpoint.restore_params(run)
  ours = discriminators.Discriminators.from_config(config.discriminator).apply(
      {'params': disc_params}, jnp.asarray(audio))
  n_periods = len(config.discriminator.periods)
  assert len(ours) == len(theirs) == 8
  for i, ((logits, features), maps) in enumerate(zip(ours, theirs)):
    assert len(features) + 1 == len(maps)
    for j, m in enumerate([*features, logits]):
      _close(_dac_layout(m, i < n_periods), maps[j].numpy(), what=f'discriminator {i} map {j}')


def test_a_run_trained_here_exports_to_dac_and_computes_there_as_here(tiny_corpus, tmp_path):
  """Live (torch and dac): a run of our loop (the tiny 16 kHz config, a few steps, so its weights
  are trained ones, not an initialisation), through `export-dac`, is loaded by `dac.DAC.load`,
  and DAC's encode and decode compute from it the codes and the audio our generator computes
  (within 1e-5 of the peak, leaving out the last samples that DAC's odd stride changes, as
  tests/test_dac_parity.py does)."""
  torch = pytest.importorskip('torch')
  dac = pytest.importorskip('dac')
  from test_dac_parity import ODD_STRIDE_TAIL, _close  # pylint: disable=g-import-not-at-top
  run = tmp_path / 'run'
  train.train_and_evaluate(tiny_config(tiny_corpus, max_steps=4), str(run))
  cli.main(['export-dac', '--checkpoint', str(run), '-o', str(tmp_path / 'ours.pth')])
  model = dac.DAC.load(str(tmp_path / 'ours.pth')).eval()

  codec = inference.load(run)
  assert codec.step == 4
  audio = _tone()
  ours = codec.gen.apply({'params': codec.params}, jnp.asarray(audio)[None])
  with torch.no_grad():
    latent, codes, *_ = model.encode(torch.from_numpy(audio)[None, None])
    decoded = model.decode(latent)[0].numpy()
  np.testing.assert_array_equal(np.asarray(ours.codes), codes.numpy())
  n = decoded.shape[-1] - ODD_STRIDE_TAIL
  _close(np.asarray(ours.audio)[:, :n], decoded[:, :n], what='decoded audio')
