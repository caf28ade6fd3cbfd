"""Command-line tools: `python -m codec {summary,encode,...,export-dac} ...`.

  summary      parameter table, counts, hop, frame rate and bitrate of a config
  encode       audio files or folders -> OUT_DIR/<name>.codes (codec/codefile.py)
  decode       code files or folders -> OUT_DIR/<name>.wav at the codec's rate, original length
  reconstruct  audio -> codes -> OUT_DIR/<name>.wav in one go
  evaluate     SNR, SI-SDR, mel distance, STOI, PESQ, amplitude at several bitrates (+ Opus)
  import-dac   a PyTorch DAC checkpoint (.pth, as dac.DAC.save writes) -> a run directory
  export-dac   a run directory's generator -> a .pth that dac.DAC.load reads

--checkpoint takes a run directory (RUN_DIR of run_experiment.py); the best checkpoint is used
unless --step names another. User errors (a bad path, an unreadable or incompatible file) print one
line naming the file and exit with status 1; the other files of a batch are still processed.
"""
import argparse
import pathlib
import sys
import time

from codec import config as config_lib


def _summary(args: argparse.Namespace) -> int:
  from codec import summary  # pylint: disable=g-import-not-at-top
  print(summary.summarize(config_lib.load(args.config)))
  return 0


# -------------------------------------------------------------------------------------------------
# encode / decode / reconstruct / evaluate. Heavy imports (jax) happen once a command runs.


def _error(message: str) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)


def _load_codec(args: argparse.Namespace):
  from codec import inference  # pylint: disable=g-import-not-at-top
  codec = inference.load(args.checkpoint, step=args.step, chunk_seconds=args.chunk_seconds,
                         batch_size=args.batch_size)
  print(f'{args.checkpoint}: step {codec.step}, {codec.sample_rate} Hz, hop {codec.hop_length}, '
        f'{codec.n_codebooks} codebooks of {codec.codebook_size} '
        f'({codec.bitrate(1) / 1000:g} kbps each); {inference.describe(codec.params)}',
        flush=True)
  return codec


def _n_quantizers(codec, args: argparse.Namespace) -> int:
  if args.kbps is not None:
    return codec.n_quantizers_for_kbps(args.kbps)
  return codec.check_n_quantizers(args.n_quantizers)


def _chunk_bar(codec, samples: int):
  """A per-chunk progress bar for long inputs (more than a few windows), else None."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  if samples < 4 * codec.chunk_frames * codec.hop_length:
    return None
  return tqdm(unit='chunk', leave=False, disable=None)


def _speed(seconds: float, start: float) -> str:
  """'1.23 s, 8.1x real time' (the first file of a shape includes compilation)."""
  elapsed = time.perf_counter() - start
  return f'{elapsed:.2f} s, {seconds / max(elapsed, 1e-9):.1f}x real time'


def _close(bar) -> None:
  if bar is not None:
    bar.close()


def _for_each(pairs, work) -> int:
  """Runs work(source, rel) for every pair; a user error skips that file. Returns the exit code."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from codec import audio_io  # pylint: disable=g-import-not-at-top
  from codec import codefile  # pylint: disable=g-import-not-at-top
  failed = 0
  for source, rel in tqdm(pairs, unit='file', disable=None if len(pairs) > 1 else True):
    try:
      work(source, rel)
    except (audio_io.AudioError, codefile.CodeFileError) as error:
      _error(str(error) if isinstance(error, codefile.CodeFileError)
             else f'{error.detail} ({error.reason})')
      failed += 1
  if failed:
    _error(f'{failed} of {len(pairs)} files failed')
  return 1 if failed else 0


def _write_wav(path: pathlib.Path, audio, sample_rate: int) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(path, np.clip(audio, -1.0, 1.0), sample_rate, subtype='PCM_16')


def _encode(args: argparse.Namespace) -> int:
  from codec import codefile  # pylint: disable=g-import-not-at-top
  from codec import inference  # pylint: disable=g-import-not-at-top
  pairs = inference.expand_inputs(args.inputs)
  codec = _load_codec(args)
  n_quantizers = _n_quantizers(codec, args)
  out_dir = pathlib.Path(args.output)
  totals = {'bits': 0.0, 'seconds': 0.0}

  def work(source, rel):
    start = time.perf_counter()
    audio = inference.read_audio(source, codec.sample_rate)
    bar = _chunk_bar(codec, len(audio.audio))
    codes, header = codec.encode_audio(
        audio.audio, n_quantizers, normalize=not args.no_normalize, channels=audio.channels,
        source_sample_rate=audio.sample_rate, source=source.name, progress=bar)
    _close(bar)
    target = out_dir / rel.with_name(rel.name + codefile.SUFFIX)
    size = codefile.write(target, codes, header)
    totals['bits'] += header.bits
    totals['seconds'] += header.duration
    print(f'{source} -> {target}: {header.duration:.2f} s, {n_quantizers} codebooks, '
          f'{header.bitrate / 1000:.3f} kbps of codes ({size:,} B file, '
          f'{size * 8 / header.duration / 1000:.3f} kbps with its header); '
          f'{_speed(header.duration, start)}', flush=True)

  status = _for_each(pairs, work)
  if totals['seconds']:
    print(f'total: {totals["seconds"]:.2f} s of audio, {totals["bits"] / 8:,.0f} B of codes, '
          f'{totals["bits"] / totals["seconds"] / 1000:.3f} kbps')
  return status


