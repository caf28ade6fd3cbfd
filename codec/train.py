"""GAN training of the codec: state, one jitted step that updates both nets, evaluation, the loop.

Shapes: B global batch, T samples, D discriminators, Q quantizer levels.
"""
import dataclasses
import functools
import logging
import math
import signal
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from codec import checkpoint
from codec import codebook_init
from codec import compute
from codec import config as config_lib
from codec import config_rules
from codec import dac_runs
from codec import data
from codec import discriminators
from codec import generator
from codec import health
from codec import logs
from codec import losses
from codec import metrics as metrics_lib
from codec import optimizer
from codec import parallel
from codec import quantizer as rvq

log = logging.getLogger('codec.train')


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32[]
  gen_params: Any
  disc_params: Any
  gen_opt_state: optimizer.AdamWState
  disc_opt_state: optimizer.AdamWState
  # The generator's weight average when config.optim.ema_decay > 0 (else None): evaluation,
  # the best checkpoint's choice and inference use it.
  gen_ema: Any = None
  # f32[Q, K]: how often each code was picked since the last dead-code restart when
  # config.optim.codebook_restart_steps > 0 (else None).
  code_use: Any = None

  @property
  def eval_params(self):
    """The generator weights to evaluate and export: the average when one is kept."""
    return self.gen_params if self.gen_ema is None else self.gen_ema


@dataclasses.dataclass(frozen=True)
class Models:
  """The two nets and their optimizers: static (hashable) parts of the jitted functions."""
  gen: generator.Generator
  disc: discriminators.Discriminators
  gen_opt: optimizer.AdamW
  disc_opt: optimizer.AdamW
  loss: ml_collections.FrozenConfigDict
  sample_rate: int
  ema_decay: float = 0.0  # 0: no weight average
  codebook_restart_steps: int = 0  # 0: no dead-code restarts
  discriminator_warmup_steps: int = 0  # steps that hold the generator's update back
  discriminator_update_probability: float = 1.0  # the chance that a step updates them

  def __hash__(self):
    return id(self)

  def __eq__(self, other):
    return self is other


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails with the offending flag before anything is built or compiled."""
  config_rules.check(config)  # every field's range and the relations between fields
  parallel.check_batch_size(config.batch_size)


def check_validation_set(val_audio: np.ndarray, data_config: ml_collections.ConfigDict) -> None:
  """Fails before the first step when validation has nothing to measure (not after an epoch)."""
  if len(val_audio):
    return
  source = (f'--val_dir {data_config.val_dir}' if data_config.val_dir else
            f'--config.data.val_fraction={data_config.val_fraction} of the data folder')
  raise ValueError(f'validation: {source} gives no usable excerpt (no file, or every file '
                   f'unreadable or quieter than --config.data.silence_db={data_config.silence_db} '
                   'dB); pass --val_dir DIR (a folder of audio to validate on) or a larger '
                   '--config.data.val_fraction.')


def make_models(config: ml_collections.ConfigDict, backend: str | None = None,
                total_steps: int | None = None) -> Models:
  """backend: where the step will run (default: jax's default backend), for codec/compute.py;
  total_steps: the run's (Schedule.total_steps), for the learning rate's optim.cooldown_steps."""
  dtype = jnp.bfloat16 if config.optim.compute_dtype == 'bfloat16' else jnp.float32
  # The generator's optimizer counts only its own updates: none during the discriminators'
  # warm-up, so that its cooldown, too, ends at the run's last step.
  gen_updates = (None if total_steps is None
                 else max(total_steps - config.optim.discriminator_warmup_steps, 0))
  kernels = compute.choose(config.model.kernels, backend or jax.default_backend(),
                           config.optim.compute_dtype)
  # AdamW with DAC's betas and per-step decay after global-norm clipping. A step with a
  # non-finite gradient leaves parameters and optimizer state untouched (the loop then stops the
  # run), so a NaN can never reach a checkpoint.
  return Models(
      gen=generator.Generator.from_config(config.model, dtype=dtype, kernels=kernels,
                                          dac_init=config.dac_init),
      disc=discriminators.Discriminators.from_config(config.discriminator, dtype=dtype,
                                                     kernels=kernels, dac_init=config.dac_init),
      gen_opt=optimizer.AdamW.from_config(config.optim, config.optim.clip_generator,
                                          updates=gen_updates),
      disc_opt=discriminator_optimizer(config, total_steps),
      loss=ml_collections.FrozenConfigDict(config.loss), sample_rate=config.model.sample_rate,
      ema_decay=config.optim.ema_decay,
      codebook_restart_steps=config.optim.codebook_restart_steps,
      discriminator_warmup_steps=config.optim.discriminator_warmup_steps,
      discriminator_update_probability=config.optim.discriminator_update_probability)


def discriminator_optimizer(config: ml_collections.ConfigDict,
                            total_steps: int | None) -> optimizer.AdamW:
  """The discriminators' AdamW. Its schedule counts their own updates, which at
  optim.discriminator_update_probability < 1 are the steps drawn by `updates_discriminators`:
  those are counted ahead (43 us a step, only for a cooldown), so that the rate falls over the
  updates of the run's last optim.cooldown_steps steps and reaches 0 at its last step."""
  opt = optimizer.AdamW.from_config(config.optim, config.optim.clip_discriminator,
                                    updates=total_steps)
  probability = config.optim.discriminator_update_probability
  if probability >= 1.0 or not opt.cooldown:
    return opt
  drawn = [updates_discriminators(probability, config.seed, step) for step in range(total_steps)]
  cooldown_start = max(total_steps - config.optim.cooldown_steps, 0)
  return dataclasses.replace(opt, total=sum(drawn), cooldown=max(sum(drawn[cooldown_start:]), 1))


def create_train_state(models: Models, rng: jax.Array, excerpt_samples: int) -> TrainState:
  gen_rng, disc_rng = jax.random.split(rng)
  audio = jnp.zeros((1, excerpt_samples), jnp.float32)
  gen_params = models.gen.init(gen_rng, audio)['params']
  disc_params = models.disc.init(disc_rng, audio)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), gen_params=gen_params, disc_params=disc_params,
                    gen_opt_state=models.gen_opt.init(gen_params),
                    disc_opt_state=models.disc_opt.init(disc_params),
                    gen_ema=gen_params if models.ema_decay else None,
                    code_use=(jnp.zeros((models.gen.n_codebooks, models.gen.codebook_size))
                              if models.codebook_restart_steps else None))


