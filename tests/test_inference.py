"""The codec as a tool: restoring a run, chunked encode/decode, the code file, the CLI.

One tiny run directory (random weights saved the way training saves them) serves every test; the
Codec fixture is module-scoped so its jitted functions compile once per window shape.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from codec import __main__ as cli
from codec import checkpoint
from codec import codefile
from codec import inference
from codec import train
from experiments import dac_16khz

SR = 16000
HOP = 320
# Chunked vs one pass: the windows carry a full receptive field of context, so only float
# rounding separates them. Tolerances: codes may differ at <= 0.1% of positions (a near-tie of
# the nearest-code argmax flipped by rounding; none is seen in practice), audio by <= 1e-4 of the
# one-pass signal's peak, and whole-file RMS by <= 0.1%.
MAX_CODE_MISMATCH = 1e-3
MAX_RELATIVE_AUDIO_ERROR = 1e-4
MAX_RMS_RATIO_ERROR = 1e-3


def random_params(module, seed=0):
  """Parameters of the right shapes, drawn in numpy: no init to compile (which takes ~20 s).

  Weight-normalised kernels get scale 0.6 (each output channel's kernel has norm 0.6), Snake
  alphas 1, biases 0, everything else N(0, 1). Scale 1 gives the tiny net a huge gain: a
  saturated output, and rounding differences between window shapes (the conftest's 4 host devices
  thread convolutions differently per shape) amplified to 1e-3. At 0.6 the output is about 0.05
  RMS and unsaturated, like a trained codec's.
  """
  audio = jax.ShapeDtypeStruct((1, HOP * 8), jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.key(0), audio)['params']
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'alpha':
      return np.ones(leaf.shape, leaf.dtype)
    if name == 'scale':
      return np.full(leaf.shape, 0.6, leaf.dtype)
    if name == 'bias':
      return np.zeros(leaf.shape, leaf.dtype)
    return rng.standard_normal(leaf.shape).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def make_run_dir(path, config, step=3):
  """A run directory as run_experiment.py leaves it: config.json, checkpoints/ and best/ holding
  both nets and both optimizer states."""
  models = train.make_models(config)
  gen_params, disc_params = random_params(models.gen), random_params(models.disc)
  state = train.TrainState(
      step=np.int32(step), gen_params=gen_params, disc_params=disc_params,
      gen_opt_state=models.gen_opt.init(gen_params), disc_opt_state=models.disc_opt.init(disc_params))
  path.mkdir(parents=True, exist_ok=True)
  (path / 'config.json').write_text(config.to_json_best_effort(indent=2))
  ckpt = checkpoint.Checkpointer(str(path), config)
  data_state = {'next_batch': step}
  ckpt.save(step, state, data_state, [], wait=True)
  ckpt.save_best(step, state, data_state, [], mel_distance=1.0)
  ckpt.close()
  return state


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  config = dac_16khz.get_config('tiny')
  path = tmp_path_factory.mktemp('run')
  state = make_run_dir(path, config)
  return path, config, state


@pytest.fixture(scope='module')
def codec(run):
  path, _, _ = run
  # 0.4 s windows (20 frames): a 3 s signal crosses 7 window borders.
  return inference.load(path, chunk_seconds=0.4)


@pytest.fixture(scope='module')
def one_pass(codec):
  encode = jax.jit(lambda p, x: codec.gen.apply({'params': p}, x, method=codec.gen.encode))
  decode = jax.jit(lambda p, c: codec.gen.apply({'params': p}, c, method=codec.gen.decode))
  return (lambda x: np.asarray(encode(codec.params, x[None]))[0],
          lambda c: np.asarray(decode(codec.params, c[None]))[0])


def speechlike(seconds, seed=0, rate=SR):
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * rate)) / rate
  envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
  return (0.2 * envelope * (np.sin(2 * np.pi * 180 * t) + 0.3 * rng.standard_normal(len(t)))
          ).astype(np.float32)


# ---- Restoring a run.


def test_restore_params_loads_generator_on_default_device(run):
  path, _, state = run
  gen_params, disc_params, step = checkpoint.restore_params(str(path))
  assert step == 3
  leaves = jax.tree.leaves(gen_params)
  assert {next(iter(leaf.devices())) for leaf in leaves} == {jax.devices()[0]}
  np.testing.assert_array_equal(jax.tree.leaves(state.gen_params)[0], leaves[0])
  assert jax.tree.structure(disc_params) == jax.tree.structure(state.disc_params)
  with pytest.raises(FileNotFoundError, match='step 99'):
    checkpoint.restore_params(str(path), step=99)


def test_load_refuses_a_folder_that_is_not_a_run(tmp_path):
  with pytest.raises(inference.CodecError, match='config.json'):
    inference.load(tmp_path)


# ---- Window plan and receptive field.


def test_halo_of_reference_model():
  model = dac_16khz.get_config().model
  # Encoder: 2501 samples of context each side (7.8 frames); decoder: 10.4 frames.
  assert inference.encoder_halo_frames(model) == 8
  assert inference.decoder_halo_frames(model) == 11


@pytest.mark.parametrize('frames', [1, 30, 36, 37, 100, 151])
def test_plan_covers_every_frame_once_with_context(frames):
  chunk, context = 20, 8
  width, windows = inference.plan_windows(frames, chunk, context)
  covered = np.zeros(frames, int)
  for w in windows:
    assert 0 <= w.start and w.keep_start >= 0 and w.keep_stop <= width
    first, stop = w.start + w.keep_start, w.start + w.keep_stop
    covered[first:stop] += 1
    if frames > width:  # full windows: context on both sides, or the input's edge
      assert w.keep_start >= context or w.start == 0
      assert width - w.keep_stop >= context or w.start + width == frames
  np.testing.assert_array_equal(covered, 1)
  assert width == (inference.bucket_frames(frames, 36) if frames <= 36 else 36)


def test_bucket_ladder():
  assert [inference.bucket_frames(n, 1000) for n in (1, 16, 17, 25, 33, 49, 65, 97)] == [
      16, 16, 24, 32, 48, 64, 96, 128]
  assert inference.bucket_frames(600, 532) == 532


# ---- Chunked == one pass.


@pytest.fixture(scope='module')
def long_signal():
  return speechlike(3.0) + np.float32(0.0)  # 150 frames: 8 windows of 20 kept frames


def test_chunked_encode_matches_one_pass(codec, one_pass, long_signal):
  codes = codec.encode(long_signal)
  reference = one_pass[0](long_signal)
  assert codes.shape == reference.shape == (3, 150)
  assert np.mean(codes != reference) <= MAX_CODE_MISMATCH


def test_chunked_decode_matches_one_pass_and_keeps_loudness(codec, one_pass, long_signal):
  codes = one_pass[0](long_signal)
  chunked = codec.decode(codes, len(long_signal))
  reference = one_pass[1](codes)[:len(long_signal)]
  assert chunked.shape == reference.shape
  peak = np.max(np.abs(reference))
  assert np.max(np.abs(chunked - reference)) <= MAX_RELATIVE_AUDIO_ERROR * peak
  rms = lambda x: np.sqrt(np.mean(np.square(x, dtype=np.float64)))
  assert abs(rms(chunked) / rms(reference) - 1) <= MAX_RMS_RATIO_ERROR


def test_too_little_context_shows_seams(codec, one_pass, long_signal):
  """The comparison above is sensitive: one frame of context leaves visible seams."""
  thin = inference.Codec(codec.config, codec.params, chunk_seconds=0.4, decoder_context=1)
  codes = one_pass[0](long_signal)
  reference = one_pass[1](codes)[:len(long_signal)]
  error = np.max(np.abs(thin.decode(codes, len(long_signal)) - reference))
  assert error > 10 * MAX_RELATIVE_AUDIO_ERROR * np.max(np.abs(reference))


def test_short_input_is_padded_to_a_bucket(codec, one_pass):
  audio = speechlike(0.5, seed=1)  # 25 frames -> one window of 32
  codes = codec.encode(audio)
  reference = one_pass[0](audio)
  assert codes.shape == (3, 25)
  # Trailing padding is silence: it can only reach the last halo's worth of frames.
  away = 25 - codec.encoder_context
  assert np.mean(codes[:, :away] != reference[:, :away]) <= MAX_CODE_MISMATCH
  decoded = codec.decode(codes, len(audio))
  assert decoded.shape == audio.shape
  away = (25 - codec.decoder_context) * HOP
  ref_audio = one_pass[1](codes)
  assert np.max(np.abs(decoded[:away] - ref_audio[:away])) <= (
      MAX_RELATIVE_AUDIO_ERROR * np.max(np.abs(ref_audio)))


def test_bitrate_choices(codec):
  assert codec.bitrate(3) == 50 * 3 * 4
  assert codec.n_quantizers_for_kbps(0.45) == 2
  assert codec.n_quantizers_for_kbps(100) == 3
  with pytest.raises(inference.CodecError, match='below one codebook'):
    codec.n_quantizers_for_kbps(0.1)
  with pytest.raises(inference.CodecError, match=r'\[1, 3\]'):
    codec.check_n_quantizers(4)


# ---- The code file.


def test_code_dtype_is_the_smallest_that_fits():
  assert codefile.code_dtype(16) == np.uint8
  assert codefile.code_dtype(256) == np.uint8
  assert codefile.code_dtype(1024) == np.uint16
  assert codefile.code_dtype(65536) == np.uint16


def test_code_file_round_trip_and_header(codec, tmp_path):
  audio = speechlike(1.01, seed=2)
  codes, header = codec.encode_audio(audio, 2, channels=2, source_sample_rate=44100, source='x')
  path = tmp_path / 'x.codes'
  size = codefile.write(path, codes, header)
  loaded, loaded_header = codefile.read(path)
  np.testing.assert_array_equal(loaded, codes)
  assert loaded_header == header
  assert (header.n_quantizers, header.frames, header.length) == (2, 51, len(audio))
  assert header.channels == 2 and header.codec_fingerprint == codec.fingerprint
  assert header.bitrate == pytest.approx(2 * 51 * 4 / 1.01)
  with np.load(path) as archive:
    assert archive['codes'].dtype == np.uint8
  assert size == path.stat().st_size
  # uint16 for a 1024-entry codebook.
  big = dataclasses.replace(header, codebook_size=1024)
  codefile.write(tmp_path / 'big.codes', np.full(codes.shape, 1023), big)
  with np.load(tmp_path / 'big.codes') as archive:
    assert archive['codes'].dtype == np.uint16


@pytest.mark.parametrize('damage', ['junk', 'truncated', 'bad_json', 'out_of_range'])
def test_corrupt_code_files_name_the_file(codec, tmp_path, damage):
  codes, header = codec.encode_audio(speechlike(0.3), 2)
  path = tmp_path / 'bad.codes'
  codefile.write(path, codes, header)
  if damage == 'junk':
    path.write_bytes(b'not a code file at all')
  elif damage == 'truncated':
    path.write_bytes(path.read_bytes()[:300])
  elif damage == 'bad_json':
    with open(path, 'wb') as f:
      np.savez(f, header=np.frombuffer(b'{oops', np.uint8), codes=codes.astype(np.uint8))
  else:  # a valid header, codes past the codebook
    meta = {'magic': codefile.MAGIC, 'version': codefile.VERSION, **dataclasses.asdict(header)}
    with open(path, 'wb') as f:
      np.savez(f, header=np.frombuffer(json.dumps(meta).encode(), np.uint8),
               codes=np.full(codes.shape, 200, np.uint8))
  with pytest.raises(codefile.CodeFileError, match='bad.codes'):
    codefile.read(path)


def test_codes_of_another_codec_are_refused(codec):
  other = dac_16khz.get_config('tiny')
  other.model.codebook_size = 32
  _, header = codec.encode_audio(speechlike(0.3), 1)
  alien = dataclasses.replace(header, codec_fingerprint=inference.codec_fingerprint(other.model))
  with pytest.raises(codefile.CodeFileError, match='different codec'):
    codec.check_header(alien, 'a.codes')
  warnings = codec.check_header(dataclasses.replace(header, weights_id='0' * 16), 'a.codes')
  assert warnings and 'other weights' in warnings[0]


def test_fingerprint_survives_config_json(run):
  path, config, _ = run
  loaded = inference.load_run_config(path)
  assert inference.codec_fingerprint(loaded.model) == inference.codec_fingerprint(config.model)


# ---- The command line.


@pytest.fixture(scope='module')
def audio_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('audio')
  (root / 'sub').mkdir()
  stereo = np.stack([speechlike(1.2, 3, 44100), speechlike(1.2, 4, 44100)], axis=1)
  sf.write(root / 'stereo.flac', stereo, 44100)
  sf.write(root / 'sub' / 'mono.wav', speechlike(1.0, 5), SR)
  return root


def run_cli(argv, capsys):
  """(exit status, stdout, stderr) of `python -m codec ARGV`."""
  try:
    cli.main([str(a) for a in argv])
    status = 0
  except SystemExit as done:
    status = done.code
  out, err = capsys.readouterr()
  return status, out, err


def test_cli_encode_decode_reconstruct(run, audio_dir, tmp_path, capsys):
  path, _, _ = run
  status, out, err = run_cli(['encode', audio_dir, '--checkpoint', path, '-o', tmp_path / 'codes',
                              '--n_quantizers', 2], capsys)
  assert status == 0, err
  assert 'kbps of codes' in out and 'total:' in out
  _, header = codefile.read(tmp_path / 'codes' / 'stereo.codes')
  assert (header.channels, header.source_sample_rate, header.length) == (2, 44100, int(1.2 * SR))
  assert header.n_quantizers == 2
  assert (tmp_path / 'codes' / 'sub' / 'mono.codes').is_file()

  status, out, err = run_cli(['decode', tmp_path / 'codes', '--checkpoint', path, '-o',
                              tmp_path / 'wav'], capsys)
  assert status == 0, err
  audio, rate = sf.read(tmp_path / 'wav' / 'sub' / 'mono.wav')
  assert (rate, len(audio)) == (SR, SR)
  assert sf.info(tmp_path / 'wav' / 'stereo.wav').frames == int(1.2 * SR)

  status, out, err = run_cli(['reconstruct', audio_dir / 'sub' / 'mono.wav', '--checkpoint', path,
                              '-o', tmp_path / 'rec', '--kbps', 0.4], capsys)
  assert status == 0, err
  assert sf.info(tmp_path / 'rec' / 'mono.wav').frames == SR
  assert '2 codebooks' in out


def test_cli_user_errors_exit_nonzero_without_traceback(run, audio_dir, tmp_path, capsys):
  path, _, _ = run
  bad_audio = tmp_path / 'in'
  bad_audio.mkdir()
  (bad_audio / 'broken.wav').write_bytes(b'RIFF nonsense')
  sf.write(bad_audio / 'fine.wav', speechlike(0.3), SR)
  status, out, err = run_cli(['encode', bad_audio, '--checkpoint', path, '-o', tmp_path / 'o'],
                             capsys)
  assert status == 1 and 'broken.wav' in err and 'Traceback' not in err
  assert (tmp_path / 'o' / 'fine.codes').is_file()  # the other file still went through

  (tmp_path / 'junk.codes').write_bytes(b'junk')
  status, _, err = run_cli(['decode', tmp_path / 'junk.codes', '--checkpoint', path, '-o',
                            tmp_path / 'o'], capsys)
  assert status == 1 and 'junk.codes' in err and 'not a code file' in err

  other = dac_16khz.get_config('tiny')
  other.model.n_codebooks = 2
  other_run = tmp_path / 'other_run'
  make_run_dir(other_run, other)
  status, _, err = run_cli(['decode', tmp_path / 'o' / 'fine.codes', '--checkpoint', other_run,
                            '-o', tmp_path / 'o2'], capsys)
  assert status == 1 and 'different codec' in err and 'fine.codes' in err

  for argv in (['encode', tmp_path / 'missing.wav'], ['encode', bad_audio, '--n_quantizers', 9]):
    status, _, err = run_cli(argv + ['--checkpoint', path, '-o', tmp_path / 'o'], capsys)
    assert status == 1 and err.startswith('error:'), err
  status, _, err = run_cli(['encode', bad_audio, '--checkpoint', tmp_path, '-o', tmp_path / 'o'],
                           capsys)
  assert status == 1 and 'config.json' in err
