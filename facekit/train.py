"""GAN training of a face restorer on CPU (or GPU), resumable exactly, data parallel via torchrun.

``train(cfg)`` writes ``DATA_DIR/runs/<name>/`` with ``config.yaml``, ``metrics.csv``,
``summary.json``, ``samples/step_XXXXXX.png`` (rows of lq | out | gt) and
``checkpoints/last.pt`` (+ ``step_XXXXXX.pt`` every ``ckpt_every`` steps).

Exact resume: the sampler order of epoch ``e`` is a permutation from a ``torch.Generator`` seeded
by ``(seed, e)``, sample ``i`` is synthesised from ``(seed, e, i)`` (see
:class:`facekit.dataset.PairedFaceDataset`), the only other randomness (gradient-penalty
interpolation weights) comes from a generator saved in the checkpoint with every global RNG
state, and checkpoints are written at step boundaries. A run killed after a checkpoint and
resumed therefore ends with the same weights as one that ran straight through (deterministic
mode, same thread count).

Data parallel: started under ``torchrun`` (``WORLD_SIZE`` > 1), each process takes its own
slice of every global batch, gradients are averaged with one all-reduce per network (gloo on
CPU, nccl on CUDA), and only rank 0 validates and writes files. We average gradients explicitly
instead of wrapping in ``DistributedDataParallel`` because the gradient penalty needs
double backward through the discriminator, which DDP's reducer does not support.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import inspect
import json
import math
import numbers
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
import torch.distributed as dist
import yaml
from torchvision.utils import save_image

from facekit import augment, chain, dataset, images, losses, metrics, recognition, settings
from facekit.archs import ARCHS, build_model, check_build
from facekit.checkpoint import (arch_entry, check_architecture, load_checkpoint, rng_state, save_checkpoint,
                                set_rng_state)
from facekit.dataset import PairedFaceDataset
from facekit.errors import CheckpointError, ConfigError
from facekit.runs import RunDir, checkpoint_file

SCHEDULES = ("cosine", "step", "constant")
LOSS_KEYS = ("l_g_pix", "l_g_gan", "l_d_real", "l_d_fake", "l_d_gp")


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.yaml`` and inside checkpoints."""

    name: str = "smoke"
    data: str = "orl"  # facekit.data source: "orl", "celeba:PATH", "folder:PATH"
    size: int = 64  # gt side (with lq_sizes: the cached faces' side, the largest gt)
    scale: int = 4  # lq side = size / scale
    # Multi-scale training (preset "random" only): each batch draws its lq side from this list and
    # its faces are area-resized to lq_side * scale first, so one model learns 12 px and 32 px faces.
    # None = every batch at size / scale.
    lq_sizes: list[int] | None = None
    val_size: int | None = None  # gt side of the val (and release test) pairs; None = size
    limit: int | None = None  # only the first N source images
    preset: str = "cctv-heavy"  # facekit.degrade preset
    conditions: list[str] | None = None  # lighting conditions (None = all five)
    angles: bool = True  # head-pose augmentation
    gray_prob: float = 0.0  # share of samples made monochrome first (IR/mono CCTV; dataset.to_gray)
    # Domain mixing: a second source's faces join the training faces (never the val set), e.g. grey
    # ORL photos beside CelebA. mix_people keeps only those person numbers, so the others stay
    # unseen for facekit.evaluate.probe_check (ORL people 1-20).
    mix_data: str | None = None
    mix_people: list[int] | None = None  # [first, last] person numbers (an identity's digits) kept
    mix_share: float = 0.25  # about this share of the training samples comes from mix_data
    # More sources beside data/mix_data: [{data: SOURCE, share: 0.2, people: [first, last] or null}].
    # Each joins with its train split only (UTKFace's eval split and CelebA's test slice never
    # train), repeated to about ``share`` of the samples.
    sources: list[dict] | None = None
    val_count: int = 64  # held-out val faces (spread over the conditions)
    arch_g: str = "unet"
    arch_g_kwargs: dict = field(default_factory=lambda: {"base": 32, "depth": 3})
    arch_d: str = "patchgan"
    arch_d_kwargs: dict = field(default_factory=lambda: {"base": 32, "n_layers": 3})
    d_norm: str = "none"  # batch | instance | none
    batch: int = 16  # per process
    steps: int = 1000
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    schedule: str = "cosine"  # cosine | step | constant
    warmup: int = 0  # linear LR warmup steps
    lr_step: int = 1000  # "step" schedule: multiply by lr_gamma every lr_step steps
    lr_gamma: float = 0.5
    grad_clip: float | None = None  # clip each network's gradient norm to this (None = off)
    ema_decay: float = 0.999
    pixel_loss: str = "l1"  # l1 | charbonnier
    pixel_weight: float = 1.0
    gan_weight: float = 0.01
    gan_type: str = "hinge"  # wgan | hinge | lsgan | vanilla | ragan (ESRGAN) | ragan_ls (DeblurGAN-v2)
    gan_start: int = 0  # pixel-only steps before the adversarial terms start
    gp_weight: float = 0.0
    identity_weight: float = 0.0  # SFace identity loss l_g_id = 1 - cos(emb(out), emb(gt)); 0 = off
    identity_batch: int | None = None  # faces of each batch the identity loss sees (None = all)
    # cosine: 1 - cos(out, gt) alone; contrastive: that plus an InfoNCE term over the batch, which
    # also pushes each output away from the other faces' embeddings (recognition.IdentityLoss)
    identity_mode: str = "cosine"
    identity_temperature: float = 0.1  # InfoNCE temperature of identity_mode=contrastive
    gp_mode: str = "interpolate"  # interpolate (WGAN-GP) | r1
    lazy_k: int = 1  # gradient penalty every k steps, scaled by k
    log_every: int = 10
    val_every: int = 200
    ckpt_every: int = 500
    sample_every: int = 500
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    deterministic: bool = False
    channels_last: bool = True  # ~25% faster G+D step on CPU (benchmarks/bench_train.py)
    fused_optim: bool = True  # Adam(foreach=True) on CPU, fused=True on CUDA
    threads: int | None = None  # torch threads per process (None: FACEKIT_THREADS / all cores)
    # Fine-tuning: a training checkpoint (or run folder) whose net_g, net_g_ema and net_d start this
    # run, or a released stage file (net_g and net_g_ema only); optimizers, schedule and step count
    # start fresh. None = random initialisation.
    init_from: str | None = None
    # Distillation: a frozen teacher generator (a run folder, training checkpoint or released stage
    # file such as models/celeba-orl-identity/reconstruct.pt) whose output on each lq is a second target,
    # l_g_distill = pixel_loss(out, teacher(lq)). Lets a small real-time net learn a big one's mapping.
    distill_from: str | None = None
    distill_weight: float = 1.0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid value (types, ranges, finite numbers)."""
        def bad(key, why):
            raise ConfigError(f"train config: {key}={getattr(self, key)!r}: {why}")

        def check(fn, key, *args, **kwargs):
            try:
                return fn(getattr(self, key), key, *args, **kwargs)
            except ConfigError as exc:
                raise ConfigError(f"train config: {exc}") from None

        as_int, as_float, as_str = settings.check_int, settings.check_float, settings.check_str
        try:
            settings.check_name(self.name, "name")
        except ConfigError:
            bad("name", "must be a single folder name of the characters A-Z a-z 0-9 . _ - (not '.' or '..')")
        for key in ("data", "preset", "arch_g", "arch_d", "d_norm", "schedule", "pixel_loss", "gan_type",
                    "identity_mode", "gp_mode", "device"):
            check(as_str, key)
        for key in ("mix_data", "init_from", "distill_from"):
            check(as_str, key, optional=True)
        for key in ("angles", "deterministic", "channels_last", "fused_optim"):
            if not isinstance(getattr(self, key), bool):
                bad(key, "must be true or false")
        check(as_int, "size", 8, 4096)
        check(as_int, "scale", 1, 8)
        if self.size % self.scale:
            bad("scale", f"must divide size {self.size}")
        check(as_int, "limit", 1, optional=True)
        check(as_int, "val_size", 8, self.size, optional=True)
        if self.val_size is not None and self.val_size % self.scale:
            bad("val_size", f"must be divisible by scale {self.scale}")
        if self.lq_sizes is not None:
            if (not isinstance(self.lq_sizes, list) or not self.lq_sizes
                    or not all(isinstance(v, int) and not isinstance(v, bool) and 4 <= v and v * self.scale <= self.size
                               for v in self.lq_sizes)):
                bad("lq_sizes", f"must be a non-empty list of whole lq sides >= 4 with side x scale <= size {self.size}")
            if self.preset != "random":
                bad("lq_sizes", "multi-scale batches need the random preset (facekit.randdeg)")
        check(as_int, "val_count", 0)
        for key in ("batch", "steps", "lazy_k", "log_every", "val_every", "ckpt_every", "sample_every", "lr_step"):
            check(as_int, key, 1)
        check(as_int, "warmup", 0)
        check(as_int, "gan_start", 0)
        check(as_int, "seed", 0, settings.SEED_MAX)
        check(as_int, "num_workers", 0, 256)
        check(as_int, "threads", 1, settings.MAX_THREADS, optional=True)
        check(as_int, "identity_batch", 1, optional=True)
        for key in ("lr_gamma", "identity_temperature"):
            check(as_float, key, 0.0, lo_open=True)
        for key in ("lr_g", "lr_d", "pixel_weight", "gan_weight", "gp_weight", "identity_weight", "distill_weight"):
            check(as_float, key, 0.0)  # lr 0 freezes a network (fine-tuning checks)
        check(as_float, "grad_clip", 0.0, lo_open=True, optional=True)
        check(as_float, "ema_decay", 0.0, 1.0, hi_open=True)
        check(as_float, "gray_prob", 0.0, 1.0)
        check(as_float, "mix_share", 0.0, 1.0, lo_open=True, hi_open=True)
        betas = self.betas
        if (not isinstance(betas, (list, tuple)) or len(betas) != 2
                or not all(isinstance(b, numbers.Real) and not isinstance(b, bool) and 0.0 <= float(b) < 1.0
                           for b in betas)):
            bad("betas", "must be a list of two numbers in [0, 1), e.g. [0.5, 0.999]")
        try:
            settings.check_device(self.device, "device")
        except ConfigError:
            bad("device", "expected cpu, cuda, cuda:N or mps")
        if self.conditions is not None and (not isinstance(self.conditions, list)
                                            or not all(isinstance(c, str) for c in self.conditions)):
            bad("conditions", "must be a list of lighting condition names or null (all)")
        for key in ("arch_g_kwargs", "arch_d_kwargs"):
            kw = getattr(self, key)
            if not isinstance(kw, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kw):
                bad(key, "must be a mapping of constructor argument names to values")
        for key in ("arch_g", "arch_d"):
            if getattr(self, key) not in ARCHS:
                bad(key, f"unknown architecture; valid: {', '.join(sorted(ARCHS))}")
        if self.d_norm not in ("batch", "instance", "none"):
            bad("d_norm", "valid: batch, instance, none")
        # the networks' arguments are checked here, before any data loads, not at the Trainer's build
        for key, arch, fixed in (("arch_g_kwargs", self.arch_g, {"scale": self.scale}),
                                 ("arch_d_kwargs", self.arch_d, {"norm": self.d_norm})):
            kw = getattr(self, key)
            clash = sorted(set(kw) & set(fixed))
            if clash:
                bad(key, f"{clash[0]} is set by the config's own {'scale' if clash[0] == 'scale' else 'd_norm'}")
            try:
                check_build(arch, **kw, **fixed)
            except ConfigError as exc:
                raise ConfigError(f"train config: {key}: {exc}") from None
        if self.schedule not in SCHEDULES:
            bad("schedule", f"valid: {', '.join(SCHEDULES)}")
        if self.gan_type not in losses.GAN_TYPES:
            bad("gan_type", f"valid: {', '.join(losses.GAN_TYPES)}")
        if self.gp_mode not in losses.GP_MODES:
            bad("gp_mode", f"valid: {', '.join(losses.GP_MODES)}")
        if self.pixel_loss not in losses.PIXEL_LOSSES:
            bad("pixel_loss", f"valid: {', '.join(losses.PIXEL_LOSSES)}")

        if self.identity_mode not in recognition.IDENTITY_MODES:
            bad("identity_mode", f"valid: {', '.join(recognition.IDENTITY_MODES)}")
        if self.identity_mode == "contrastive" and self.identity_batch is not None and int(self.identity_batch) < 2:
            bad("identity_batch", "the contrastive identity loss needs >= 2 faces (other faces are its negatives)")
        people = self.mix_people
        if people is not None and (not isinstance(people, list) or len(people) != 2
                                   or not all(isinstance(p, int) and not isinstance(p, bool) for p in people)
                                   or people[0] > people[1]):
            bad("mix_people", "must be [first, last] with first <= last, or null (every person)")
        if self.sources is not None:
            if not isinstance(self.sources, list) or not all(isinstance(e, dict) for e in self.sources):
                bad("sources", "must be a list of {data, share, people} mappings")
            for e in self.sources:
                extra = sorted(set(e) - {"data", "share", "people"}, key=str)
                if extra or not isinstance(e.get("data"), str) or "\x00" in e["data"]:
                    bad("sources", f"entry {e!r}: needs data: SOURCE, optional share and people; unknown {extra}")
                share = e.get("share", 0.2)
                if (isinstance(share, bool) or not isinstance(share, numbers.Real) or not math.isfinite(share)
                        or not 0.0 < float(share) < 1.0):
                    bad("sources", f"entry {e!r}: share must be a number in (0, 1)")
                p = e.get("people")
                if p is not None and (not isinstance(p, list) or len(p) != 2
                                      or not all(isinstance(x, int) and not isinstance(x, bool) for x in p)
                                      or p[0] > p[1]):
                    bad("sources", f"entry {e!r}: people must be [first, last] with first <= last, or null")
            if sum(share for _, _, share in self.mix_entries()) >= 1.0:
                bad("sources", "the mixed sources' shares must add up to less than 1")
        from facekit.data import EVAL_ONLY_KINDS

        for src in [self.data] + [d for d, _, _ in self.mix_entries()]:
            if str(src).partition(":")[0].strip().lower() in EVAL_ONLY_KINDS:
                bad("data", f"{src!r} is an evaluation-only source (identity evaluation); never train on it")

    def mix_entries(self) -> list[tuple[str, list[int] | None, float]]:
        """Every mixed-in source as ``(data, people, share)``: ``mix_data`` first, then ``sources``."""
        out = [(self.mix_data, self.mix_people, float(self.mix_share))] if self.mix_data else []
        for e in self.sources or []:
            out.append((e["data"], e.get("people"), float(e.get("share", 0.2))))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/checkpoint safe)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"train config: unknown keys {unknown}; valid: {', '.join(sorted(names))}")
        return cls(**d)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text of the config; also written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        d = settings.load_yaml(path)  # size and alias limits; ConfigError naming the file
        if d is None:  # an empty file would otherwise train the built-in smoke config
            raise ConfigError(f"{path}: the config file is empty")
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(d).__name__}")
        try:
            return cls.from_dict(d)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def with_overrides(self, items: list[str]) -> "TrainConfig":
        """Apply ``key=value`` strings (values parsed as YAML, e.g. ``steps=50``, ``conditions=[low]``)."""
        d = self.to_dict()
        for item in items or []:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected key=value")
            key, value = item.split("=", 1)
            key = key.strip()
            parsed = settings.parse_yaml(value, f"--set {item!r}")
            if "." in key:  # nested dict entry, e.g. arch_g_kwargs.base=16
                top, sub = key.split(".", 1)
                if not isinstance(d.get(top), dict):
                    raise ConfigError(f"--set {item!r}: {top!r} is not a mapping")
                d[top][sub] = parsed
            else:
                if key not in d:
                    raise ConfigError(f"--set {item!r}: unknown key; valid: {', '.join(sorted(d))}")
                d[key] = parsed
        return TrainConfig.from_dict(d)


# --------------------------------------------------------------------------------------------
# helpers


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Sample order of ``epoch``: a permutation of ``range(n)`` from a generator seeded by (seed, epoch)."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0]))
    return torch.randperm(n, generator=g)


def epoch_batches(n: int, batch: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This process's index batches for ``epoch``: each global batch of ``batch*world`` samples is
    split into contiguous per-rank slices (an incomplete last global batch is dropped)."""
    perm = epoch_permutation(n, seed, epoch).tolist()
    gb = batch * world
    return [perm[b * gb + rank * batch: b * gb + (rank + 1) * batch] for b in range(n // gb)]


def epoch_lq_sides(n_batches: int, lq_sizes: list[int], seed: int, epoch: int) -> list[int]:
    """The lq side of each global batch of ``epoch`` (multi-scale training); the same on every rank."""
    gen = np.random.default_rng([int(seed), int(epoch), 7])
    return [int(v) for v in gen.choice(np.asarray(lq_sizes), size=n_batches)]


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """LR multiplier per step: linear warmup, then cosine to 0, step decay or constant."""
    def f(step: int) -> float:
        if cfg.warmup and step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if cfg.schedule == "cosine":
            t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if cfg.schedule == "step":
            return cfg.lr_gamma ** ((step - cfg.warmup) // cfg.lr_step)
        return 1.0
    return f


def _make_optim(params, lr: float, betas, fused: bool, device: torch.device) -> torch.optim.Adam:
    kwargs = {}
    if fused:
        kwargs = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), **kwargs)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """``ema = decay*ema + (1-decay)*net`` for parameters (one fused op), buffers copied."""
    ep = [p for p in ema.parameters()]
    np_ = [p.detach() for p in net.parameters()]
    torch._foreach_lerp_(ep, np_, 1.0 - decay)
    for eb, nb in zip(ema.buffers(), net.buffers()):
        eb.copy_(nb)


def _average_gradients(module: torch.nn.Module, world: int) -> None:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if world <= 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def _broadcast_module(module: torch.nn.Module, world: int) -> None:
    if world > 1:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, 0)