def _where(keep_new: jax.Array, new, old):
  """Leaf by leaf, `new` where keep_new (bool[]) else `old`: a skipped update in the jitted step."""
  return jax.tree.map(lambda n, o: jnp.where(keep_new, n, o), new, old)


def hold_during_warmup(step: jax.Array, warmup_steps: int, updated, previous):
  """`previous` while step < warmup_steps (only the discriminators train), else `updated`."""
  if not warmup_steps:
    return updated
  return _where(step >= warmup_steps, updated, previous)


def start_from(models: Models, state: TrainState, gen_params, disc_params, sharding) -> TrainState:
  """state with these weights (disc_params None: keep the fresh discriminators) and fresh
  optimizer states, placed with `sharding`."""
  gen_params = jax.device_put(jax.tree.map(jnp.asarray, gen_params), sharding)
  disc_params = state.disc_params if disc_params is None else jax.device_put(
      jax.tree.map(jnp.asarray, disc_params), sharding)
  fresh = jax.jit(lambda g, d: (models.gen_opt.init(g), models.disc_opt.init(d)),
                  out_shardings=sharding)
  gen_opt_state, disc_opt_state = fresh(gen_params, disc_params)
  return state.replace(gen_params=gen_params, disc_params=disc_params, gen_opt_state=gen_opt_state,
                       disc_opt_state=disc_opt_state, gen_ema=_average_from(state, gen_params))


def codebooks_from_data(models: Models, state: TrainState, train_iter, n_batches: int,
                        rng: jax.Array, mesh) -> TrainState:
  """state with each codebook at the k-means centroids of its latents over the next n_batches
  training batches (codec/codebook_init.py), in the weights and their average alike; the
  iterator is rewound, so training then sees those batches as it would have."""
  start = train_iter.get_state()
  encode = jax.jit(functools.partial(codebook_init.encode_latents, models.gen))
  latents = [encode(state.gen_params, parallel.shard_batch(next(train_iter), mesh))
             for _ in range(n_batches)]
  train_iter.set_state(start)
  fit = jax.jit(functools.partial(codebook_init.fit_codebooks, models.gen),
                out_shardings=parallel.replicated(mesh))
  gen_params = fit(state.gen_params, jnp.concatenate(latents), rng)
  return state.replace(gen_params=gen_params, gen_ema=_average_from(state, gen_params))


def _average_from(state: TrainState, gen_params):
  """A weight average restarted at gen_params (None where the run keeps none), in buffers of
  its own: the train step donates the state, and a buffer held twice cannot be donated."""
  return None if state.gen_ema is None else jax.tree.map(jnp.copy, gen_params)


def update_ema(ema, params, decay: float):
  """Exponential moving average of the generator's weights (Yazici et al. 2019,
  arXiv:1806.04498: averaging a GAN generator's weights smooths the oscillation of adversarial
  training and improves the evaluated model at no training cost; Karras et al. 2018 keep one for
  every evaluation). The average starts at the initial weights, like theirs."""
  return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)


