"""codec/compute.py: the kernels, malloc and XLA flags chosen per backend, and that runs follow them."""
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codec import checkpoint
from codec import compute
from codec import inference
from codec import parallel
from codec import train
from conftest import ROOT
from conftest import tiny_config

# Loss terms of the tiny run under kernels='xla' and 'cpu' ('auto' on CPU) agree to this
# relative difference after 3 steps: the two differ only by float32 rounding (the polynomial
# sine is within 3e-7 of jnp.sin; the conv paths within ~1e-6 of the direct sum).
XLA_VS_AUTO_RTOL = 1e-4


@pytest.mark.parametrize('kernels, backend, dtype, expected', [
    ('auto', 'cpu', 'float32', compute.CPU),
    ('auto', 'cpu', 'bfloat16', compute.XLA),  # Winograd loses accuracy in bfloat16
    ('auto', 'gpu', 'float32', compute.XLA),
    ('auto', 'gpu', 'bfloat16', compute.XLA),
    ('auto', 'tpu', 'float32', compute.XLA),
    ('auto', 'tpu', 'bfloat16', compute.XLA),
    ('xla', 'cpu', 'float32', compute.XLA),
    ('cpu', 'gpu', 'bfloat16', compute.CPU),
])
def test_kernels_chosen_per_backend_and_dtype(kernels, backend, dtype, expected):
  assert compute.choose(kernels, backend, dtype) == expected


def test_bad_kernels_value_names_the_field():
  with pytest.raises(ValueError, match=r"--config.model.kernels must be one of 'auto', 'xla'"):
    compute.choose('cuda', 'gpu', 'float32')


@pytest.mark.parametrize('environ, installed, expected', [
    ({'JAX_PLATFORMS': 'cpu'}, ['jax-cuda12-plugin'], 'cpu'),  # the user's choice wins
    ({'JAX_PLATFORMS': 'cuda,cpu'}, [], 'gpu'),
    ({'JAX_PLATFORMS': 'tpu'}, [], 'tpu'),
    ({}, ['numpy', 'jax-cuda12-plugin', 'jax-cuda12-pjrt'], 'gpu'),
    ({}, ['jax_rocm7_plugin'], 'gpu'),
    ({}, ['libtpu'], 'tpu'),
    ({}, ['numpy', 'jax', 'jaxlib'], 'cpu'),
])
def test_launch_backend_guessed_before_jax(environ, installed, expected):
  assert compute.launch_backend(environ, installed) == expected


def test_huge_pages_on_the_cpu_backend_only():
  assert compute.malloc_hugepages(True, 'cpu')
  assert not compute.malloc_hugepages(True, 'gpu')
  assert not compute.malloc_hugepages(True, 'tpu')
  assert not compute.malloc_hugepages(False, 'cpu')


def test_deterministic_flag_added_once_and_user_value_kept():
  assert compute.xla_flags('', False) == ''
  assert compute.xla_flags('--a=1', True) == '--a=1 ' + compute.DETERMINISTIC_FLAG
  user = '--xla_gpu_deterministic_ops=false'
  assert compute.xla_flags(user, True) == user


def test_launcher_passes_the_deterministic_flag_to_xla(tmp_path):
  """prepare_process runs before jax is imported; XLA then starts with the flag."""
  script = tmp_path / 'probe.py'
  script.write_text(
      'import os\n'
      'from codec import config, launch\n'
      'c = config.base_config()\n'
      'c.deterministic = True\n'
      'c.malloc_hugepages = False\n'
      'launch.prepare_process(c)\n'
      'import jax\n'
      'print(float(jax.numpy.ones(3).sum()), os.environ["XLA_FLAGS"])\n')
  env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS='', JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                       check=True).stdout
  assert out.split() == ['3.0', compute.DETERMINISTIC_FLAG]  # XLA accepted the flag


