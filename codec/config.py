"""The base configuration: every field any part of the codebase reads is declared here.

Experiment files in `experiments/` start from `base_config()` and change values only, so a
mistyped override (`--config.modle.encoder_dim=8`) fails instead of being silently ignored.
Defaults follow the PyTorch DAC reference (16 kHz model, `../shared/REFERENCE.md`). Every field
has a validation rule in `codec/config_rules.py` (its allowed range, checked before anything is
built); a new field needs one there too, or the suite fails.
"""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment_name = 'codec'
  c.seed = 0

  # ---- Generator: DAC encoder / residual VQ / decoder.
  c.model = ml_collections.ConfigDict()
  c.model.sample_rate = 16000
  c.model.encoder_dim = 64
  c.model.encoder_rates = (2, 4, 5, 8)
  c.model.latent_dim = 1024  # DAC: encoder_dim * 2 ** len(encoder_rates)
  c.model.decoder_dim = 1536
  c.model.decoder_rates = (8, 5, 4, 2)
  c.model.n_codebooks = 12
  c.model.codebook_size = 1024
  c.model.codebook_dim = 8
  c.model.quantizer_dropout = 0.5
  # How convs and Snake are computed (codec/compute.py): 'auto' takes the CPU kernels
  # (codec/cpu_kernels.py) on CPU in float32 and XLA's own ops on GPU/TPU and in bfloat16;
  # 'xla' or 'cpu' force one. Same maths either way: checkpoints and code files do not depend on it.
  c.model.kernels = 'auto'

  # ---- Discriminators: 5 multi-period + 3 multi-band complex-STFT = 8.
  c.discriminator = ml_collections.ConfigDict()
  c.discriminator.periods = (2, 3, 5, 7, 11)
  c.discriminator.period_channels = (32, 128, 512, 1024, 1024)
  c.discriminator.fft_sizes = (2048, 1024, 512)
  c.discriminator.bands = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
  c.discriminator.band_channels = 32

  # ---- Losses. The launcher's --recon_weight/--vq_weight/--feat_weight/--adv_weight set the
  # four *_weight fields below; the others weight terms inside a group.
  c.loss = ml_collections.ConfigDict()
  c.loss.gan = 'lsgan'  # 'lsgan' (DAC) or 'hinge'
  c.loss.recon_weight = 15.0  # times (mel + waveform_l1_weight * L1 + stft_weight * STFT)
  c.loss.waveform_l1_weight = 0.0  # DAC: 0; a high weight makes the output buzzy
  c.loss.stft_weight = 0.0
  c.loss.vq_weight = 1.0  # times (commitment_weight * commitment + codebook_weight * codebook)
  c.loss.commitment_weight = 0.25
  c.loss.codebook_weight = 1.0
  # Applied to the *sum* over discriminators, as in DAC; logs report the per-discriminator mean.
  c.loss.feat_weight = 2.0
  c.loss.adv_weight = 1.0
  # Steps of reconstruction (+ VQ) loss alone before the adversarial and feature terms join the
  # generator's loss; the discriminators train from step 1 either way (DAC: 0).
  c.loss.adversarial_start_step = 0
  c.loss.mel_windows = (32, 64, 128, 256, 512, 1024, 2048)
  c.loss.mel_bins = (5, 10, 20, 40, 80, 160, 320)
  c.loss.mel_clamp = 1e-5
  c.loss.stft_windows = (2048, 512)

  # ---- Optimisation (both nets: AdamW + exponential decay + global-norm clipping).
  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4
  c.optim.b1 = 0.8
  c.optim.b2 = 0.99
  c.optim.weight_decay = 0.01
  c.optim.lr_decay = 0.999996  # per step
  c.optim.warmup_steps = 0  # linear learning-rate warm-up over this many updates (DAC: none)
  # The rate falls linearly to 0 over the run's last N updates (codec/optimizer.py; DAC: none).
  c.optim.cooldown_steps = 0
  # Evaluation and inference use an exponential moving average of the generator's weights with
  # this decay per step (0: none, as DAC; codec/train.py's update_ema).
  c.optim.ema_decay = 0.0
  # Steps at the start in which only the discriminators train (the generator's update is held
  # back): a fresh discriminator's first random gradients then cannot damage a generator loaded
  # by init_from (DAC: none).
  c.optim.discriminator_warmup_steps = 0
  # Every N steps, each level's codes that nothing picked in those N steps move onto latents of
  # the current batch (codec/quantizer.py's restart_dead_codes; 0: never, as DAC).
  c.optim.codebook_restart_steps = 0
  # Before the first step, every codebook starts at the k-means centroids of its latents over
  # the first N training batches (codec/codebook_init.py; SoundStream, EnCodec). 0: DAC's N(0, 1)
  # codes. The batches are then trained on as usual.
  c.optim.codebook_kmeans_batches = 0
  # The chance that a step updates the discriminators (1: every step, as DAC). EnCodec updates
  # its discriminator with probability 2/3 at 24 kHz and 1/2 at 48 kHz (Defossez et al. 2022,
  # arXiv:2210.13438; audiocraft's CompressionSolver, `adversarial.every`); a skipped update
  # also skips its forward and backward passes, the larger part of a step on CPU.
  c.optim.discriminator_update_probability = 1.0
  c.optim.clip_generator = 1000.0
  c.optim.clip_discriminator = 10.0
  c.optim.compute_dtype = 'float32'  # or 'bfloat16'; params, optimizer state and losses stay f32

  # ---- Data.
  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ''  # empty: the embedded demo corpus in data/telugu_demo
  c.data.val_dir = ''  # empty: hold out val_fraction of data_dir, chosen by a hash of the path
  c.data.val_fraction = 0.05
  c.data.excerpt_seconds = 0.38
  c.data.val_excerpt_seconds = 2.0
  c.data.val_max_excerpts = 32
  c.data.loudness_db = -16.0
  c.data.random_gain_db = 0.0  # half-width of a uniform random gain; 0 disables it
  c.data.phase_inversion = True
  # Every phase of each training excerpt's spectrum rotated by one uniform random angle (DAC's
  # ShiftPhase, codec/data.py's shift_phase; on in the DAC reference experiments).
  c.data.phase_shift = False
  c.data.silence_db = -60.0  # excerpts quieter than this (RMS, dBFS) are skipped
  # False: each file's excerpts tile it (one random offset per file and epoch). True: DAC's
  # salient excerpts, each at a random offset redrawn up to salient_tries times until its level
  # (RMS, dBFS) reaches salient_db; long recordings with pauses then train on sound.
  c.data.salient_excerpts = False
  c.data.salient_db = -40.0
  c.data.salient_tries = 8
  c.data.num_workers = 0
  c.data.prefetch = 2  # batches read ahead; read threads (per worker: at most its share of cores)
  c.data.open_files = 64  # per worker: idle file handles kept open (opening an mp3 scans it)
  c.data.decode_cache_mb = 256  # per worker: LRU of whole files decoded (only files soundfile
  # cannot read, decoded by librosa)

  # ---- Training loop.
  c.batch_size = 12  # global, over every device and host
  c.num_epochs = 100
  c.max_steps = 0  # 0: no limit besides num_epochs
  c.log_every_steps = 50
  # Validation, TensorBoard, metrics.jsonl, the health verdict and the best checkpoint: every N
  # steps (counted over the whole run) and after the last step; 0: at each epoch end instead.
  c.eval_every_steps = 1000  # DAC's validation interval
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.num_audio_examples = 3  # fixed validation clips logged as audio + spectrogram
  c.checkpoint_dir = ''  # empty: runs/<experiment_name>
  # A PyTorch DAC .pth (dac.DAC.save) or one of our run directories: training starts from its
  # generator (and its discriminators, where it has them) with fresh optimizer states, unless the
  # run directory already holds a checkpoint to resume. Empty: random initialisation.
  c.init_from = ''
  # The random initialisation (without init_from). True: DAC's (tests/test_dac_init.py). False:
  # the decoder's transposed convs start with flax's fan-in (K x C_in, not PyTorch's C_out x K)
  # and zero biases, the discriminators' convs with zero biases; the 16 kHz demo trains to a
  # better STOI and mel from it (docs/results.md).
  c.dac_init = True
  c.overwrite = False
  c.use_wandb = False
  # CPU backend on glibc only: the launcher re-executes itself with GLIBC_TUNABLES=
  # glibc.malloc.hugetlb=1, which removes ~99% of XLA CPU's per-step page faults
  # (codec/hugepages.py, docs/performance.md); off on GPU and TPU (codec/compute.py).
  c.malloc_hugepages = True
  # GPU: XLA's deterministic ops (--xla_gpu_deterministic_ops=true in XLA_FLAGS, set by the
  # launcher): the codebook gradient's scatter-adds and other reductions give the same bits on
  # every run, at some speed. CPU and TPU runs are deterministic either way.
  c.deterministic = False
  # XLA's persistent compilation cache (keyed by the program, the jax version and the device):
  # a resumed run, or a rerun of the same shapes, loads its compiled steps instead of compiling
  # them again (the demo: 115 s from launch to a 20-step run's exit instead of 256 s on 2 cores,
  # 13 MB). '' : no cache. The environment's JAX_COMPILATION_CACHE_DIR, when set, wins.
  c.compilation_cache_dir = '~/.cache/codec/jax'

  # ---- Multi-host (jax.distributed); empty/-1 values are read from the environment.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ''
  c.distributed.num_processes = 0
  c.distributed.process_id = -1

  # ---- Training-health monitor thresholds (per-discriminator values).
  c.health = ml_collections.ConfigDict()
  c.health.stop_on_red_flag = False
  # |D loss - dead value| within this over a whole evaluation interval (mean, min and max).
  c.health.disc_stuck_tolerance = 0.02
  c.health.disc_grace_steps = 200  # from this step on, sitting at the initial value is red too
  c.health.min_feat_loss = 0.1
  c.health.max_feat_loss = 10.0
  c.health.grace_steps = 5000  # SNR, amplitude and rate-distortion red rules apply from here on
  c.health.snr_fall_db = 0.5  # green SNR may dip this much since the previous evaluation
  c.health.min_amplitude_ratio = 50.0  # percent
  c.health.max_amplitude_ratio = 120.0
  c.health.green_amplitude_low = 70.0
  c.health.green_amplitude_high = 105.0  # includes 100%: a perfect reconstruction is green
  c.health.amplitude_stable_pct = 10.0  # points per evaluation, unless approaching 100%
  # Collapse: a level using under this fraction of the codes it could reach over an evaluation.
  c.health.min_codebook_usage = 0.1
  c.health.min_level_gain = 0.01  # mel distance the later half of the levels must remove
  return c