def restart_dead_codes(models: Models, step: jax.Array, gen_params, gen_ema, code_use: jax.Array,
                       latents: dict, rng: jax.Array):
  """At every codebook_restart_steps-th step, moves each level's codes that nothing picked since
  the last restart onto latents of this batch (quantizer.restart_dead_codes), in the weights and
  in their average alike (an average of the old and new row would be a code nobody trained).

  code_use: f32[Q, K] picks since the last restart, this step's included; latents: the
  quantizer's sown intermediates (z_e f32[B, N, D] per level). Returns (gen_params, gen_ema,
  code_use, codes restarted f32[]).
  """
  due = (step + 1) % models.codebook_restart_steps == 0
  levels = dict(gen_params['quantizer'])
  ema_levels = None if gen_ema is None else dict(gen_ema['quantizer'])
  keys = jax.random.split(jax.random.fold_in(rng, 1), len(code_use))  # apart from dropout's
  restarted = jnp.zeros((), jnp.float32)
  for i, key in enumerate(keys):
    name = f'levels_{i}'
    z_e = latents[name]['z_e'][0]
    z_e = z_e.reshape(-1, z_e.shape[-1])
    # Nothing counts as dead between restarts, nor when the batch's latents are not finite.
    counts = jnp.where(due & jnp.all(jnp.isfinite(z_e)), code_use[i], 1.0)
    book, dead = rvq.restart_dead_codes(levels[name]['codebook'], counts, z_e, key)
    levels[name] = {**levels[name], 'codebook': book}
    if ema_levels is not None:
      ema_levels[name] = {**ema_levels[name], 'codebook': jnp.where(
          dead[:, None], book, ema_levels[name]['codebook'])}
    restarted = restarted + jnp.sum(dead)
  gen_params = {**gen_params, 'quantizer': levels}
  if gen_ema is not None:
    gen_ema = {**gen_ema, 'quantizer': ema_levels}
  return gen_params, gen_ema, jnp.where(due, 0.0, code_use), restarted


def _split(results):
  """[(logits, features)] over D -> ([logits], [features])."""
  return [r[0] for r in results], [r[1] for r in results]


def _reconstruction_terms(models: Models, audio: jax.Array, recon: jax.Array) -> dict:
  cfg = models.loss
  terms = {'mel_loss': losses.multiscale_mel_loss(
      audio, recon, sample_rate=models.sample_rate, windows=tuple(cfg.mel_windows),
      n_mels=tuple(cfg.mel_bins), clamp=cfg.mel_clamp)}
  # Terms weighted 0 are not computed at all (static config).
  if cfg.waveform_l1_weight:
    terms['waveform_l1'] = losses.waveform_l1_loss(audio, recon)
  if cfg.stft_weight:
    terms['stft_loss'] = losses.multires_stft_loss(audio, recon, windows=tuple(cfg.stft_windows))
  return terms


def generator_objective(models: Models, disc_params, audio, recon, commitment, codebook,
                        adversarial=1.0):
  """The weighted generator loss (DAC's weights act on sums over discriminators) and its terms.

  adversarial: f32[] scale of the adversarial and feature-matching terms (0 during a
  reconstruction-only phase; their values are still reported).
  """
  cfg = models.loss
  real_logits, real_features = _split(
      models.disc.apply({'params': disc_params}, jax.lax.stop_gradient(audio)))
  fake_logits, fake_features = _split(models.disc.apply({'params': disc_params}, recon))
  adv = losses.generator_adversarial_loss(fake_logits=fake_logits, gan=cfg.gan)
  feat = losses.feature_matching_loss(real_features=real_features, fake_features=fake_features)
  terms = _reconstruction_terms(models, audio, recon)
  recon_total = terms['mel_loss'] + cfg.waveform_l1_weight * terms.get('waveform_l1', 0.0) + (
      cfg.stft_weight * terms.get('stft_loss', 0.0))
  vq_total = cfg.commitment_weight * commitment + cfg.codebook_weight * codebook
  total = (cfg.recon_weight * recon_total + cfg.vq_weight * vq_total + adversarial * (
      cfg.feat_weight * jnp.sum(feat) + cfg.adv_weight * jnp.sum(adv)))
  terms.update(gen_loss=total, adv_loss=jnp.mean(adv), feat_loss=jnp.mean(feat),
               commitment_loss=commitment, codebook_loss=codebook)
  # The discriminators' own loss on the same logits: what a step that does not update them
  # reports (no second pass over the audio).
  _, terms['discriminator'] = _discriminator_terms(
      models, real_logits, [jax.lax.stop_gradient(f) for f in fake_logits])
  return total, terms


def _discriminator_terms(models: Models, real: list[jax.Array], fake: list[jax.Array]):
  """(sum of the discriminators' losses, their metrics) from their logits on real and fake."""
  per_disc = losses.discriminator_loss(real_logits=real, fake_logits=fake, gan=models.loss.gan)
  return jnp.sum(per_disc), {
      'disc_loss': jnp.mean(per_disc),
      'real_logit_mean': jnp.mean(jnp.stack([jnp.mean(r) for r in real])),
      'fake_logit_mean': jnp.mean(jnp.stack([jnp.mean(f) for f in fake])),
  }


