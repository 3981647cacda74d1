"""The three trainers (mask AE, image VAE, latent diffusion) and ``train_all``.

One generic step loop serves all stages: AdamW, AMP (bf16 autocast) on CUDA, DDP when
launched by ``torchrun`` (WORLD_SIZE > 1; gloo on CPU, nccl on CUDA) with no code change,
resumable checkpoints (model, optimiser, EMA, step, sampler and timestep-sampler state),
a per-step CSV log (+ TensorBoard when installed), a tqdm bar on rank 0, and a step and/or
wall-time budget.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model.bundle.loaded import Networks, build_networks, build_process, save_bundle
from model.bundle.manifest import LatentScale, read_manifest
from model.hardware import cpu_has_fast_bfloat16, cpu_model
from model.diffusion.timestep_sampling import LossSecondMomentSampler, UniformSampler
from model.nets.autoencoder import MaskAutoencoder, build_image_vae, encode_image_mean, image_condition
from model.targets.vocabulary import Vocabulary, default_vocabulary
from training.augmentation.augment import PatchAugmenter
from training.augmentation.contrast_phase import ContrastPhaseAugmenter
from training.config import StageConfig, TrainConfig, learning_rate
from training.data import Batch, PatchSampler, prepare_sources, read_dataset, restrict_targets, select_cases
from training.finetune import inherited_latent_scale, initial_weights
from training.losses import mask_ae_loss, vae_loss
from training.provenance import portable_provenance

log = logging.getLogger(__name__)

STAGES = ("mask-ae", "image-vae", "diffusion")


# --------------------------------------------------------------------------- context
@dataclass
class TrainContext:
    config: TrainConfig
    vocabulary: Vocabulary
    device: torch.device
    sampler: PatchSampler
    annotated: tuple[str, ...]
    rank: int = 0
    world_size: int = 1
    started: float = field(default_factory=time.time)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def out(self) -> Path:
        return self.config.out

    def checkpoint_path(self, stage: str) -> Path:
        return self.out / "checkpoints" / f"{stage}.pt"


@contextmanager
def distributed(device_hint: str | None) -> Iterator[tuple[int, int, torch.device]]:
    """Initialise torch.distributed when launched by torchrun; yields (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        device = torch.device(device_hint) if device_hint else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        yield 0, 1, device
        return
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_hint != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        yield rank, world, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    finally:
        dist.barrier()
        dist.destroy_process_group()


def contrast_augmenter(config: TrainConfig, vocabulary: Vocabulary) -> ContrastPhaseAugmenter | None:
    """The contrast-phase augmenter when augmentation is on and its probability is above 0."""
    aug, pre = config.augment, config.model.preprocess
    if not aug.enabled or aug.contrast_phase_prob <= 0:
        return None
    return ContrastPhaseAugmenter(vocabulary, pre.intensity_min, pre.intensity_max, aug.contrast_phase_prob)


def make_context(config: TrainConfig, rank: int, world: int, device: torch.device) -> TrainContext:
    vocabulary = default_vocabulary()
    sources = select_cases([read_dataset(path, vocabulary) for path in config.data], exclude=config.exclude_cases)
    cases = prepare_sources(sources, vocabulary, config.model.preprocess, config.cache_dir)
    annotated = sorted({name for s in sources for name in s.label_map.annotated}, key=lambda n: vocabulary.get(n).id)
    if config.targets is not None:
        cases, annotated = restrict_targets(
            cases, annotated, [t.name for t in vocabulary.resolve(list(config.targets))], vocabulary
        )
    sampler = PatchSampler(
        cases, config.model.preprocess.patch_size, foreground_prob=config.foreground_prob, seed=config.seed * 1000 + rank,
        dataset_weights=config.dataset_weights, context_slices=config.model.denoiser.context_slices,
        augment=PatchAugmenter(config.augment) if config.augment.enabled else None,
        contrast=contrast_augmenter(config, vocabulary),
        negative_prob=config.negative_prob,
        negative_margin=max(1, round(config.negative_margin_mm / config.model.preprocess.spacing[2])),
    )
    return TrainContext(config, vocabulary, device, sampler, tuple(annotated), rank, world)


# --------------------------------------------------------------------------- generic loop
class StepLog:
    """Per-step CSV (and TensorBoard if available), rank 0 only."""

    def __init__(self, path: Path, enabled: bool, start_step: int = 0) -> None:
        self.enabled = enabled
        self.path = path
        self._writer: Any = None
        self._tb: Any = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._drop_rows_after(start_step)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(path.parent / "tensorboard" / path.stem))
            except ImportError:
                self._tb = None

    def _drop_rows_after(self, step: int) -> None:
        """Rows past the checkpoint being resumed (written before a crash) would be logged twice."""
        if not self.path.is_file():
            return
        with self.path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        kept = rows[:1] + [row for row in rows[1:] if row and int(float(row[0])) <= step]
        if len(kept) == len(rows):
            return
        if len(kept) == 1:
            self.path.unlink()
            return
        with self.path.open("w", newline="") as fh:
            csv.writer(fh).writerows(kept)

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["step", *values])
            if new:
                writer.writeheader()
            writer.writerow({"step": step, **{k: f"{v:.6g}" for k, v in values.items()}})
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