def split_faces(faces, val_count: int, val_faces=None):
    """Training and validation faces, ``(train uint8, val uint8)``, each ``(N,S,S,3)``.

    Args:
        faces: a FaceSet (its train/val splits; a source without a val split holds out its last
            ``val_count`` images) or an array (its last ``val_count`` images held out).
        val_count: most val faces kept.
        val_faces: the caller's own val faces. Then nothing is held out of ``faces``: an array
            trains whole, a FaceSet on its train split.

    Raises:
        ConfigError: an array with no more than ``val_count`` faces and no ``val_faces``.
    """
    if val_faces is not None:
        val = np.asarray(val_faces)[:val_count]
        return (faces.subset("train").images if hasattr(faces, "subset") else np.asarray(faces)), val
    if hasattr(faces, "subset"):
        train = faces.subset("train").images
        val = faces.subset("val").images
        if len(val) == 0:  # sources without a val split
            train, val = faces.images[:-val_count], faces.images[-val_count:]
        return train, val[:val_count]
    images = np.asarray(faces)
    if len(images) <= val_count:
        raise ConfigError(f"need more than val_count={val_count} faces to hold out a val set, got {len(images)}")
    return images[:-val_count], images[-val_count:]


def mix_faces(train_images: np.ndarray, cfg: TrainConfig, progress: bool = False) -> tuple[np.ndarray, int]:
    """Append the mixed-in sources' training faces (``cfg.mix_data`` and ``cfg.sources``) to the
    training faces, each repeated to make about its share of the samples (repetition keeps every
    sample a plain index, so epochs and resumes stay exact). Only each source's ``train`` split
    joins: its val and test faces are what evaluations of that source measure on.

    Args:
        train_images: ``(N,S,S,3)`` uint8 training faces of ``cfg.data``.
        cfg: the run's config (``mix_data``/``mix_people``/``mix_share``, ``sources``, ``size``).
        progress: a bar while a source is ingested.

    Returns:
        ``(faces (N+sum k_i*M_i,S,S,3) uint8, sum M_i)``: the training faces and how many distinct
        mixed-in faces joined.

    Raises:
        ConfigError: a source holds no face of its ``people`` or has another face size.
    """
    from facekit.data import load_faces, person_numbers

    entries = cfg.mix_entries()
    total = len(train_images) / (1.0 - sum(share for _, _, share in entries))
    parts, distinct = [train_images], 0
    for data, people, share in entries:
        # the source's own split seed, not the run's: its test people must be the ones evaluations use
        faces = load_faces(data, size=cfg.size, progress=progress).subset("train")
        extra = faces.images
        if people is not None:
            first, last = (int(v) for v in people)
            num = person_numbers(faces.identity)
            extra = extra[(num >= first) & (num <= last)]
        if len(extra) == 0:
            raise ConfigError(f"mixed source {data!r}: no training-split faces of people {people} "
                              f"({len(faces.images)} training faces, identities e.g. {list(faces.identity[:3])})")
        if extra.shape[1:] != train_images.shape[1:]:
            raise ConfigError(f"mixed source {data!r}: faces are {extra.shape[1:]}, "
                              f"training faces {train_images.shape[1:]}")
        repeats = max(1, round(share * total / len(extra)))
        parts += [extra] * repeats
        distinct += len(extra)
    return np.concatenate(parts), int(distinct)