def discriminator_objective(models: Models, disc_params, audio, recon):
  """Sum over discriminators of their losses on real audio and the stopped reconstruction."""
  both = jnp.concatenate([audio, jax.lax.stop_gradient(recon)])  # one pass over real and fake
  logits, _ = _split(models.disc.apply({'params': disc_params}, both))
  batch = audio.shape[0]
  return _discriminator_terms(models, [l[:batch] for l in logits], [l[batch:] for l in logits])


def _update_discriminators(models: Models, state: TrainState, audio, recon):
  """One AdamW step of the discriminators on real audio and the stopped reconstruction:
  (params, optimizer state, gradient norm, metrics)."""
  (_, disc_metrics), disc_grads = jax.value_and_grad(
      functools.partial(discriminator_objective, models), has_aux=True)(
          state.disc_params, audio, recon)
  disc_params, disc_opt_state, disc_grad_norm = models.disc_opt.update(
      disc_grads, state.disc_opt_state, state.disc_params)
  return disc_params, disc_opt_state, disc_grad_norm, disc_metrics


def updates_discriminators(probability: float, seed: int, step: int) -> bool:
  """Whether the step after `step` updates the discriminators (optim.discriminator_update_
  probability): a draw fixed by (seed, step), so that a resumed run makes the same choices.

  Chosen on the host, between two compiled steps: on XLA's CPU backend a lax.cond around the
  update ran the updating steps 2.4 times slower (1.36 s against 0.57 s, the demo at batch 4).
  """
  return probability >= 1.0 or bool(np.random.default_rng([seed, step]).random() < probability)


def train_step(models: Models, state: TrainState, audio: jax.Array, rng: jax.Array,
               update_discriminators: bool = True):
  """One GAN step in DAC's order. audio: f32[B, T]. Returns (new state, metrics).

  1. generator forward; 2. discriminator update on the stopped reconstruction; 3. generator
  losses against the *updated* discriminator, back-propagated through the saved forward (no
  second generator forward, and no discriminator weight gradients); 4. generator update.
  A step whose losses or gradients are not finite leaves the state unchanged and reports it.
  update_discriminators (static): False skips step 2 (see `updates_discriminators`).
  """
  rng = jax.random.fold_in(rng, state.step)
  # Before loss.adversarial_start_step the generator learns reconstruction alone, while the
  # discriminator already trains on its outputs (Parallel WaveGAN, Yamamoto et al. 2020,
  # arXiv:1910.11480, adds the adversarial loss after an STFT-loss-only phase).
  adversarial = (state.step >= models.loss.adversarial_start_step).astype(jnp.float32)

  def forward(gen_params):
    # The sown intermediates (the latents a dead code restarts from) cost nothing unless used.
    out, inter = models.gen.apply({'params': gen_params}, audio, dropout_rng=rng,
                                  mutable=['intermediates'])
    aux = (out.codes, out.level_mask, inter['intermediates']['quantizer'])
    return (out.audio, out.commitment_loss, out.codebook_loss), aux

  (recon, commitment, codebook), gen_vjp, (codes, level_mask, latents) = jax.vjp(
      forward, state.gen_params, has_aux=True)
  code_counts = metrics_lib.code_counts(codes, models.gen.codebook_size, level_mask)

  if update_discriminators:
    disc_params, disc_opt_state, disc_grad_norm, disc_metrics = _update_discriminators(
        models, state, audio, recon)
  else:
    disc_params, disc_opt_state, disc_grad_norm = (state.disc_params, state.disc_opt_state,
                                                   jnp.zeros(()))
  (_, gen_terms), output_grads = jax.value_and_grad(
      functools.partial(generator_objective, models, disc_params, adversarial=adversarial),
      argnums=(1, 2, 3), has_aux=True)(audio, recon, commitment, codebook)
  # A step that holds the discriminators reports their loss as they stand, from this pass.
  held_metrics = gen_terms.pop('discriminator')
  if not update_discriminators:
    disc_metrics = held_metrics
  (gen_grads,) = gen_vjp(output_grads)
  gen_params, gen_opt_state, gen_grad_norm = models.gen_opt.update(
      gen_grads, state.gen_opt_state, state.gen_params)
  gen_params, gen_opt_state = hold_during_warmup(
      state.step, models.discriminator_warmup_steps, (gen_params, gen_opt_state),
      (state.gen_params, state.gen_opt_state))

  gen_ema = (None if state.gen_ema is None else
             update_ema(state.gen_ema, gen_params, models.ema_decay))
  code_use, restart_metrics = state.code_use, {}
  if code_use is not None:
    gen_params, gen_ema, code_use, restarted = restart_dead_codes(
        models, state.step, gen_params, gen_ema, code_use + code_counts, latents, rng)
    restart_metrics['codes_restarted'] = restarted
  new_state = TrainState(step=state.step + 1, gen_params=gen_params, disc_params=disc_params,
                         gen_opt_state=gen_opt_state, disc_opt_state=disc_opt_state,
                         gen_ema=gen_ema, code_use=code_use)
  finite = jnp.isfinite(gen_grad_norm + disc_grad_norm + gen_terms['gen_loss'] +
                        disc_metrics['disc_loss'])
  # Both nets skip together: a non-finite loss or gradient of either leaves both (and their
  # optimizer states) as they were; only the step count moves on, with the data.
  new_state = _where(finite, new_state, state.replace(step=state.step + 1))

  step_metrics = {
      **gen_terms, **disc_metrics,
      'gen_grad_norm': gen_grad_norm,
      'disc_grad_norm': disc_grad_norm,
      'gen_param_norm': optimizer.global_norm(state.gen_params),
      'disc_param_norm': optimizer.global_norm(state.disc_params),
      # The rate this step's update used: skipped (non-finite) steps do not advance it.
      'learning_rate': models.gen_opt.learning_rate_at(state.gen_opt_state.count),
      'snr_db': jnp.mean(metrics_lib.snr_db(audio, recon)),
      'amplitude_ratio': jnp.mean(metrics_lib.amplitude_ratio(audio, recon)),
      # f32[Q, K], summed over log intervals on device (logs.codebook_fields reads them).
      'code_counts': code_counts,
      'nonfinite': 1.0 - finite.astype(jnp.float32),
      **({'disc_updated': jnp.float32(update_discriminators)}
         if models.discriminator_update_probability < 1.0 else {}),
      **restart_metrics,
  }
  return new_state, step_metrics