def _decode(args: argparse.Namespace) -> int:
  from codec import codefile  # pylint: disable=g-import-not-at-top
  from codec import inference  # pylint: disable=g-import-not-at-top
  pairs = inference.expand_inputs(args.inputs, suffixes=frozenset({codefile.SUFFIX}))
  codec = _load_codec(args)
  out_dir = pathlib.Path(args.output)

  def work(source, rel):
    start = time.perf_counter()
    codes, header = codefile.read(source)
    for warning in codec.check_header(header, str(source)):
      print(f'warning: {warning}', file=sys.stderr)
    bar = _chunk_bar(codec, header.length)
    audio = codec.decode_audio(codes, header, progress=bar)
    _close(bar)
    target = out_dir / rel.with_name(rel.name + '.wav')
    _write_wav(target, audio, codec.sample_rate)
    print(f'{source} -> {target}: {header.duration:.2f} s at {codec.sample_rate} Hz; '
          f'{_speed(header.duration, start)}', flush=True)

  return _for_each(pairs, work)


def _reconstruct(args: argparse.Namespace) -> int:
  from codec import inference  # pylint: disable=g-import-not-at-top
  pairs = inference.expand_inputs(args.inputs)
  codec = _load_codec(args)
  n_quantizers = _n_quantizers(codec, args)
  out_dir = pathlib.Path(args.output)

  def work(source, rel):
    start = time.perf_counter()
    audio = inference.read_audio(source, codec.sample_rate).audio
    bar = _chunk_bar(codec, len(audio))
    codes, header = codec.encode_audio(audio, n_quantizers, normalize=not args.no_normalize,
                                       progress=bar)
    out = codec.decode_audio(codes, header, progress=bar)
    _close(bar)
    target = out_dir / rel.with_name(rel.name + '.wav')
    _write_wav(target, out, codec.sample_rate)
    print(f'{source} -> {target}: {header.duration:.2f} s, {n_quantizers} codebooks, '
          f'{header.bitrate / 1000:.3f} kbps; {_speed(header.duration, start)}', flush=True)

  return _for_each(pairs, work)


def _parse_levels(text: str | None, n_codebooks: int) -> list[int]:
  from codec import evaluate  # pylint: disable=g-import-not-at-top
  from codec import inference  # pylint: disable=g-import-not-at-top
  if text is None:
    return evaluate.default_levels(n_codebooks)
  try:
    levels = sorted({int(part) for part in text.split(',') if part.strip()})
  except ValueError:
    raise inference.CodecError(f'--n_quantizers {text!r}: give comma-separated integers, '
                               'e.g. 4,8,12') from None
  if not levels or levels[0] < 1 or levels[-1] > n_codebooks:
    raise inference.CodecError(f'--n_quantizers {text!r}: each must be in [1, {n_codebooks}]')
  return levels


def _evaluate(args: argparse.Namespace) -> int:
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from codec import evaluate  # pylint: disable=g-import-not-at-top
  codec = _load_codec(args)
  levels = _parse_levels(args.n_quantizers, codec.n_codebooks)
  files, notes = evaluate.select_files(args.data_dir, args.split, codec)
  root = pathlib.Path(args.data_dir).expanduser().resolve()
  out_dir = pathlib.Path(args.out) if args.out else pathlib.Path(args.checkpoint) / 'eval'
  progress = lambda items, **kw: tqdm(items, disable=None, **kw)
  _, summary, run_notes = evaluate.run(codec, files, root, levels, args.baselines, out_dir,
                                       progress=progress)
  print(evaluate.format_table(summary))
  for note in notes + run_notes:
    print(f'note: {note}')
  print(f'wrote {out_dir / "per_file.csv"}, {out_dir / "summary.csv"}, {out_dir / "metrics.png"}')
  return 0


def _import_dac(args: argparse.Namespace) -> int:
  from codec import dac_runs  # pylint: disable=g-import-not-at-top
  try:
    config = dac_runs.import_dac(args.weights, args.output, args.discriminator)
  except (ValueError, ImportError, FileNotFoundError) as error:
    _error(str(error))
    return 1
  m = config.model
  print(f'{args.output}: DAC {m.sample_rate} Hz, rates {tuple(m.encoder_rates)}, '
        f'{m.n_codebooks} codebooks of {m.codebook_size}; discriminators '
        f'{"from " + args.discriminator if args.discriminator else "none (a fine-tune starts fresh ones)"}')
  return 0


def _export_dac(args: argparse.Namespace) -> int:
  from codec import dac_runs  # pylint: disable=g-import-not-at-top
  from codec import inference  # pylint: disable=g-import-not-at-top
  inference.load_run_config(args.checkpoint)  # a clear error for a wrong directory
  try:
    dac_runs.export_dac(args.checkpoint, args.output, args.step)
  except (ValueError, ImportError, FileNotFoundError) as error:
    _error(str(error))
    return 1
  print(f'{args.output}: load it with dac.DAC.load')
  return 0