@dataclass
class StageResult:
    steps: int
    seconds: float
    final: dict[str, float]


def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int | None = None) -> None:
    """EMA with warm-up: the effective decay is min(decay, (1+step)/(10+step)), so short runs
    are not dominated by the initial weights."""
    if step is not None:
        decay = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        for e, b in zip(ema.buffers(), model.buffers(), strict=True):
            e.copy_(b)


def run_stage(
    ctx: TrainContext,
    name: str,
    stage: StageConfig,
    model: nn.Module,
    step_fn: Callable[[nn.Module, Batch], dict[str, torch.Tensor]],
    *,
    ema_decay: float | None = None,
    extra_state: Callable[[], dict[str, Any]] | None = None,
    load_extra_state: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[nn.Module, StageResult]:
    """Train ``model`` with ``step_fn`` for the stage's budget; returns (EMA or model, result).

    A fresh stage starts from the fine-tuning bundle's weights (``init_from``); a stage with a
    checkpoint resumes from it. Then :func:`_train_step` runs until the step or wall-time
    budget is spent, with a checkpoint every ``checkpoint_every`` steps and one at the end.
    """
    _load_initial_weights(ctx, name, model)
    model.to(ctx.device).train()
    ema = deepcopy(model).eval().requires_grad_(False) if ema_decay is not None else None
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=stage.lr, weight_decay=stage.weight_decay
    )
    resumed = _resume(ctx, name, model, optimizer, ema, load_extra_state)
    run = _StageRun(ctx, name, model, ema, ema_decay, optimizer, extra_state, resumed.step, resumed.seconds)
    if run.step >= stage.steps:
        return _keep_without_training(run, resumed)
    _train_within_budget(run, stage, step_fn)
    run.save()
    model.eval()
    return run.trained, StageResult(run.step, time.time() - run.started, run.final())


@dataclass(frozen=True)
class _Resumed:
    """Where a stage's checkpoint left off (all zero for a fresh stage)."""

    step: int = 0
    seconds: float = 0.0  # wall time of the runs before this one
    final: dict[str, float] = field(default_factory=dict)


@dataclass
class _StageRun:
    """One stage in training: what :meth:`save` writes and what :func:`_train_step` advances."""

    ctx: TrainContext
    name: str
    model: nn.Module
    ema: nn.Module | None
    ema_decay: float | None
    optimizer: torch.optim.Optimizer
    extra_state: Callable[[], dict[str, Any]] | None
    step: int
    seconds_before: float
    started: float = field(default_factory=time.time)
    recent: dict[str, list[float]] = field(default_factory=dict)  # the last 50 values of each loss term

    @property
    def trained(self) -> nn.Module:
        return self.ema or self.model

    def remember(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.recent.setdefault(k, []).append(v)
            self.recent[k] = self.recent[k][-50:]

    def final(self) -> dict[str, float]:
        return {k: float(np.mean(v)) for k, v in self.recent.items()}

    def save(self) -> None:
        """Checkpoint at the current step: every rank's data stream, written by rank 0 (atomically)."""
        ctx = self.ctx
        mine = {"sampler": ctx.sampler.state(), "extra": None if self.extra_state is None else self.extra_state()}
        ranks: list[Any] = [mine]
        if ctx.world_size > 1:  # every rank calls save() at the same steps
            ranks = [None] * ctx.world_size
            dist.all_gather_object(ranks, mine)
        if not ctx.is_main:
            return
        ckpt_path = ctx.checkpoint_path(self.name)
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "ema": None if self.ema is None else self.ema.state_dict(),
                "step": self.step,
                "sampler": mine["sampler"],
                "extra": mine["extra"],
                "ranks": ranks,
                "final": self.final(),
                "seconds": self.seconds_before + time.time() - self.started,
            },
            tmp,
        )
        tmp.replace(ckpt_path)