def _rate_distortion(models: Models, gen_params, audio: jax.Array, prefixes: jax.Array):
  """Reconstructions with 1..Q levels: prefixes f32[Q, B, N, C] -> (f32[Q, B, T], snr and mel
  distance f32[B, Q]). One decoder in a loop over levels (compiled once, whatever Q)."""
  length = audio.shape[-1]
  cfg = models.loss

  def level(z_q):
    recon = models.gen.apply({'params': gen_params}, z_q,
                             method=generator.Generator.decode_latent)[:, :length]
    mel = losses.multiscale_mel_distance(
        audio, recon, sample_rate=models.sample_rate, windows=tuple(cfg.mel_windows),
        n_mels=tuple(cfg.mel_bins), clamp=cfg.mel_clamp)
    return recon, metrics_lib.snr_db(audio, recon), mel

  recons, snr, mel = jax.lax.map(level, prefixes)
  return recons, snr.T, mel.T


def eval_step(models: Models, gen_params, disc_params, audio: jax.Array, weights: jax.Array):
  """Validation on fixed excerpts, audio: f32[B, T], weights: f32[B] (0 for padding rows).

  Returns (per-item metrics, f32[B] or f32[B, Q] for the rate-distortion and per-level entries;
  the reconstruction with every level f32[B, T]; weighted code counts f32[Q, K]).
  """
  (q, prefixes), inter = models.gen.apply(
      {'params': gen_params}, audio, method=generator.Generator.latents_by_level,
      mutable=['intermediates'])
  recons, rd_snr, rd_mel = _rate_distortion(models, gen_params, audio, prefixes)
  recon = recons[-1]
  _, terms = generator_objective(models, disc_params, audio, recon, q.commitment_loss,
                                 q.codebook_loss)
  disc_terms = terms.pop('discriminator')
  batch = audio.shape[0]
  levels = inter['intermediates']['quantizer']
  per_item = {
      'snr_db': metrics_lib.snr_db(audio, recon),
      'si_sdr_db': metrics_lib.si_sdr_db(audio, recon),
      'amplitude_ratio': metrics_lib.amplitude_ratio(audio, recon),
      'mel_distance': rd_mel[:, -1],
      'rd_snr_db': rd_snr,
      'rd_mel_distance': rd_mel,
      'latent_norm': jnp.stack([levels[f'levels_{i}']['z_e_norm'][0]
                                for i in range(models.gen.n_codebooks)], axis=1),
  }
  # Batch-level losses are broadcast so every entry has the per-item shape.
  per_item.update({k: jnp.broadcast_to(v, (batch,)) for k, v in {**terms, **disc_terms}.items()})
  counts = metrics_lib.code_counts(q.codes, models.gen.codebook_size, weights=weights)
  return per_item, recon, counts


