"""The code file (`.codes`): a codec's discrete codes plus what is needed to decode them.

Layout: an uncompressed numpy `.npz` archive (a zip: robust, inspectable with any zip tool,
loaded without pickle) holding two arrays:

  header  uint8[H]  UTF-8 JSON: {"magic": "codec-codes", "version": 1, "sample_rate", "hop_length",
                    "n_quantizers" (codebooks used, Q), "n_codebooks" (the codec's total),
                    "codebook_size" (K), "frames" (N), "length" (samples at sample_rate),
                    "channels" (of the source; the codec is mono and mixes them down),
                    "source_sample_rate", "gain_db" (loudness gain applied before encoding,
                    undone after decoding), "codec_fingerprint", "weights_id", "step", "source"}
  codes   uint8[Q, N] for K <= 256, uint16[Q, N] for K <= 65536, else uint32[Q, N]

Compatibility is decided by `codec_fingerprint` (a hash of config.model, see inference.py): a
file from another architecture is refused. `weights_id` tells checkpoints of one architecture
apart and only warns, since decoding with another step of the same run is legitimate.
"""
import dataclasses
import io
import json
import math
import os
import pathlib
import zipfile

import numpy as np

MAGIC = 'codec-codes'
VERSION = 1
SUFFIX = '.codes'
_ZIP_MAGIC = b'PK\x03\x04'  # how every .npz (a zip archive) begins


class CodeFileError(ValueError):
  """An unreadable, corrupt or incompatible code file; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Header:
  sample_rate: int
  hop_length: int
  n_quantizers: int  # Q, codebooks used
  n_codebooks: int  # codebooks the codec has
  codebook_size: int  # K
  frames: int  # N
  length: int  # samples at sample_rate of the decoded audio
  channels: int  # of the source audio, before the mix-down to mono
  source_sample_rate: int
  gain_db: float
  codec_fingerprint: str
  weights_id: str
  step: int
  source: str  # the input file's name, for information only

  @property
  def duration(self) -> float:
    return self.length / self.sample_rate

  @property
  def bits(self) -> float:
    """Information in the codes: Q * N * log2(K)."""
    return self.n_quantizers * self.frames * math.log2(self.codebook_size)

  @property
  def bitrate(self) -> float:
    """Bits of codes per second of audio."""
    return self.bits / self.duration


def code_dtype(codebook_size: int) -> np.dtype:
  """The smallest unsigned integer type holding codes in [0, codebook_size)."""
  for dtype in (np.uint8, np.uint16, np.uint32):
    if codebook_size - 1 <= np.iinfo(dtype).max:
      return np.dtype(dtype)
  raise ValueError(f'codebook_size {codebook_size} does not fit in 32 bits')


def write(path: str | os.PathLike, codes: np.ndarray, header: Header) -> int:
  """Writes codes int[Q, N] and header atomically (temp file + rename); returns the file size."""
  codes = np.asarray(codes)
  if codes.shape != (header.n_quantizers, header.frames):
    raise ValueError(f'codes of shape {codes.shape} do not match the header '
                     f'({header.n_quantizers}, {header.frames})')
  meta = {'magic': MAGIC, 'version': VERSION, **dataclasses.asdict(header)}
  buffer = io.BytesIO()
  np.savez(buffer, header=np.frombuffer(json.dumps(meta).encode(), np.uint8),
           codes=codes.astype(code_dtype(header.codebook_size)))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  tmp.write_bytes(buffer.getvalue())
  os.replace(tmp, path)
  return len(buffer.getvalue())


def _parse_header(raw: np.ndarray, path) -> Header:
  try:
    meta = json.loads(raw.tobytes().decode('utf-8'))
  except (UnicodeDecodeError, ValueError) as error:
    raise CodeFileError(f'{path}: corrupt code file (header is not JSON: {error})') from None
  if not isinstance(meta, dict) or meta.get('magic') != MAGIC:
    raise CodeFileError(f'{path}: not a code file (no {MAGIC!r} magic in its header)')
  if meta.get('version') != VERSION:
    raise CodeFileError(f'{path}: code file version {meta.get("version")}; this tool reads '
                        f'version {VERSION}')
  names = [f.name for f in dataclasses.fields(Header)]
  missing = [name for name in names if name not in meta]
  if missing:
    raise CodeFileError(f'{path}: corrupt code file (header lacks {", ".join(missing)})')
  try:
    return Header(**{name: meta[name] for name in names})
  except TypeError as error:
    raise CodeFileError(f'{path}: corrupt code file ({error})') from None


def _check(codes: np.ndarray, header: Header, path) -> None:
  expected = (header.n_quantizers, header.frames)
  if codes.shape != expected or codes.dtype != code_dtype(header.codebook_size):
    raise CodeFileError(f'{path}: corrupt code file (codes {codes.dtype}{list(codes.shape)}, header '
                        f'says {code_dtype(header.codebook_size)}{list(expected)})')
  if header.frames != math.ceil(header.length / header.hop_length) or header.length < 1:
    raise CodeFileError(f'{path}: corrupt code file ({header.frames} frames cannot hold '
                        f'{header.length} samples at hop {header.hop_length})')
  if codes.size and int(codes.max()) >= header.codebook_size:
    raise CodeFileError(f'{path}: corrupt code file (code {int(codes.max())} >= codebook size '
                        f'{header.codebook_size})')


def read(path: str | os.PathLike) -> tuple[np.ndarray, Header]:
  """(codes int32[Q, N], header) of a code file; CodeFileError names the file and the problem."""
  try:
    with open(path, 'rb') as f:
      if f.read(4) != _ZIP_MAGIC:
        raise CodeFileError(f'{path}: not a code file (not an .npz archive)')
    with np.load(path, allow_pickle=False) as archive:
      if set(archive.files) != {'header', 'codes'}:
        raise CodeFileError(f'{path}: not a code file (holds {sorted(archive.files)})')
      raw, codes = archive['header'], archive['codes']
  except CodeFileError:
    raise
  except FileNotFoundError:
    raise CodeFileError(f'{path}: no such file') from None
  except IsADirectoryError:
    raise CodeFileError(f'{path}: is a folder, not a code file') from None
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
    raise CodeFileError(f'{path}: corrupt or not a code file ({error})') from None
  header = _parse_header(raw, path)
  _check(codes, header, path)
  return codes.astype(np.int32), header
