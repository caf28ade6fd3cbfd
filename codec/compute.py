"""How the codec is computed, decided once from the backend, the compute dtype and the config.

Every speed-up of codec/cpu_kernels.py (Winograd, im2col and polyphase convolutions, Snake's
polynomial sine and its hand-written backward pass) was made for XLA's CPU backend, and
glibc's huge-page malloc (codec/hugepages.py) for XLA CPU's fresh buffers. On GPUs and TPUs
XLA's own convolution (one cuDNN call where a k=7 Winograd conv makes about 14 matrix
products), `jnp.sin` and XLA's gradients are what the compiler is built for; and in bfloat16
the Winograd transforms lose accuracy anywhere (bounds in tests/test_model.py and README.md).

`config.model.kernels` chooses:
- 'auto' (default): the CPU kernels on the CPU backend in float32; XLA's own ops on GPU and TPU,
  and in bfloat16 on any backend;
- 'xla': XLA's own ops everywhere;
- 'cpu': the CPU kernels everywhere (to compare, or to debug them on another backend).
Huge-page malloc follows the backend alone (CPU only), and `config.deterministic` asks XLA for
deterministic GPU ops. This module imports no jax: the launcher asks it before jax is loaded.
"""
import dataclasses
import importlib.metadata
import re
from typing import Iterable

KERNELS = ('auto', 'xla', 'cpu')  # the values of config.model.kernels

# XLA's switch for deterministic GPU ops: scatter-adds (the codebook gradient), reductions and
# cuDNN algorithm choice then give the same bits on every run. No effect on CPU and TPU.
DETERMINISTIC_FLAG = '--xla_gpu_deterministic_ops=true'


@dataclasses.dataclass(frozen=True)
class Kernels:
  """What the generator's and discriminators' layers compute with (static, hashable)."""
  cpu_convs: bool  # cpu_kernels.conv's shape-chosen paths, else jax.lax.conv_general_dilated
  cpu_snake: bool  # Snake by cpu_kernels.snake (polynomial sine, custom backward), else jnp.sin

  def describe(self) -> str:
    convs = 'Winograd/im2col/polyphase convs' if self.cpu_convs else "XLA's convs"
    snake = 'polynomial Snake' if self.cpu_snake else 'jnp.sin Snake, XLA gradients'
    return f'{convs}, {snake}'


XLA = Kernels(cpu_convs=False, cpu_snake=False)
CPU = Kernels(cpu_convs=True, cpu_snake=True)


def check(kernels: str) -> None:
  if kernels not in KERNELS:
    raise ValueError(f"--config.model.kernels must be one of {', '.join(map(repr, KERNELS))}, "
                     f'got {kernels!r}')


def choose(kernels: str, backend: str, compute_dtype: str) -> Kernels:
  """The kernels for `config.model.kernels` on `backend` ('cpu', 'gpu', 'tpu', as
  jax.default_backend() names it) at `compute_dtype` ('float32' or 'bfloat16')."""
  check(kernels)
  if kernels == 'auto':
    return CPU if backend == 'cpu' and compute_dtype == 'float32' else XLA
  return CPU if kernels == 'cpu' else XLA


def configured(model) -> str:
  """config.model.kernels; 'auto' for run directories written before the field existed."""
  return model.kernels if 'kernels' in model else 'auto'


_GPU_PLUGIN = re.compile(r'jax[-_](cuda|rocm)\d*[-_]plugin')


def launch_backend(environ, installed: Iterable[str] | None = None) -> str:
  """The backend jax will pick, guessed before jax is imported: 'cpu', 'gpu' or 'tpu'.

  JAX_PLATFORMS when set (its first entry); otherwise a GPU if a CUDA or ROCm plugin is
  installed, a TPU if libtpu is, else the CPU. `installed`: distribution names (default: this
  environment's). Only the malloc setting depends on it: a wrong guess (a GPU plugin on a
  machine without a GPU) costs the CPU step its huge pages, nothing else.
  """
  platforms = environ.get('JAX_PLATFORMS', '').replace(' ', '')
  if platforms:
    first = platforms.split(',')[0].lower()
    return 'gpu' if first in ('cuda', 'rocm', 'gpu') else first
  if installed is None:
    installed = [d.metadata['Name'] or '' for d in importlib.metadata.distributions()]
  names = [n.lower() for n in installed]
  if any(_GPU_PLUGIN.fullmatch(n) for n in names):
    return 'gpu'
  if any(n.startswith('libtpu') for n in names):
    return 'tpu'
  return 'cpu'


def malloc_hugepages(enabled: bool, backend: str) -> bool:
  """Whether the launcher re-executes with glibc's huge-page malloc: on the CPU backend only (on
  GPU and TPU the step's buffers live on the device; the host's few allocations gain nothing)."""
  return enabled and backend == 'cpu'


def xla_flags(current: str, deterministic: bool) -> str:
  """XLA_FLAGS with the deterministic-ops flag added when asked for (a value the user set wins)."""
  if not deterministic or 'xla_gpu_deterministic_ops' in current:
    return current
  return f'{current} {DETERMINISTIC_FLAG}'.strip()