def evaluate(eval_fn, state: TrainState, val_audio: np.ndarray, batch_size: int, mesh):
  """Averages eval_fn over the fixed validation excerpts, in fixed-size (padded) batches.

  Returns (means: floats, or f32[Q] for per-level entries; reconstructions f32[N, T]; code
  counts f32[Q, K] summed on device over the excerpts).
  """
  n = len(val_audio)
  padded = math.ceil(n / batch_size) * batch_size
  audio = np.concatenate([val_audio, val_audio[:padded - n]]) if padded > n else val_audio
  weights = (np.arange(padded) < n).astype(np.float32)
  sums, recons, counts = {}, [], None
  for start in range(0, padded, batch_size):
    chunk = parallel.shard_global(audio[start:start + batch_size], mesh)
    chunk_weights = parallel.shard_global(weights[start:start + batch_size], mesh)
    values, recon, chunk_counts = eval_fn(state.eval_params, state.disc_params, chunk,
                                          chunk_weights)
    counts = chunk_counts if counts is None else counts + chunk_counts
    values, recon = jax.device_get((values, recon))
    valid = slice(0, max(0, min(batch_size, n - start)))
    for k, v in values.items():
      sums[k] = sums.get(k, 0.0) + np.sum(np.asarray(v[valid], np.float64), axis=0)
    recons.append(recon[valid])
  means = {k: (float(v) if np.ndim(v) == 0 else v) / n for k, v in sums.items()}
  return means, np.concatenate(recons), np.asarray(jax.device_get(counts))


class _Interrupt:
  """Ctrl+C or SIGTERM (a preemption) asks the loop to checkpoint and stop; a second one exits at
  once."""

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.requested = False
    self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

  def _handle(self, signum, frame):
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True
    log.warning(f'{signal.Signals(signum).name}: saving a checkpoint, then stopping (Ctrl+C again '
                'to quit now).')

  def stop_now(self, log_step: bool) -> bool:
    """Whether every host stops after this step. Across hosts a signal one host saw is shared at
    log steps (an all-gather), so all of them reach the collective save together."""
    if jax.process_count() == 1:
      return self.requested
    return log_step and bool(np.max(parallel.all_processes(np.int32(self.requested))))

  def restore(self):
    for s, previous in self._previous.items():
      signal.signal(s, previous)