def _compile_in_fresh_process(tmp_path, cache_dir: str, environ_cache: str | None) -> None:
  """Launches a process that applies the launcher's set-up with config.compilation_cache_dir =
  cache_dir, then compiles one function."""
  script = tmp_path / 'probe_cache.py'
  script.write_text(
      'import sys\n'
      'from codec import config, launch\n'
      'c = config.base_config()\n'
      'c.malloc_hugepages = False\n'
      'c.compilation_cache_dir = sys.argv[1]\n'
      'launch.prepare_process(c)\n'
      'import jax\n'
      'print(float(jax.jit(lambda x: (x * 3).sum())(jax.numpy.ones(5))))\n')
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu',
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')  # cache even a tiny compile
  if environ_cache is not None:
    env['JAX_COMPILATION_CACHE_DIR'] = environ_cache
  out = subprocess.run([sys.executable, str(script), cache_dir], env=env, capture_output=True,
                       text=True, check=True).stdout
  assert out.split() == ['15.0']


def test_compiled_programs_go_to_the_configured_cache_unless_the_environment_names_one(tmp_path):
  configured, users = tmp_path / 'configured', tmp_path / 'users'
  _compile_in_fresh_process(tmp_path, str(configured), None)
  assert list(configured.iterdir())  # the compiled function was written there
  _compile_in_fresh_process(tmp_path, str(tmp_path / 'ignored'), str(users))
  assert list(users.iterdir()) and not (tmp_path / 'ignored').exists()
  before = set(tmp_path.iterdir())
  _compile_in_fresh_process(tmp_path, '', None)  # '': no cache anywhere
  assert set(tmp_path.iterdir()) == before


def test_fingerprints_do_not_depend_on_kernels():
  config = tiny_config()
  other = tiny_config(**{'model.kernels': 'xla'})
  assert checkpoint.fingerprint(config) == checkpoint.fingerprint(other)
  assert inference.codec_fingerprint(config.model) == inference.codec_fingerprint(other.model)


def _primitives(models, excerpt=1600):
  """Names of the primitives in the traced training forward of both nets."""
  audio = jax.ShapeDtypeStruct((2, excerpt), jnp.float32)
  gen_params = jax.eval_shape(models.gen.init, jax.random.key(0), audio)
  disc_params = jax.eval_shape(models.disc.init, jax.random.key(0), audio)
  text = str(jax.make_jaxpr(lambda g, d, a: models.disc.apply(d, models.gen.apply(g, a).audio))(
      gen_params, disc_params, audio))
  return text


@pytest.mark.parametrize('backend, dtype, cpu_kernels', [
    ('cpu', 'float32', True), ('gpu', 'float32', False), ('tpu', 'bfloat16', False),
    ('cpu', 'bfloat16', False)])
def test_both_nets_follow_the_choice(backend, dtype, cpu_kernels):
  models = train.make_models(tiny_config(**{'optim.compute_dtype': dtype}), backend=backend)
  assert models.gen.kernels == models.disc.kernels == (compute.CPU if cpu_kernels else compute.XLA)
  text = _primitives(models)
  # XLA's kernels: Snake by jnp.sin, no custom gradients; the CPU ones: no sin at all, Snake's
  # and the strided 2-D convs' hand-written backward passes.
  assert (' sin ' in text) != cpu_kernels
  assert ('custom_vjp_call' in text) == cpu_kernels


def _three_steps(kernels: str):
  """Losses of 3 steps of the tiny run (built as tests/test_train.py does: shared compiles)."""
  config = tiny_config(**{'model.kernels': kernels})
  models = train.make_models(config)
  mesh = parallel.make_mesh()
  state = jax.jit(functools.partial(train.create_train_state, models, excerpt_samples=1600),
                  out_shardings=parallel.replicated(mesh))(jax.random.key(0))
  step = jax.jit(functools.partial(train.train_step, models))
  audio = np.asarray(jax.random.normal(jax.random.key(1), (4, 1600))) * 0.1
  losses = []
  for i in range(3):
    state, metrics = step(state, parallel.shard_global(audio, mesh), jax.random.key(2 + i))
    losses.append({k: float(metrics[k]) for k in ('gen_loss', 'disc_loss', 'mel_loss',
                                                   'feat_loss', 'adv_loss', 'commitment_loss')})
  return losses


def test_xla_and_cpu_kernels_train_to_the_same_losses():
  # 'cpu' is what 'auto' takes on the CPU backend (same compiled step); on a GPU it still runs.
  auto, xla = _three_steps('cpu'), _three_steps('xla')
  for a, x in zip(auto, xla):
    for name in a:
      np.testing.assert_allclose(x[name], a[name], rtol=XLA_VS_AUTO_RTOL, err_msg=name)