def make_val_pairs(val_images: np.ndarray, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Fixed val pairs: the val faces spread round-robin over the lighting conditions."""
    if cfg.val_size and cfg.val_size != val_images.shape[1]:
        val_images = images.resize_faces(val_images, cfg.val_size)
    if cfg.preset == "random":  # facekit.randdeg draws the light per face; one mixed val set
        lq, gt = dataset.make_eval_pairs(val_images, "random", cfg.scale, seed=cfg.seed + 1)
        return lq, gt, ["random"] * len(lq)
    conds = list(cfg.conditions or augment.CONDITIONS)
    lqs, gts, names = [], [], []
    for k, c in enumerate(conds):
        part = val_images[k::len(conds)]
        if len(part) == 0:
            continue
        lq, gt = dataset.make_eval_pairs(part, cfg.preset, cfg.scale, condition=c, seed=cfg.seed + 1)
        lqs.append(lq), gts.append(gt), names.extend([c] * len(part))
    return torch.cat(lqs), torch.cat(gts), names


@torch.inference_mode()
def evaluate(net_g: torch.nn.Module, lq: torch.Tensor, gt: torch.Tensor, device: torch.device,
             batch: int = 32, channels_last: bool = False) -> dict[str, float]:
    """Mean PSNR/SSIM of ``net_g`` on pairs, plus those of bicubic upsampling."""
    was_training = net_g.training
    net_g.eval()
    ps, ss, outs = [], [], []
    for i in range(0, len(lq), batch):
        x = lq[i: i + batch].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = net_g(x).clamp(0, 1).float().cpu()
        g = gt[i: i + batch]
        ps.append(metrics.psnr(out, g)), ss.append(metrics.ssim(out, g)), outs.append(out)
    net_g.train(was_training)
    return {"psnr": float(torch.cat(ps).mean()), "ssim": float(torch.cat(ss).mean())}


def bicubic_scores(lq: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """PSNR/SSIM of plain bicubic upsampling of ``lq`` to ``gt``'s size (the baseline to beat)."""
    up = torch.nn.functional.interpolate(lq, size=gt.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
    return {"psnr": float(metrics.psnr(up, gt).mean()), "ssim": float(metrics.ssim(up, gt).mean())}


@torch.inference_mode()
def save_samples(path: Path, net_g: torch.nn.Module, lq: torch.Tensor, gt: torch.Tensor, device: torch.device,
                 n: int = 8) -> Path:
    """PNG grid: one row per face, columns lq (nearest-upsampled) | out | gt."""
    was_training = net_g.training
    net_g.eval()
    lq, gt = lq[:n], gt[:n]
    out = net_g(lq.to(device)).clamp(0, 1).float().cpu()
    net_g.train(was_training)
    lq_up = torch.nn.functional.interpolate(lq, size=gt.shape[-2:], mode="nearest")
    tiles = torch.stack([lq_up, out, gt], dim=1).flatten(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(tiles, str(path), nrow=3, padding=2, pad_value=1.0)
    return path


def identity_loss_fn(cfg: TrainConfig, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The SFace identity loss of ``cfg`` as ``fn(out, gt) -> scalar``.

    With ``identity_batch = k`` only the first ``k`` faces of each batch are embedded: an unbiased
    estimate of the batch mean (the sampler shuffles), at k/batch of SFace's cost, which on a CPU
    is otherwise larger than the whole G+D step.
    """
    loss = recognition.IdentityLoss(device, mode=cfg.identity_mode, temperature=cfg.identity_temperature)
    k = cfg.identity_batch

    def fn(out: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if k is not None:
            out, gt = out[:k], gt[:k]
        return loss(out.contiguous(), gt.contiguous())

    return fn


def load_teacher(path: str | Path, cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    """The frozen generator named by ``distill_from``.

    Args:
        path: a run folder (its ``checkpoints/last.pt``, EMA weights), a training checkpoint or a
            released stage file.
        cfg: the student's config (the teacher must restore at its ``scale``).
        device: where to run the teacher.

    Returns:
        The teacher in eval mode without gradients, mapping ``(N,3,h,w)`` in [0,1] to ``(N,3,h*scale,w*scale)``.

    Raises:
        CheckpointError: missing or unreadable file, or a teacher of another scale.
    """
    path = checkpoint_file(path)
    stage = chain.Stage.from_checkpoint("reconstruct", path, device=device)
    if int(stage.scale) != int(cfg.scale):
        raise CheckpointError(f"{path}: distill_from teacher restores at x{stage.scale}, but this run trains "
                              f"x{cfg.scale}; give a x{cfg.scale} teacher")
    teacher = stage.model.eval().requires_grad_(False)
    if cfg.channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher


def _load_training_faces(cfg: TrainConfig, progress: bool):
    from facekit.data import load_faces

    return load_faces(cfg.data, size=cfg.size, limit=cfg.limit, seed=cfg.seed, progress=progress)


# --------------------------------------------------------------------------------------------
# the loop


def _update(optim, loss: torch.Tensor, net, sync) -> None:
    """One optimiser update of ``net`` from ``loss``; ``sync(net)`` (all-reduce, clipping) runs between backward and step."""
    optim.zero_grad(set_to_none=True)
    loss.backward()
    if sync is not None:
        sync(net)
    optim.step()


def gan_step(net_g: torch.nn.Module, net_d: torch.nn.Module | None, optim_g: torch.optim.Optimizer,
             optim_d: torch.optim.Optimizer | None, out: torch.Tensor, gt: torch.Tensor, *, use_gan: bool,
             gan_type: str = "hinge", gan_weight: float = 0.01, pixel_weight: float = 1.0, pixel_kind: str = "l1",
             extra: losses.ExtraLosses | None = None, gp_weight: float = 0.0, gp_mode: str = "interpolate",
             gp_scale: float = 1.0, gp_gen: torch.Generator | None = None,
             sync: Callable[[torch.nn.Module], None] | None = None) -> dict[str, torch.Tensor]:
    """One GAN update of facekit: the discriminator step, then the generator step, on one G output.

    Both trainers run it: :meth:`Trainer.step` (the main loop, with EMA, DDP and exact resume
    around it) and :func:`facekit.stage_train.train_stage` (the chain's stage fits). D goes first,
    on ``out.detach()``, so the single G forward serves both steps; G then meets the updated D,
    with D's weights frozen so G's backward leaves no gradients in them.

    Args:
        net_g: the generator that produced ``out`` (only passed to ``sync``).
        net_d: the discriminator; unused (may be None) when ``use_gan`` is False.
        optim_g, optim_d: their optimizers (``optim_d`` may be None when ``use_gan`` is False).
        out: ``(N,3,H,W)`` generator output, with its graph.
        gt: ``(N,3,H,W)`` targets in [0,1].
        use_gan: run the D step and add ``l_g_gan``; False is a pixel-loss-only step (warmup).
        gan_type: one of :data:`facekit.losses.GAN_TYPES` (relativistic types also evaluate D on
            ``gt`` for the G term).
        gan_weight, pixel_weight: weights of ``l_g_gan`` and ``l_g_pix``.
        pixel_kind: ``"l1"`` or ``"charbonnier"``.
        extra: further generator terms ``{name: (weight, fn(out, gt))}``.
        gp_weight, gp_mode, gp_scale, gp_gen: the gradient penalty (:func:`facekit.losses.discriminator_losses`).
        sync: called on each network after its backward and before its optimizer step (the
            main loop averages gradients over processes and clips them there).

    Returns:
        The unweighted loss terms as scalar tensors: ``l_g_pix`` and extras, and with ``use_gan``
        also ``l_g_gan``, ``l_d_real``, ``l_d_fake``, ``l_d_gp``.
    """
    logs: dict[str, torch.Tensor] = {}
    fake_pred = real_pred = None
    if use_gan:
        net_d.requires_grad_(True)
        l_d, d_terms = losses.discriminator_losses(
            net_d, gt, out.detach(), gan_type=gan_type, gp_weight=gp_weight, gp_mode=gp_mode,
            gp_scale=gp_scale, generator=gp_gen)
        _update(optim_d, l_d, net_d, sync)
        logs.update(d_terms)
        net_d.requires_grad_(False)  # G step: no grads into D's weights
        fake_pred = net_d(out)
        if gan_type in losses.RELATIVISTIC_TYPES:  # G is judged relative to the real logits
            with torch.no_grad():
                real_pred = net_d(gt)
    l_g, g_terms = losses.generator_losses(out, gt, fake_pred, pixel_weight=pixel_weight, gan_weight=gan_weight,
                                           gan_type=gan_type, pixel_kind=pixel_kind, extra=extra,
                                           real_pred=real_pred)
    _update(optim_g, l_g, net_g, sync)
    logs.update(g_terms)
    return logs


class Trainer:
    """Holds the networks, optimizers and data of one run; :meth:`step` does one G+D iteration."""

    def __init__(self, cfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1):
        self.cfg, self.device, self.rank, self.world = cfg, device, rank, world
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.net_g = build_model(cfg.arch_g, scale=cfg.scale, **cfg.arch_g_kwargs).to(device)
        self.net_d = build_model(cfg.arch_d, norm=cfg.d_norm, **cfg.arch_d_kwargs).to(device)
        if cfg.channels_last:
            self.net_g.to(memory_format=torch.channels_last)
            self.net_d.to(memory_format=torch.channels_last)
        _broadcast_module(self.net_g, world)
        _broadcast_module(self.net_d, world)
        self.net_g_ema = copy.deepcopy(self.net_g).eval().requires_grad_(False)
        # Registered generators without an out_size argument produce scale x their input.
        self._g_takes_size = "out_size" in inspect.signature(self.net_g.forward).parameters
        self.optim_g = _make_optim(self.net_g.parameters(), cfg.lr_g, cfg.betas, cfg.fused_optim, device)
        self.optim_d = _make_optim(self.net_d.parameters(), cfg.lr_d, cfg.betas, cfg.fused_optim, device)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.optim_g, lr_lambda(cfg))
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.optim_d, lr_lambda(cfg))
        # GP interpolation weights: their own generator, offset per rank, saved in checkpoints.
        self.gp_gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 1000 + 17 + rank)
        self.extra_losses: losses.ExtraLosses = {}
        self.teacher, self._teacher_out = None, None
        if cfg.distill_from:
            self.teacher = load_teacher(cfg.distill_from, cfg, device)
            self._teacher_takes_size = "out_size" in inspect.signature(self.teacher.forward).parameters
            self.extra_losses["distill"] = (float(cfg.distill_weight),
                                            lambda out, gt: losses.pixel_loss(out, self._teacher_out, cfg.pixel_loss))
        self.step_count = 0

    def step(self, lq: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
        """One iteration: a single G forward shared by the D step (detached) and the G step.

        Args:
            lq: ``(B,3,h,w)`` in [0,1]; gt: ``(B,3,H,W)`` in [0,1].

        Returns:
            Loss values by name (``l_g_pix``, ``l_g_gan``, ``l_d_real``, ``l_d_fake``, ``l_d_gp``, extras).
        """
        cfg, step = self.cfg, self.step_count
        lq, gt = lq.to(self.device, non_blocking=True), gt.to(self.device, non_blocking=True)
        if cfg.channels_last:
            lq = lq.contiguous(memory_format=torch.channels_last)
            gt = gt.contiguous(memory_format=torch.channels_last)
        out = self.net_g(lq, out_size=tuple(gt.shape[-2:])) if self._g_takes_size else self.net_g(lq)
        if out.shape != gt.shape:
            raise ConfigError(f"generator {cfg.arch_g!r} returned {tuple(out.shape)} for lq {tuple(lq.shape)}, "
                              f"expected the gt shape {tuple(gt.shape)} (check scale)")
        if self.teacher is not None:  # the target of l_g_distill (no gradients into the teacher)
            with torch.no_grad():
                t_out = self.teacher(lq, out_size=tuple(gt.shape[-2:])) if self._teacher_takes_size else self.teacher(lq)
            self._teacher_out = t_out.clamp(0, 1)
        use_gan = cfg.gan_weight > 0 and step >= cfg.gan_start
        logs = gan_step(self.net_g, self.net_d, self.optim_g, self.optim_d, out, gt, use_gan=use_gan,
                        gan_type=cfg.gan_type, gan_weight=cfg.gan_weight, pixel_weight=cfg.pixel_weight,
                        pixel_kind=cfg.pixel_loss, extra=self.extra_losses, gp_weight=cfg.gp_weight,
                        gp_mode=cfg.gp_mode, gp_scale=losses.lazy_scale(step, cfg.lazy_k), gp_gen=self.gp_gen,
                        sync=self._sync)
        self.sched_g.step()
        if use_gan:
            self.sched_d.step()
        else:  # keep D's schedule aligned with the step count while D rests (pixel-only warmup)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self.sched_d.step()
        ema_update(self.net_g_ema, self.net_g, cfg.ema_decay)
        self.step_count += 1
        result = {k: 0.0 for k in LOSS_KEYS}
        result.update({k: float(v.detach()) for k, v in logs.items()})
        return result

    def _sync(self, net: torch.nn.Module) -> None:
        """Between a network's backward and its optimizer step: average its gradients over the
        processes, then clip them."""
        _average_gradients(net, self.world)
        # After the all-reduce, so every rank clips the same averaged gradient identically.
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), float(self.cfg.grad_clip), foreach=True)

    def state(self, epoch: int) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "format": "facekit-train-1", "step": self.step_count, "epoch": epoch, "config": cfg.to_dict(),
            "arch_g": arch_entry(cfg.arch_g, dict(cfg.arch_g_kwargs, scale=cfg.scale), self.net_g),
            "arch_d": arch_entry(cfg.arch_d, dict(cfg.arch_d_kwargs, norm=cfg.d_norm), self.net_d),
            "net_g": self.net_g.state_dict(), "net_g_ema": self.net_g_ema.state_dict(),
            "net_d": self.net_d.state_dict(),
            "optim_g": self.optim_g.state_dict(), "optim_d": self.optim_d.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
            "rng": rng_state({"gp": self.gp_gen}),
        }

    def init_weights(self, path: str | Path) -> Path:
        """Start from another run's weights (``init_from``): net_g, net_g_ema and net_d only.

        A released stage file (``models/NAME/reconstruct.pt``, written by :func:`facekit.chain.save_stage`)
        holds the generator alone: net_g and net_g_ema start from it and net_d keeps its random
        initialisation, so a released model can be fine-tuned without its training run folder.

        Args:
            path: a training checkpoint, a run folder (its ``checkpoints/last.pt``) or a released stage file.

        Returns:
            The checkpoint file read.

        Raises:
            CheckpointError: missing file, or weights of another architecture or configuration.
        """
        path = checkpoint_file(path)
        ckpt = load_checkpoint(path)
        if ckpt.get("format") == chain.STAGE_FORMAT:
            self._init_from_stage(ckpt, path)
            return path
        check_architecture(ckpt, path, "arch_g", self.cfg.arch_g, self.net_g)
        check_architecture(ckpt, path, "arch_d", self.cfg.arch_d, self.net_d)
        try:
            self.net_g.load_state_dict(ckpt["net_g"])
            self.net_g_ema.load_state_dict(ckpt.get("net_g_ema") or ckpt["net_g"])
            self.net_d.load_state_dict(ckpt["net_d"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: cannot initialise from these weights ({type(exc).__name__}: {exc})") from None
        return path

    def _init_from_stage(self, ckpt: dict[str, Any], path: Path) -> None:
        if ckpt.get("arch") != self.cfg.arch_g:
            raise CheckpointError(f"{path}: holds a {ckpt.get('arch')!r} generator, but this run trains "
                                  f"arch_g={self.cfg.arch_g!r}")
        # Release-time switches (relight, chroma_detail) change the forward pass, not the weights.
        stage = chain.Stage.from_checkpoint(str(ckpt.get("stage") or "reconstruct"), path)
        state = stage.model.state_dict()
        try:
            self.net_g.load_state_dict(state)
            self.net_g_ema.load_state_dict(state)
        except RuntimeError as exc:
            first = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"{path}: released weights do not fit arch_g {self.cfg.arch_g!r} "
                                  f"{self.cfg.arch_g_kwargs}: {first}") from None

    def load_state(self, ckpt: dict[str, Any], path: Path) -> None:
        check_architecture(ckpt, path, "arch_g", self.cfg.arch_g, self.net_g)
        check_architecture(ckpt, path, "arch_d", self.cfg.arch_d, self.net_d)
        try:
            self.net_g.load_state_dict(ckpt["net_g"])
            self.net_g_ema.load_state_dict(ckpt["net_g_ema"])
            self.net_d.load_state_dict(ckpt["net_d"])
            self.optim_g.load_state_dict(ckpt["optim_g"])
            self.optim_d.load_state_dict(ckpt["optim_d"])
            self.sched_g.load_state_dict(ckpt["sched_g"])
            self.sched_d.load_state_dict(ckpt["sched_d"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot restore training state ({type(exc).__name__}: {exc})") from None
        set_rng_state(ckpt["rng"], {"gp": self.gp_gen})
        self.step_count = int(ckpt["step"])


# Settings that only say how a run executes or reports, not what it computes: a resume may change them.
RESUME_FREE_KEYS = ("threads", "num_workers", "device", "log_every", "val_every", "ckpt_every", "sample_every")


def resume_mismatch(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Config keys whose value differs between a checkpoint and the run resuming it.

    Args:
        saved: the checkpoint's ``config`` dict (keys it lacks, from older versions, take their
            defaults).
        cfg: the config the run is resumed with.

    Returns:
        ``"key: saved -> now"`` lines, except :data:`RESUME_FREE_KEYS`; empty when they agree.
    """
    now = cfg.to_dict()
    known = {k: v for k, v in saved.items() if k in now}
    try:
        then = TrainConfig.from_dict(known).to_dict()
    except ConfigError:  # an invalid saved value still differs from the valid one now
        then = {**TrainConfig.from_dict({"name": cfg.name}).to_dict(), **known}
    extra = sorted(set(saved) - set(now))
    return ([f"{k}: {then[k]!r} -> {now[k]!r}" for k in now if k not in RESUME_FREE_KEYS and then[k] != now[k]]
            + [f"{k}: {saved[k]!r} -> (no such setting)" for k in extra])


def _collate(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([it["lq"] for it in items]), torch.stack([it["gt"] for it in items])


def batch_iter(dataset, cfg: TrainConfig, rank: int, world: int, start_step: int):
    """Yield ``(epoch, lq, gt)`` forever, starting at global step ``start_step`` (exactly the batches an
    uninterrupted run would reach there: resume depends on it).

    Args:
        dataset: the training :class:`facekit.dataset.PairedFaceDataset`; cfg: the run's config.
        rank, world: this process's rank and the process count (one shard of every batch each).
        start_step: global step of the first batch.
    """
    n_batches = len(dataset) // (cfg.batch * world)
    if n_batches == 0:
        raise ConfigError(f"batch {cfg.batch} x {world} processes is larger than the {len(dataset)} training faces")
    epoch, first = divmod(start_step, n_batches)
    if cfg.num_workers:
        # OpenCV's thread pool does not survive fork: a worker forked while this process's pool has
        # threads (e.g. right after the face cache was built here) hangs in its first OpenCV call,
        # and training waits forever. With one OpenCV thread here there is no pool to inherit;
        # OpenCV is not on this process's critical path (the workers degrade the faces).
        cv2.setNumThreads(1)
    while True:
        dataset.set_epoch(epoch)
        batches = epoch_batches(len(dataset), cfg.batch, cfg.seed, epoch, rank, world)
        if cfg.lq_sizes:  # (index, lq side) items: PairedFaceDataset resizes the face to side x scale
            sides = epoch_lq_sides(len(batches), cfg.lq_sizes, cfg.seed, epoch)
            batches = [[(i, side) for i in b] for b, side in zip(batches, sides)]
        batches = batches[first:]
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=cfg.num_workers, collate_fn=_collate,
            worker_init_fn=getattr(dataset, "worker_init_fn", None) if cfg.num_workers else None)
        for lq, gt in loader:
            yield epoch, lq, gt
        epoch, first = epoch + 1, 0


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` (a killed run may have logged past its last checkpoint)."""
    if not path.exists():
        return
    with path.open() as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(keep)


def run_dir_for(cfg: TrainConfig, runs_dir: str | Path | None = None) -> Path:
    """``runs_dir/<cfg.name>``; the name is checked to be one safe folder name inside ``runs_dir``."""
    return settings.child_dir(runs_dir or settings.DATA_DIR / "runs", cfg.name, "train config: name")


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, faces=None, val_faces=None,
          runs_dir: str | Path | None = None, overwrite: bool = False,
          extra_losses: losses.ExtraLosses | None = None,
          on_checkpoint: Callable[[int, Path], None] | None = None,
          on_log: Callable[[dict], None] | None = None) -> Path:
    """Train a restorer; returns the run folder.

    Args:
        cfg: the run's config.
        resume: continue from ``checkpoints/last.pt`` of the run folder (exactly).
        progress: tqdm bar with live losses.
        faces: training faces instead of ``load_faces(cfg.data)``: a FaceSet or ``(N,S,S,3)`` uint8.
        val_faces: val faces (``(M,S,S,3)`` uint8), then every face of an array ``faces`` trains;
            default: the FaceSet's val split or the last ``cfg.val_count`` of the array.
        runs_dir: parent of the run folder (default ``DATA_DIR/runs``).
        overwrite: start afresh even if the run folder already holds a checkpoint.
        extra_losses: ``{name: (weight, fn(out, gt) -> scalar)}`` added to the generator loss.
        on_checkpoint: called as ``fn(step, path)`` after each checkpoint write (rank 0).
        on_log: called with each metrics row (rank 0), e.g. for a live plot.

    Returns:
        ``Path`` of the run folder.
    """
    rank, world, local_rank = dist_info()
    dev = torch.device(settings.check_device(cfg.device, "train config: device", available=True))
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
    settings.set_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    is_main = rank == 0
    run_dir = run_dir_for(cfg, runs_dir)
    if is_main:  # a read-only runs folder is a one-line error before any data loads, not at the first checkpoint
        settings.check_writable(run_dir, "run folder", "; choose another with --runs-dir or set FACEKIT_DATA_DIR")
    run = RunDir(run_dir)
    last = run.last
    if is_main and not resume and last.exists() and not overwrite:
        raise ConfigError(f"{run_dir}: a run with this name already has checkpoints; pass resume "
                          f"(--resume) to continue it or overwrite (--overwrite) to start again")
    if resume and not last.exists():
        raise CheckpointError(f"{last}: no checkpoint to resume from")


    data_source = cfg.data if faces is None else "given faces"
    if faces is None:
        faces = _load_training_faces(cfg, progress and is_main)
    train_images, held_out = split_faces(faces, cfg.val_count, val_faces)
    if train_images.shape[1] != cfg.size:
        raise ConfigError(f"faces are {train_images.shape[1]} px but the config says size={cfg.size}")
    mixed = 0
    if cfg.mix_entries():
        train_images, mixed = mix_faces(train_images, cfg, progress and is_main)
    dataset = PairedFaceDataset(train_images, preset=cfg.preset, scale=cfg.scale,
                                conditions=cfg.conditions if cfg.conditions else None, angles=cfg.angles,
                                seed=cfg.seed, gray_prob=cfg.gray_prob)
    val_lq, val_gt, _ = make_val_pairs(held_out, cfg)

    trainer = Trainer(cfg, dev, rank, world)
    if cfg.identity_weight > 0:
        trainer.extra_losses["id"] = (float(cfg.identity_weight), identity_loss_fn(cfg, dev))
    if extra_losses:
        trainer.extra_losses.update(extra_losses)
    metrics_path = run.metrics
    if resume:
        ckpt = load_checkpoint(last)
        trainer.load_state(ckpt, last)
        diff = resume_mismatch(ckpt.get("config") or {}, cfg)
        if diff:  # a resume is exact only under the config the checkpoint was trained with
            raise ConfigError(f"{last}: trained with another config, so resuming would not continue the same run "
                              f"({'; '.join(diff)}). Resume with its own {run.config}, or start a new "
                              f"run with init_from: {run_dir} to train on with new settings")
    elif cfg.init_from:
        trainer.init_weights(cfg.init_from)  # every rank reads the same file: no broadcast needed
    if not resume and is_main:
        for old in list(run.checkpoints.glob("*.pt")) + list(run.samples.glob("*.png")):
            old.unlink()
        if metrics_path.exists():
            metrics_path.unlink()
    start = trainer.step_count
    baseline = bicubic_scores(val_lq, val_gt)
    columns = ["step", "epoch", "lr_g", *LOSS_KEYS, *[f"l_g_{k}" if not k.startswith("l_g_") else k
                                                      for k in trainer.extra_losses],
               "val_psnr", "val_ssim", "images_per_s"]
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(run.config)
        if resume:
            _truncate_metrics(metrics_path, start)
        if not metrics_path.exists():
            with metrics_path.open("w", newline="") as fh:
                csv.writer(fh).writerow(columns)

    bar = None
    if progress and is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.name}", unit="step")
    batches = batch_iter(dataset, cfg, rank, world, start)
    epoch = 0
    t0, seen = time.perf_counter(), 0
    val = {"psnr": float("nan"), "ssim": float("nan")}
    t_start = time.perf_counter()
    while trainer.step_count < cfg.steps:
        epoch, lq, gt = next(batches)
        logs = trainer.step(lq, gt)
        seen += lq.shape[0] * world
        step = trainer.step_count
        done = step == cfg.steps
        if is_main:
            row_due = step % cfg.log_every == 0 or step % cfg.val_every == 0 or done
            val_due = step % cfg.val_every == 0 or done
            if val_due:
                val = evaluate(trainer.net_g_ema, val_lq, val_gt, dev, channels_last=cfg.channels_last)
            if step % cfg.sample_every == 0 or done:
                save_samples(run.sample(step), trainer.net_g_ema, val_lq, val_gt, dev)
            if row_due:
                ips = seen / max(1e-9, time.perf_counter() - t0)
                t0, seen = time.perf_counter(), 0
                row = {"step": step, "epoch": epoch, "lr_g": trainer.optim_g.param_groups[0]["lr"], **logs,
                       "val_psnr": val["psnr"] if val_due else "", "val_ssim": val["ssim"] if val_due else "",
                       "images_per_s": round(ips, 2)}
                with metrics_path.open("a", newline="") as fh:
                    csv.writer(fh).writerow([row.get(c, "") for c in columns])
                if on_log is not None:
                    on_log(row)
            if step % cfg.ckpt_every == 0 or done:
                state = trainer.state(epoch)
                save_checkpoint(last, state)
                if step % cfg.ckpt_every == 0:
                    save_checkpoint(run.checkpoint(step), state)
                if on_checkpoint is not None:
                    on_checkpoint(step, last)
            if bar is not None:
                bar.update(1)
                if row_due:
                    bar.set_postfix({k.removeprefix("l_"): f"{v:.3g}" for k, v in logs.items()}
                                    | ({"val_psnr": f"{val['psnr']:.2f}"} if val["psnr"] == val["psnr"] else {}))
    if bar is not None:
        bar.close()
    if is_main and start >= cfg.steps:  # resumed a finished run: still report its scores
        val = evaluate(trainer.net_g_ema, val_lq, val_gt, dev, channels_last=cfg.channels_last)
    if is_main:
        elapsed = time.perf_counter() - t_start
        summary = {"name": cfg.name, "steps": cfg.steps, "resumed_from": start, "val_psnr": val["psnr"],
                   "val_ssim": val["ssim"], "bicubic_psnr": baseline["psnr"], "bicubic_ssim": baseline["ssim"],
                   "seconds": round(elapsed, 2),
                   "steps_per_s": round((cfg.steps - start) / max(elapsed, 1e-9), 3), "world_size": world,
                   "val_faces": int(len(val_lq)), "train_faces": int(len(dataset)), "data_source": data_source,
                   "mix_faces": mixed, "init_from": cfg.init_from, "distill_from": cfg.distill_from}
        run.summary.write_text(json.dumps(summary, indent=2))
    if world > 1:
        dist.barrier()
    return run_dir


def load_metrics(run_dir: str | Path):
    """``metrics.csv`` of a run as a pandas DataFrame."""
    import pandas as pd

    return pd.read_csv(RunDir(run_dir).metrics)


# --------------------------------------------------------------------------------------------
# CLI