class TrainingStopped(RuntimeError):
  """Raised when a non-finite step or a red health flag (with stop_on_red_flag) ends the run."""


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When the loop logs, checkpoints and evaluates; steps count from 1 over the whole run.

  Epochs are the unit of the data order only. Evaluation (validation, TensorBoard, metrics.jsonl,
  the health verdict and the best checkpoint) runs every `eval_every` steps, counted from the start
  of the run so a resumed run keeps the same points, and after the last step.
  """
  steps_per_epoch: int
  total_steps: int
  eval_every: int
  log_every: int
  checkpoint_every: int

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: int) -> 'Schedule':
    total = steps_per_epoch * config.num_epochs
    if config.max_steps:
      total = min(total, config.max_steps)
    # eval_every_steps 0: at each epoch end (and after the last step).
    return cls(steps_per_epoch=steps_per_epoch, total_steps=total,
               eval_every=config.eval_every_steps or steps_per_epoch,
               log_every=config.log_every_steps, checkpoint_every=config.checkpoint_every_steps)

  def epoch_of(self, step: int) -> int:
    """The 1-based epoch whose data step `step` (>= 1) trains on."""
    return (step - 1) // self.steps_per_epoch + 1

  def fractional_epoch(self, step: int) -> float:
    """Epochs done after `step` steps: an int at epoch ends, e.g. 1.5 half-way through epoch 2."""
    whole, rest = divmod(step, self.steps_per_epoch)
    return whole if rest == 0 else round(step / self.steps_per_epoch, 4)

  def on_schedule(self, step: int) -> bool:
    """A regular evaluation point (not the extra one after a run stopped by max_steps)."""
    return step % self.eval_every == 0

  def evaluates(self, step: int) -> bool:
    return self.on_schedule(step) or step == self.total_steps

  def logs(self, step: int) -> bool:
    return step % self.log_every == 0 or self.evaluates(step)

  def checkpoints(self, step: int) -> bool:
    # An evaluation saves its own checkpoint.
    return step % self.checkpoint_every == 0 and not self.evaluates(step)


def _records_state(interval: logs.IntervalAccumulator, pending: list, code_counts) -> dict:
  """The records' accumulators as JSON, saved with a checkpoint: the evaluation interval's steps
  and codes, and the log interval's steps and codes not fetched yet (see `_flush`). A run resumed
  from the checkpoint then writes the records an uninterrupted run writes."""
  pending, code_counts = jax.device_get((pending, code_counts))
  return {'interval': interval.to_json(), 'pending': logs.steps_to_json(pending),
          'pending_code_counts': logs.array_to_json(code_counts)}


def _restore(ckpt, state, train_iter, run, frame_rate: float):
  """From the run directory's latest checkpoint (else the given state, nothing accumulated):
  (state, history, interval accumulator, pending step metrics, pending code counts f32[Q, K])."""
  restored = ckpt.restore_latest(state)
  if restored is None:
    return state, [], logs.IntervalAccumulator(frame_rate), [], None
  state, data_state, history, records = restored
  step = int(state.step)
  # A run stopped by max_steps evaluates its last step off the schedule; resuming drops that record
  # (its checkpoint kept the accumulators, so the next regular evaluation covers its steps).
  history = [r for r in history if not r['partial']]
  train_iter.set_state(data_state)
  run.rewrite_history(history)
  run.info(f'Resumed from step {step} in {run.dir}')
  if records is None:
    if not history or history[-1]['step'] != step:  # else nothing had accumulated
      run.info(f'Note: checkpoint {step} was written without the records\' accumulators (an '
               'older version): the next record in metrics.jsonl averages only the steps from '
               f'{step + 1} on.')
    return state, history, logs.IntervalAccumulator(frame_rate), [], None
  interval = logs.IntervalAccumulator.from_json(frame_rate, records['interval'])
  return (state, history, interval, logs.steps_from_json(records['pending']),
          logs.array_from_json(records['pending_code_counts']))


def _flush(run, pending: list, code_counts, step: int, interval: logs.IntervalAccumulator,
           progress) -> None:
  """Fetches the steps run since the last flush (the only host sync between evaluations).

  code_counts: f32[Q, K], the log interval's codes, summed on device.
  """
  fetched, code_counts = jax.device_get((pending, code_counts))
  pending.clear()
  if any(m['nonfinite'] for m in fetched):
    raise TrainingStopped(run.nonfinite_report(step, fetched))
  interval.add(fetched, code_counts)
  run.log_train(step, fetched, code_counts, interval.frame_rate)
  progress.set_postfix(logs.postfix(fetched[-1]))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Trains for config.num_epochs (resuming from workdir's checkpoints); returns the evaluations."""
  check_config(config)
  # Read and checked against this config before anything compiles.
  init_weights = dac_runs.initial_weights(config) if config.init_from else None
  run = logs.RunLog(workdir, config)
  mesh = parallel.make_mesh()
  datasets = data.make_datasets(
      config.data, sample_rate=config.model.sample_rate, global_batch_size=config.batch_size,
      seed=config.seed, cache_dir=workdir, process_index=jax.process_index(),
      process_count=jax.process_count())  # logs its own summary
  check_validation_set(datasets.val_audio, config.data)

  schedule = Schedule.from_config(config, datasets.steps_per_epoch)
  models = make_models(config, total_steps=schedule.total_steps)
  excerpt = config_lib.excerpt_samples(config)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  replicated = parallel.replicated(mesh)
  state = jax.jit(functools.partial(create_train_state, models, excerpt_samples=excerpt),
                  out_shardings=replicated)(init_rng)
  run.info(f'generator parameters: {logs.count_params(state.gen_params):,}; '
           f'discriminator parameters: {logs.count_params(state.disc_params):,}; '
           f'devices: {jax.device_count()} ({jax.default_backend()}), hosts: {jax.process_count()}')

  if init_weights is not None:  # a checkpoint of this run, if any, still wins (resume)
    state = start_from(models, state, *init_weights, replicated)
    run.info(f'Weights from {config.init_from}'
             f'{"" if init_weights[1] is not None else " (generator; fresh discriminators)"}')
  ckpt = checkpoint.Checkpointer(workdir, config)
  train_iter = datasets.train_iterator()
  frame_rate = config.model.sample_rate / models.gen.hop_length
  state, history, interval, pending, code_counts = _restore(ckpt, state, train_iter, run,
                                                            frame_rate)
  if int(state.step) == 0 and config.optim.codebook_kmeans_batches:
    state = codebooks_from_data(models, state, train_iter, config.optim.codebook_kmeans_batches,
                                jax.random.fold_in(init_rng, 1), mesh)
    run.info(f'Codebooks from k-means of the latents of the first '
             f'{config.optim.codebook_kmeans_batches} batches')
  step_fn = jax.jit(functools.partial(train_step, models), donate_argnums=0,
                    out_shardings=(replicated, replicated),
                    static_argnames=('update_discriminators',))
  # Replicated outputs: every host can read the validation results (multi-host included).
  eval_fn = jax.jit(functools.partial(eval_step, models), out_shardings=replicated)
  run.log_hparams(config)
  interrupt = _Interrupt()
  step = int(state.step)
  first_step = step + 1
  try:
    while step < schedule.total_steps:
      epoch = schedule.epoch_of(step + 1)
      progress = run.progress(epoch, schedule.steps_per_epoch,
                              initial=step - (epoch - 1) * schedule.steps_per_epoch,
                              audio_per_step=config.batch_size * config.data.excerpt_seconds)
      while step < schedule.total_steps and schedule.epoch_of(step + 1) == epoch:
        batch = parallel.shard_batch(next(train_iter), mesh)
        state, step_metrics = step_fn(state, batch, step_rng, update_discriminators=(
            updates_discriminators(models.discriminator_update_probability, config.seed, step)))
        counts = step_metrics.pop('code_counts')
        code_counts = counts if code_counts is None else code_counts + counts
        pending.append(step_metrics)
        step += 1
        progress.update(1)
        # The first step of a (re)started run is logged at once: its losses say early whether the
        # run is set up right.
        stop = interrupt.stop_now(schedule.logs(step))
        if schedule.logs(step) or step == first_step or stop:
          _flush(run, pending, code_counts, step, interval, progress)
          code_counts = None
        if schedule.checkpoints(step):
          ckpt.save(step, state, train_iter.get_state(), history,
                    _records_state(interval, pending, code_counts))
        if stop:
          ckpt.save(step, state, train_iter.get_state(), history,
                    _records_state(interval, pending, code_counts), wait=True)
          run.info(f'Saved step {step}; run the same command again to resume.')
          return history
        if schedule.evaluates(step):
          progress.clear()
          # The evaluation's checkpoint starts the next interval, but for an evaluation off the
          # schedule (the last step of a max_steps run): a resume drops that record, and the
          # next regular one covers its steps.
          carried = interval if not schedule.on_schedule(step) else logs.IntervalAccumulator(
              frame_rate)
          record = _evaluate(run, ckpt, eval_fn, state, datasets, config, mesh, schedule, step,
                             interval.summary(), history, train_iter,
                             _records_state(carried, [], None))
          interval = logs.IntervalAccumulator(frame_rate)
          history.append(record)
          _judge(run, history, config)
          progress.refresh()
      progress.close()
  finally:
    interrupt.restore()
    ckpt.close()
    run.close()
  return history