# -------------------------------------------------------------------------------------------------
# The parser.


def _add_checkpoint(p: argparse.ArgumentParser) -> None:
  p.add_argument('--checkpoint', required=True, metavar='RUN_DIR',
                 help='run directory written by run_experiment.py')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: the best one)')
  p.add_argument('--chunk_seconds', type=float, default=10.0,
                 help='audio per window of the chunked encode/decode (memory grows with it)')
  p.add_argument('--batch_size', type=int, default=1,
                 help='windows per device call (raise it on a GPU for long inputs)')


def _add_bitrate(p: argparse.ArgumentParser) -> None:
  group = p.add_mutually_exclusive_group()
  group.add_argument('--n_quantizers', type=int, default=None,
                     help='codebooks to use (default: all)')
  group.add_argument('--kbps', type=float, default=None,
                     help='target bitrate: the most codebooks that fit in it')
  p.add_argument('--no_normalize', action='store_true',
                 help='code the input at its own level instead of the training loudness')


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m codec', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(required=True, metavar='COMMAND')
  p = commands.add_parser('summary', help='parameter table, counts, hop, frame rate and bitrate')
  p.add_argument('--config', required=True, help='experiments/<name>.py[:variant]')
  p.set_defaults(run=_summary)

  p = commands.add_parser('encode', help='audio files/folders -> code files')
  p.add_argument('inputs', nargs='+', metavar='INPUT', help='audio files or folders')
  p.add_argument('-o', '--output', required=True, metavar='OUT_DIR',
                 help='where OUT_DIR/<name>.codes go (subfolders of folder inputs mirrored)')
  _add_checkpoint(p)
  _add_bitrate(p)
  p.set_defaults(run=_encode)

  p = commands.add_parser('decode', help='code files/folders -> wav')
  p.add_argument('inputs', nargs='+', metavar='CODES', help='.codes files or folders')
  p.add_argument('-o', '--output', required=True, metavar='OUT_DIR',
                 help='where OUT_DIR/<name>.wav go (subfolders of folder inputs mirrored)')
  _add_checkpoint(p)
  p.set_defaults(run=_decode)

  p = commands.add_parser('reconstruct', help='audio -> codes -> wav in one go')
  p.add_argument('inputs', nargs='+', metavar='INPUT', help='audio files or folders')
  p.add_argument('-o', '--output', required=True, metavar='OUT_DIR',
                 help='where OUT_DIR/<name>.wav go (subfolders of folder inputs mirrored)')
  _add_checkpoint(p)
  _add_bitrate(p)
  p.set_defaults(run=_reconstruct)

  p = commands.add_parser('evaluate', help='quality metrics at several bitrates, optionally vs Opus')
  _add_checkpoint(p)
  p.add_argument('--data_dir', required=True, help='folder of audio to evaluate (recursive)')
  p.add_argument('--split', choices=('all', 'val'), default='all',
                 help="'val': only the files the run held out for validation")
  p.add_argument('--n_quantizers', default=None, metavar='Q1,Q2,...',
                 help='codebook counts to evaluate (default: a third, two thirds and all)')
  p.add_argument('--baselines', action='store_true', help='also run Opus at matched bitrates')
  p.add_argument('--out', default=None, help='results folder (default: RUN_DIR/eval)')
  p.set_defaults(run=_evaluate)

  p = commands.add_parser('import-dac', help='PyTorch DAC .pth -> run directory')
  p.add_argument('weights', metavar='WEIGHTS.pth', help='a file written by dac.DAC.save')
  p.add_argument('-o', '--output', required=True, metavar='RUN_DIR', help='run directory to write')
  p.add_argument('--discriminator', default=None, metavar='DISC.pth',
                 help="DAC's trainer's discriminator (default: freshly initialised)")
  p.set_defaults(run=_import_dac)

  p = commands.add_parser('export-dac', help='run directory -> PyTorch DAC .pth')
  p.add_argument('--checkpoint', required=True, metavar='RUN_DIR',
                 help='run directory written by run_experiment.py or import-dac')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: the best one)')
  p.add_argument('-o', '--output', required=True, metavar='OUT.pth', help='file to write')
  p.set_defaults(run=_export_dac)
  return parser


def main(argv=None) -> None:
  args = build_parser().parse_args(argv)
  if args.run is _summary:
    args.run(args)
    return
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  from codec import audio_io  # pylint: disable=g-import-not-at-top
  from codec import codefile  # pylint: disable=g-import-not-at-top
  from codec import inference  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns about every read-only manager
  try:
    status = args.run(args)
  except (inference.CodecError, codefile.CodeFileError) as error:
    _error(str(error))
    status = 1
  except audio_io.AudioError as error:
    _error(f'{error.detail} ({error.reason})')
    status = 1
  if status:
    raise SystemExit(status)


if __name__ == '__main__':
  sys.path.insert(0, '.')  # experiment files import `experiments.*` relative to the repo root
  main()