def _load_initial_weights(ctx: TrainContext, name: str, model: nn.Module) -> None:
    """A stage without a checkpoint starts from the ``init_from`` bundle's weights, when there is one."""
    if ctx.checkpoint_path(name).is_file():
        return
    start_weights = initial_weights(ctx.config, ctx.vocabulary, name, fresh=model.state_dict())
    if start_weights is not None:
        model.load_state_dict(start_weights)
        log.info("%s: starting from the weights of bundle %s", name, ctx.config.init_from)


def _resume(
    ctx: TrainContext,
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: nn.Module | None,
    load_extra_state: Callable[[dict[str, Any]], None] | None,
) -> _Resumed:
    """Load the stage's checkpoint into model, optimiser, EMA and this rank's data stream, if there is one."""
    ckpt_path = ctx.checkpoint_path(name)
    if not ckpt_path.is_file():
        return _Resumed()
    state = torch.load(ckpt_path, map_location=ctx.device, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    start_step = int(state["step"])
    # Each rank resumes its own data stream (``ranks``: one entry per rank of the saving run);
    # a rank the saving run did not have keeps its fresh, rank-seeded stream.
    ranks = state.get("ranks") or [{"sampler": state["sampler"], "extra": state.get("extra")}]
    if ctx.rank < len(ranks):
        ctx.sampler.set_state(ranks[ctx.rank]["sampler"])
        if load_extra_state is not None and ranks[ctx.rank]["extra"] is not None:
            load_extra_state(ranks[ctx.rank]["extra"])
    log.info("%s: resumed from %s at step %d", name, ckpt_path, start_step)
    return _Resumed(start_step, float(state.get("seconds", 0.0)), state.get("final", {}))


def _keep_without_training(run: _StageRun, resumed: _Resumed) -> tuple[nn.Module, StageResult]:
    """The budget is already spent: the resumed network, or (``steps: 0`` with ``init_from``) the bundle's, as is."""
    if not run.ctx.checkpoint_path(run.name).is_file():
        run.save()
        log.info("%s: 0 steps: kept the network of bundle %s", run.name, run.ctx.config.init_from)
    return run.trained, StageResult(run.step, 0.0, resumed.final)


def _train_within_budget(
    run: _StageRun, stage: StageConfig, step_fn: Callable[[nn.Module, Batch], dict[str, torch.Tensor]]
) -> None:
    """Optimizer steps until ``stage.steps`` or ``stage.max_minutes``: logged, shown and checkpointed."""
    ctx = run.ctx
    wrapped: nn.Module = DistributedDataParallel(run.model) if ctx.world_size > 1 else run.model
    step_log = StepLog(ctx.out / "logs" / f"{run.name}.csv", ctx.is_main, run.step)
    bar = tqdm(total=stage.steps, initial=run.step, desc=run.name, disable=not ctx.is_main, leave=False)
    try:
        while run.step < stage.steps:
            values = _train_step(run, stage, wrapped, step_fn)
            if run.step % stage.log_every == 0 or run.step == stage.steps:
                lr = run.optimizer.param_groups[0]["lr"]
                step_log.write(run.step, {**values, "lr": lr, "seconds": time.time() - run.started})
                bar.set_postfix(loss=f"{np.mean(run.recent['loss']):.4f}")
            bar.update(1)
            if run.step % stage.checkpoint_every == 0:
                run.save()
            if _out_of_time(ctx, stage, run.started):
                log.info("%s: time budget of %.1f min reached at step %d", run.name, stage.max_minutes, run.step)
                break
    finally:
        bar.close()
        step_log.close()


def _train_step(
    run: _StageRun,
    stage: StageConfig,
    wrapped: nn.Module,
    step_fn: Callable[[nn.Module, Batch], dict[str, torch.Tensor]],
) -> dict[str, float]:
    """One optimizer step on one batch (bf16 autocast on CUDA), then the EMA; returns the loss terms."""
    device = run.ctx.device
    batch = run.ctx.sampler.batch(stage.batch_size)
    batch = Batch(batch.images.to(device), batch.masks.to(device), batch.target_ids.to(device))
    with torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext():
        terms = step_fn(wrapped, batch)
    run.optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(stage, run.step)
    run.optimizer.step()
    if run.ema is not None and run.ema_decay is not None:
        update_ema(run.ema, run.model, run.ema_decay, run.step)
    run.step += 1
    values = {k: float(v.detach()) for k, v in terms.items()}
    run.remember(values)
    return values


def _out_of_time(ctx: TrainContext, stage: StageConfig, started: float) -> bool:
    """Whether the wall-time budget is spent; under DDP, on any rank (so all ranks stop together)."""
    out_of_time = stage.max_minutes is not None and (time.time() - started) > 60 * stage.max_minutes
    if ctx.world_size > 1:
        flag = torch.tensor([1.0 if out_of_time else 0.0], device=ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        out_of_time = bool(flag.item() > 0)
    return out_of_time


# --------------------------------------------------------------------------- stages
def train_mask_ae(ctx: TrainContext) -> tuple[MaskAutoencoder, StageResult]:
    torch.manual_seed(ctx.config.seed)
    model = MaskAutoencoder(ctx.config.model.mask_ae)

    def step(net: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        return mask_ae_loss(net(batch.masks).float(), batch.masks)

    trained, result = run_stage(ctx, "mask-ae", ctx.config.mask_ae, model, step)
    return trained, result  # type: ignore[return-value]


def _perceptual_loss(ctx: TrainContext) -> nn.Module | None:
    stage = ctx.config.image_vae
    if stage.perceptual_weight <= 0:
        log.info("image-vae: perceptual (LPIPS) term off (perceptual_weight = 0)")
        return None
    if stage.perceptual_weights is None or not Path(stage.perceptual_weights).is_file():
        log.warning(
            "image-vae: perceptual term requested but no local weights were given (pretrained VGG/LPIPS "
            "cannot be downloaded here); training without it"
        )
        return None
    try:
        from monai.losses import PerceptualLoss

        return PerceptualLoss(spatial_dims=2, network_type="vgg", pretrained=True, pretrained_path=str(stage.perceptual_weights)).to(ctx.device)
    except Exception as exc:  # missing lpips/torchvision, bad weights file
        log.warning("image-vae: perceptual term unavailable (%s); training without it", exc)
        return None


def train_image_vae(ctx: TrainContext) -> tuple[nn.Module, StageResult]:
    torch.manual_seed(ctx.config.seed + 1)
    model = build_image_vae(ctx.config.model.image_vae)
    stage = ctx.config.image_vae
    perceptual = _perceptual_loss(ctx)

    def step(net: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        recon, mu, sigma = net(batch.slices)
        p = perceptual(recon.float(), batch.slices) if perceptual is not None else None
        return vae_loss(recon.float(), batch.slices, mu.float(), sigma.float(), stage.kl_weight, p, stage.perceptual_weight)

    return run_stage(ctx, "image-vae", stage, model, step)


def _load_stage_model(ctx: TrainContext, stage: str, model: nn.Module) -> nn.Module:
    path = ctx.checkpoint_path(stage)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run `latentseg train {stage}` first")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    return model.to(ctx.device).eval().requires_grad_(False)


@torch.no_grad()
def measure_latent_scale(ctx: TrainContext, mask_ae: MaskAutoencoder, vae: nn.Module, batches: int) -> LatentScale:
    """1/std of each encoder's latents over a few training batches (stored in the bundle)."""
    masks, images = [], []
    state = ctx.sampler.state()
    for _ in range(batches):
        batch = ctx.sampler.batch(ctx.config.diffusion.batch_size)
        masks.append(mask_ae.encode(batch.masks.to(ctx.device)).float().cpu())
        images.append(encode_image_mean(vae, batch.slices.to(ctx.device)).float().cpu())
    ctx.sampler.set_state(state)
    mask_std = float(torch.cat(masks).std())
    image_std = float(torch.cat(images).std())
    if ctx.world_size > 1:  # identical factors on every rank
        t = torch.tensor([mask_std, image_std], device=ctx.device)
        dist.all_reduce(t)
        mask_std, image_std = (t / ctx.world_size).tolist()
    return LatentScale(mask=1.0 / max(mask_std, 1e-6), image=1.0 / max(image_std, 1e-6))


def load_text_embeddings(ctx: TrainContext) -> torch.Tensor | None:
    if ctx.config.model.denoiser.conditioning != "text":
        return None
    path = ctx.config.text_embeddings
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            "conditioning='text' needs text_embeddings: a .npy table made by `latentseg text-embeddings --out FILE.npy`"
        )
    return torch.from_numpy(np.load(path)).float()


def encoder_in_bfloat16(encoder_dtype: str, device: torch.device) -> bool:
    """Whether the frozen encoders run in bfloat16: asked for, on a CPU that has bf16 instructions.
    Elsewhere float32 is used with a warning (emulated bf16 is ~10x slower, not faster)."""
    if encoder_dtype != "bfloat16" or device.type != "cpu":
        return False
    if not cpu_has_fast_bfloat16():
        log.warning(
            "diffusion.encoder_dtype = bfloat16, but this CPU (%s) has no native bf16 convolutions; "
            "encoding in float32 instead (emulated bf16 would be ~10x slower)", cpu_model()
        )
        return False
    return True


def train_diffusion(ctx: TrainContext) -> tuple[Path, StageResult]:
    """Train the denoiser on frozen auto-encoders and write the bundle to ``out/bundle``."""
    cfg = ctx.config
    mask_ae = _load_stage_model(ctx, "mask-ae", MaskAutoencoder(cfg.model.mask_ae))
    vae = _load_stage_model(ctx, "image-vae", build_image_vae(cfg.model.image_vae))
    scale = inherited_latent_scale(cfg, lambda: measure_latent_scale(ctx, mask_ae, vae, cfg.diffusion.scale_batches))
    log.info("latent scale factors: mask %.4f, image %.4f", scale.mask, scale.image)
    process = build_process(cfg.model)
    text = load_text_embeddings(ctx)
    torch.manual_seed(cfg.seed + 2)
    networks = build_networks(cfg.model, ctx.vocabulary, text)
    denoiser = networks.denoiser
    t_sampler = (
        LossSecondMomentSampler(process.num_timesteps)
        if cfg.diffusion.timestep_sampler == "importance"
        else UniformSampler(process.num_timesteps)
    )
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + ctx.rank)

    low_precision = encoder_in_bfloat16(cfg.diffusion.encoder_dtype, ctx.device)

    def step(net: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16) if low_precision else nullcontext():
            z0 = mask_ae.encode(batch.masks).float() * scale.mask
            z_image = image_condition(vae, batch.images, scale.image, pixel_factor=cfg.model.image_pixel_factor).float()
        t, weights = t_sampler.sample(z0.shape[0], generator)
        noise = torch.randn(z0.shape, generator=generator).to(z0.device)
        t, weights = t.to(z0.device), weights.to(z0.device)
        terms = process.training_losses(
            net, z0.float(), t, noise, {"z_image": z_image.float(), "target_ids": batch.target_ids}
        )
        t_sampler.update(t, terms["loss"].float())
        return {"loss": (terms["loss"] * weights).mean(), "mse": terms["mse"].mean(), "vb": terms["vb"].mean()}

    def extra() -> dict[str, Any]:
        state = {"generator": generator.get_state(), "latent_scale": [scale.mask, scale.image]}  # for snapshot()
        if isinstance(t_sampler, LossSecondMomentSampler):
            state["timesteps"] = t_sampler.state_dict()
        return state

    def load_extra(state: dict[str, Any]) -> None:
        generator.set_state(state["generator"])
        if isinstance(t_sampler, LossSecondMomentSampler) and "timesteps" in state:
            t_sampler.load_state_dict(state["timesteps"])

    trained, result = run_stage(
        ctx, "diffusion", cfg.diffusion, denoiser, step,
        ema_decay=cfg.diffusion.ema_decay, extra_state=extra, load_extra_state=load_extra,
    )
    bundle_path = cfg.out / "bundle"
    if ctx.is_main:
        _write_bundle(ctx, bundle_path, mask_ae, vae, trained, scale)
    return bundle_path, result


def _write_bundle(
    ctx: TrainContext, path: Path, mask_ae: nn.Module, vae: nn.Module, denoiser: nn.Module, scale: LatentScale
) -> None:
    """The run's networks as a self-describing bundle at ``path`` (portable provenance)."""
    cfg = ctx.config
    final = Networks(mask_ae=mask_ae.cpu(), image_vae=vae.cpu(), denoiser=denoiser.cpu())  # type: ignore[arg-type]
    save_bundle(
        path,
        config=cfg.model,
        vocabulary=ctx.vocabulary,
        networks=final,
        latent_scale=scale,
        trained_targets=ctx.annotated,
        name=cfg.bundle_name,
        version=cfg.bundle_version,
        provenance=portable_provenance({
            "trained": True,
            "data": [str(p) for p in cfg.data],
            "datasets": sorted(ctx.sampler.datasets),
            "exclude_cases": list(cfg.exclude_cases),
            "augment": cfg.augment.enabled,
            "contrast_phase_prob": cfg.augment.contrast_phase_prob if cfg.augment.enabled else 0.0,
            "foreground_prob": cfg.foreground_prob,
            "negative_prob": cfg.negative_prob,
            "negative_margin_mm": cfg.negative_margin_mm,
            "seed": cfg.seed,
            "world_size": ctx.world_size,
            "device": str(ctx.device),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "stages": _stage_summaries(ctx),
            "init_from": _parent_bundle(cfg.init_from),
        }),
    )


def _parent_bundle(path: Path | None) -> dict[str, str] | None:
    """Which bundle a fine-tuned run started from (recorded in the new bundle's provenance)."""
    if path is None:
        return None
    info = read_manifest(Path(path))
    return {"path": str(path), "name": info.name, "version": info.version}


def _stage_summaries(ctx: TrainContext) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for stage in STAGES:
        path = ctx.checkpoint_path(stage)
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=False)
            summary[stage] = {
                "steps": int(state["step"]),
                "seconds": round(float(state.get("seconds", 0.0)), 1),
                "final": state.get("final", {}),
            }
    return summary


def snapshot(config: TrainConfig) -> Path:
    """A bundle from the diffusion stage's latest checkpoint (its EMA weights), at ``out/snapshot-<step>``:
    score a run while it trains (``latentseg evaluate --bundle``) without stopping it."""
    ctx = make_context(config, 0, 1, torch.device("cpu"))
    cfg = ctx.config
    path = ctx.checkpoint_path("diffusion")
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: the diffusion stage has not saved a checkpoint yet")
    state = torch.load(path, map_location="cpu", weights_only=False)
    mask_ae = _load_stage_model(ctx, "mask-ae", MaskAutoencoder(cfg.model.mask_ae))
    vae = _load_stage_model(ctx, "image-vae", build_image_vae(cfg.model.image_vae))
    saved = (state.get("extra") or {}).get("latent_scale")  # the factors this run trains with
    scale = LatentScale(*saved) if saved else inherited_latent_scale(
        cfg, lambda: measure_latent_scale(ctx, mask_ae, vae, cfg.diffusion.scale_batches)
    )
    denoiser = build_networks(cfg.model, ctx.vocabulary, load_text_embeddings(ctx)).denoiser
    denoiser.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    out = cfg.out / f"snapshot-{int(state['step'])}"
    _write_bundle(ctx, out, mask_ae, vae, denoiser.eval(), scale)
    return out


def train(config: TrainConfig, stages: tuple[str, ...] = STAGES) -> dict[str, StageResult]:
    """Run the named stages in order (``train all`` runs the three)."""
    results: dict[str, StageResult] = {}
    with distributed(config.device) as (rank, world, device):
        ctx = make_context(config, rank, world, device)
        for stage in stages:
            if stage == "mask-ae":
                _, results[stage] = train_mask_ae(ctx)
            elif stage == "image-vae":
                _, results[stage] = train_image_vae(ctx)
            elif stage == "diffusion":
                _, results[stage] = train_diffusion(ctx)
            else:
                raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return results