def _evaluate(run, ckpt, eval_fn, state, datasets, config, mesh, schedule, step, train_summary,
              history, train_iter, records: dict) -> dict:
  """Validation, logs and checkpoints after `step` (records: the accumulators to save with
  them); returns the evaluation's record."""
  start = time.time()
  val, recon, code_counts = evaluate(eval_fn, state, datasets.val_audio, config.batch_size, mesh)
  frame_rate = config.model.sample_rate / math.prod(config.model.encoder_rates)
  codebook_norms = codebook_row_norms(state.eval_params)
  record = make_record(step, schedule, train_summary, val,
                       logs.codebook_fields(code_counts, frame_rate), codebook_norms)
  record['val_seconds'] = time.time() - start
  run.log_evaluation(record, datasets.val_audio, recon, config.model.sample_rate,
                     config.num_audio_examples, first=not history, code_counts=code_counts,
                     frame_rate=frame_rate, codebook_norms=codebook_norms)
  ckpt.save(step, state, train_iter.get_state(), history + [record], records)
  ckpt.save_best(step, state, train_iter.get_state(), history + [record], val['mel_distance'],
                 records)
  return record


def codebook_row_norms(gen_params) -> list[np.ndarray]:
  """The L2 norm of every codebook row, per level: [f32[K]] * Q."""
  quantizer = jax.device_get(gen_params['quantizer'])
  return [np.linalg.norm(np.asarray(quantizer[f'levels_{i}']['codebook']), axis=-1)
          for i in range(len(quantizer))]


def make_record(step: int, schedule: Schedule, train_summary: dict, val: dict,
                codebook: dict, codebook_norms: list[np.ndarray]) -> dict:
  """One metrics.jsonl line: where (step, fractional epoch), training-interval means, validation,
  the validation codes' statistics (`logs.codebook_fields`), rate-distortion points and norms.

  Training-batch SNR and amplitude (quantizer dropout included) keep a train_ prefix: the
  unprefixed names are the validation figures the health monitor reads. rd_snr_db[n - 1] and
  rd_mel_distance[n - 1] are the validation figures with the first n levels.
  """
  train_summary = {('train_' + k if k in ('snr_db', 'amplitude_ratio') else k): v
                   for k, v in train_summary.items()}
  val = dict(val)
  by_level = {'rd_snr_db': val.pop('rd_snr_db'), 'rd_mel_distance': val.pop('rd_mel_distance'),
              'latent_norm_per_level': val.pop('latent_norm'),
              'codebook_norm_per_level': [float(np.mean(n)) for n in codebook_norms]}
  return {'step': step, 'epoch': schedule.fractional_epoch(step),
          'partial': not schedule.on_schedule(step),
          **train_summary,
          **{f'val_{k}': v for k, v in val.items()},
          'snr_db': val['snr_db'], 'si_sdr_db': val['si_sdr_db'],
          'amplitude_ratio': val['amplitude_ratio'], 'mel_distance': val['mel_distance'],
          **codebook,
          **{k: [float(x) for x in v] for k, v in by_level.items()}}


def _judge(run, history: list[dict], config: ml_collections.ConfigDict) -> None:
  """The health verdict on the latest evaluation; stops the run on red with stop_on_red_flag."""
  record = history[-1]
  flags = health.assess(history, config.health, config.loss.gan)
  report = run.report_health(record, flags)
  if config.health.stop_on_red_flag and health.red_flags(flags):
    raise TrainingStopped(f'red flag at step {record["step"]} (epoch {record["epoch"]}, '
                          f'--stop_on_red_flag); see {report}')