def excerpt_samples(c: ml_collections.ConfigDict) -> int:
  """data.excerpt_seconds in samples at model.sample_rate, rounded as the loader cuts it."""
  return int(round(c.data.excerpt_seconds * c.model.sample_rate))


def make_tiny(c: ml_collections.ConfigDict) -> None:
  """Shrinks every size (same architecture family, same rates) so a step compiles fast on CPU."""
  c.model.encoder_dim = 4
  c.model.latent_dim = 4 * 2 ** len(c.model.encoder_rates)
  c.model.decoder_dim = 32
  c.model.n_codebooks = 3
  c.model.codebook_size = 16
  c.model.codebook_dim = 4
  c.discriminator.periods = (2, 3)
  c.discriminator.period_channels = (4, 8)
  c.discriminator.fft_sizes = (256,)
  c.discriminator.bands = ((0.0, 0.5), (0.5, 1.0))
  c.discriminator.band_channels = 4
  c.loss.mel_windows = (64, 256)
  c.loss.mel_bins = (8, 16)
  c.loss.stft_windows = (256,)
  c.data.excerpt_seconds = 0.1
  c.data.val_excerpt_seconds = 0.2
  c.data.val_max_excerpts = 4
  c.batch_size = 4
  c.num_epochs = 1
  c.log_every_steps = 2
  c.eval_every_steps = 0  # each epoch end
  c.checkpoint_every_steps = 4
  c.num_audio_examples = 1


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/experiment.py[:variant]` by calling its `get_config(variant)`."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(':')
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f'config file {path!r} does not exist; pass e.g. experiments/dac_16khz.py')
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
