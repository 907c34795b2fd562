"""Training the learned stage of track fusion on synthetic bursts (issue 22).

A burst is ``k`` crops of one clean training face, each with its own sub-pixel shift, small
rotation and zoom, exposure flicker and an independent ``facekit.randdeg`` camera degradation
(blur, resize, noise, JPEG; never the OOD suite's recipe, which evaluates). The frozen single-frame
restorer restores the best crop; :class:`facekit.archs.fusionnet.FusionNet` learns the correction
from the other crops' innovations (L1 to the clean reference crop).

Faces: CelebA's train split, UTKFace's train split and ORL people 21-40 (train split), as the
faithful restorer; ORL 1-20, UTKFace eval, CelebA's test slice and Pins stay unseen.

    python -m facekit fuse --train configs/fusion/fusion-gpu-a.yaml [--resume]

Bursts are built once and cached in the run folder (``bursts.npz``); checkpoints are atomic and
hold the optimizer and generator states, so ``--resume`` continues exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from facekit import chain, fusion, restorers, settings
from facekit.archs.fusionnet import FusionNet
from facekit.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from facekit.errors import ConfigError
from facekit.runs import RunDir


@dataclass
class FusionTrainConfig:
    """A fusion training run (saved as ``config.yaml`` in the run folder and in every checkpoint).

    Attributes:
        name: run folder name under ``data/runs``.
        sources: face sources with ``share`` of bursts and optional ``people`` [first, last].
        restorer: chain folder of the frozen single-frame restorer (``default`` = models/default).
        bursts: number of synthetic bursts (the training set).
        k_range: [min, max] crops per burst (the reference included).
        lq_sides: crop sides drawn per burst; scale: output / crop side.
        gray_prob: share of grey (mono camera) bursts.
        ch, blocks: :class:`FusionNet` size.
        steps, batch, lr, weight_decay: optimisation; cosine schedule after ``warmup`` steps.
        ckpt_every: checkpoint period (steps); seed: every draw derives from it.
        workers: processes building bursts (the bursts do not depend on it).
        device: where the network trains (``cpu``, ``cuda``, ``cuda:1``); the bursts are built on CPU.
    """

    name: str = "fusion"
    sources: list = field(default_factory=lambda: [
        {"data": "celeba:../shared/data/celeba-10k", "share": 0.6},
        {"data": "utkface:../shared/data/utkface-5k", "share": 0.3},
        {"data": "orl", "share": 0.1, "people": [21, 40]}])
    restorer: str = "default"
    bursts: int = 3000
    k_range: list = field(default_factory=lambda: [2, 8])
    lq_sides: list = field(default_factory=lambda: [12, 16, 16, 20])
    scale: int = 4
    gray_prob: float = 0.15
    ch: int = 48
    blocks: int = 4
    steps: int = 3000
    batch: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup: int = 100
    ckpt_every: int = 250
    seed: int = 22
    workers: int = 1
    device: str = "cpu"

    def __post_init__(self):
        for name in ("bursts", "steps", "batch", "ckpt_every", "ch", "blocks", "scale", "workers"):
            settings.check_int(getattr(self, name), f"fusion config {name}", 1)
        if not (isinstance(self.k_range, (list, tuple)) and len(self.k_range) == 2
                and 1 <= int(self.k_range[0]) <= int(self.k_range[1]) <= 64):
            raise ConfigError(f"fusion config k_range must be [min, max] within 1..64, got {self.k_range!r}")
        if not self.lq_sides or any(int(s) < 4 or int(s) > 128 for s in self.lq_sides):
            raise ConfigError(f"fusion config lq_sides must be sides in 4..128, got {self.lq_sides!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and 0 < self.lr < 1):
            raise ConfigError(f"fusion config lr must be in (0, 1), got {self.lr!r}")
        if not 0.0 <= float(self.gray_prob) <= 1.0:
            raise ConfigError(f"fusion config gray_prob must be in [0, 1], got {self.gray_prob!r}")
        if not self.sources:
            raise ConfigError("fusion config sources is empty")
        settings.check_device(self.device, "fusion config device")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "FusionTrainConfig":
        """Read a config file; unknown keys are an error naming them and the valid ones."""
        path = Path(path)
        raw = settings.load_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"fusion config {path}: expected a mapping, got {type(raw).__name__}")
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - valid)
        if unknown:
            raise ConfigError(f"fusion config {path}: unknown keys {unknown}; valid: {', '.join(sorted(valid))}")
        return cls(**raw)


def run_dir(cfg: FusionTrainConfig) -> Path:
    return settings.child_dir(settings.DATA_DIR / "runs", cfg.name, "fusion run name")


def training_faces(cfg: FusionTrainConfig, progress: bool = True) -> list[tuple[np.ndarray, float]]:
    """``[(faces (N,128,128,3) uint8, share)]`` per source: train splits only, ``people`` filtered."""
    from facekit.data import load_faces, person_numbers

    out = []
    for src in cfg.sources:
        faces = load_faces(src["data"], size=128, progress=progress).subset("train")
        images = faces.images
        if src.get("people"):
            lo, hi = (int(v) for v in src["people"])
            num = person_numbers(faces.identity)
            images = images[(num >= lo) & (num <= hi)]
        if len(images) == 0:
            raise ConfigError(f"fusion source {src['data']}: no training faces")
        out.append((images, float(src.get("share", 1.0))))
    return out


def _burst_job(args):
    face, k, side, gray, seed, scale, restorer_name = args
    rng = np.random.default_rng(seed)
    if gray:
        face = np.repeat((face.astype(np.float32) @ fusion.LUMA)[..., None], 3, axis=2).round().astype(np.uint8)
    lq, gt, _ = fusion.synthetic_burst(face, k, side, rng, fusion.train_degrade(side, gray), scale=scale,
                                       context=1.15)
    order = fusion.select_frames(fusion.frame_quality(lq), k)
    lq = lq[order]
    reg = fusion.register(lq, 0)
    return lq, gt[order[0]], reg


_RESTORER = {}


def _burst_sample(args) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """One training sample: ``(side, innov (9,S,S) float16, context (6,S,S) float16, gt (3,S,S) uint8)``.

    Runs in the main process or in a worker; each process loads the frozen restorer once.
    """
    face, k, side, gray, seed, scale, restorer_name = args
    key = (restorer_name, scale)
    if key not in _RESTORER:
        _RESTORER[key] = fusion.single_frame_restorer(restorer_name, scale=scale)
    lq, gt, reg = _burst_job(args)
    single = fusion.restore_crops(_RESTORER[key], lq[:1])[0]
    innov, context, _ = fusion.fusion_inputs(lq, reg, single, fusion.FusionConfig(scale=scale))
    return side, innov.astype(np.float16), context.astype(np.float16), np.ascontiguousarray(gt.transpose(2, 0, 1))


def _worker_init() -> None:
    # One thread per worker: the workers are the parallelism, and oversubscribed BLAS threads thrash.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def build_bursts(cfg: FusionTrainConfig, progress: bool = True) -> dict[int, dict[str, np.ndarray]]:
    """Synthesise the training bursts and their fusion inputs, grouped by crop side.

    Every draw (face, k, side, grey, the burst's own seed) is made here in order, so the bursts do
    not depend on ``cfg.workers`` (beyond one float16 unit of the restorer's output, which thread
    counts can move); with more than one worker they are built in spawned processes
    (spawn, not fork: a forked child of a process whose OpenCV started threads can hang).

    Returns:
        ``{side: {"innov": (n,9,S,S) float16, "context": (n,6,S,S) float16, "gt": (n,3,S,S) uint8}}``.
    """
    import multiprocessing

    from tqdm.auto import tqdm

    pools = training_faces(cfg, progress)
    shares = np.array([s for _, s in pools], np.float64)
    shares /= shares.sum()
    rng = np.random.default_rng([cfg.seed, 0])

    def jobs():
        for i in range(cfg.bursts):
            p = int(rng.choice(len(pools), p=shares))
            faces = pools[p][0]
            face = faces[int(rng.integers(len(faces)))]
            k = int(rng.integers(cfg.k_range[0], cfg.k_range[1] + 1))
            side = int(cfg.lq_sides[int(rng.integers(len(cfg.lq_sides)))])
            gray = bool(rng.random() < cfg.gray_prob)
            yield face, k, side, gray, [cfg.seed, 1, i], cfg.scale, cfg.restorer

    groups: dict[int, dict[str, list]] = {}
    bar = tqdm(total=cfg.bursts, desc="fusion bursts", disable=not progress)

    def add(sample):
        side, innov, context, gt = sample
        g = groups.setdefault(side, {"innov": [], "context": [], "gt": []})
        g["innov"].append(innov)
        g["context"].append(context)
        g["gt"].append(gt)
        bar.update(1)

    if cfg.workers <= 1:
        for job in jobs():
            add(_burst_sample(job))
    else:
        with multiprocessing.get_context("spawn").Pool(cfg.workers, initializer=_worker_init) as pool:
            for sample in pool.imap(_burst_sample, jobs(), chunksize=16):
                add(sample)
    bar.close()
    return {side: {k: np.stack(v) for k, v in g.items()} for side, g in groups.items()}


def resume_key(config: dict) -> dict:
    """The config without the settings that do not change the run's numbers (where it runs, how many builders)."""
    return {k: v for k, v in config.items() if k not in ("device", "workers")}


def _lr_at(cfg: FusionTrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _save(path: Path, net: FusionNet, opt, step: int, cfg: FusionTrainConfig, gen: torch.Generator,
          history: list, restorer_sha: str | None) -> None:
    save_checkpoint(path, {"format": FUSION_TRAIN_FORMAT, "step": step, "config": asdict(cfg),
                           "arch_kwargs": {"ch": cfg.ch, "blocks": cfg.blocks},
                           "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                           "optimizer": opt.state_dict(), "rng": rng_state({"batches": gen}),
                           "history": history, "restorer_sha256": restorer_sha})


FUSION_TRAIN_FORMAT = "facekit-fusion-train-v1"


def restorer_digest(model: str) -> str | None:
    """sha256 of the restorer chain's weights file(s), so a fusion model names what it was trained on."""
    import hashlib

    root = chain.default_model_dir() if model in ("", "default") else Path(model)
    files = sorted(root.glob("*.pt")) if root.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


BURST_FIELDS = ("sources", "restorer", "bursts", "k_range", "lq_sides", "scale", "gray_prob", "seed")


def burst_key(cfg: FusionTrainConfig) -> dict:
    """What a run's bursts depend on: the config's :data:`BURST_FIELDS` and the restorer's weights
    (``restorer_digest``: SHA-256 of its chain folder's yaml, pt and onnx files, as a new release
    of the restorer changes every burst's context)."""
    import hashlib

    key = {f: getattr(cfg, f) for f in BURST_FIELDS}
    folder = restorers.chain_folder(str(cfg.restorer).partition("@")[0])
    files = [folder] if folder.is_file() else \
        sorted(p for p in folder.glob("*") if p.suffix in (".yaml", ".yml", ".pt", ".onnx") and p.is_file())
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode() + b"\0" + p.read_bytes())
    key["restorer_digest"] = digest.hexdigest()[:16]
    return key


def ensure_bursts(cfg: FusionTrainConfig, out: Path, progress: bool = True) -> dict[int, dict[str, np.ndarray]]:
    """The run's bursts: read from ``out/bursts.npz`` when it was built for the same :func:`burst_key`,
    else built and written there (atomically), saying why an existing file was not used.

    Returns:
        :func:`build_bursts`'s ``{side: {"innov", "context", "gt"}}``.
    """
    import json
    import sys

    bursts_file = Path(out) / "bursts.npz"
    key = burst_key(cfg)
    if bursts_file.is_file():
        data: dict[int, dict[str, np.ndarray]] = {}
        with np.load(bursts_file, allow_pickle=False) as z:
            stored = json.loads(str(z["key"])) if "key" in z.files else None
            if stored == json.loads(json.dumps(key)):  # compared as saved: tuples become lists
                for name in z.files:
                    if name != "key":
                        side, part = name.split("/")
                        data.setdefault(int(side), {})[part] = z[name]
                return data
        changed = "no record of its settings" if stored is None else "changed: " + ", ".join(
            k for k in key if json.dumps(stored.get(k), sort_keys=True) != json.dumps(key[k], sort_keys=True))
        print(f"{bursts_file} was built for other burst settings ({changed}); building them again", file=sys.stderr)
    data = build_bursts(cfg, progress)
    bursts_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = bursts_file.with_name(".bursts.tmp.npz")
    np.savez(tmp, key=np.array(json.dumps(key, sort_keys=True)),
             **{f"{side}/{k}": v for side, g in data.items() for k, v in g.items()})
    tmp.replace(bursts_file)
    return data


def train_fusion(cfg: FusionTrainConfig, resume: bool = False, progress: bool = True,
                 max_steps: int | None = None) -> Path:
    """Train :class:`FusionNet` on synthetic bursts; returns the run folder.

    Args:
        cfg: the run's config.
        resume: continue from ``checkpoints/last.pt`` (same config required).
        progress: progress bars.
        max_steps: stop after this many steps in this call (a test's early stop); the schedule
            still follows ``cfg.steps``.
    """
    from tqdm.auto import tqdm

    out = run_dir(cfg)
    ckpt_path = RunDir(out).last
    if not resume and ckpt_path.exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another name")
    out.mkdir(parents=True, exist_ok=True)
    RunDir(out).config.write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    data = ensure_bursts(cfg, out, progress)
    device = torch.device(settings.check_device(cfg.device, "fusion config device", available=True))
    torch.manual_seed(cfg.seed)
    net = FusionNet(cfg.ch, cfg.blocks).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)  # on CPU: the same batches on every device
    step, history = 0, []
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        if resume_key(ck.get("config") or {}) != resume_key(asdict(cfg)):
            raise ConfigError(f"{ckpt_path}: saved with another config; resume needs the same config file "
                              f"(only device and workers may change)")
        net.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        set_rng_state(ck["rng"], {"batches": gen})
        step, history = int(ck["step"]), list(ck["history"])
    sides = sorted(data)
    sizes = torch.tensor([len(data[s]["gt"]) for s in sides], dtype=torch.float64)
    # The whole burst set moves to the device once (float16 as stored): a batch is then an index.
    tensors = {s: {k: torch.from_numpy(v).to(device) for k, v in data[s].items()} for s in sides}
    digest = restorer_digest(cfg.restorer)
    stop = cfg.steps if max_steps is None else min(cfg.steps, step + int(max_steps))
    bar = tqdm(total=stop, initial=step, desc="fusion train", disable=not progress)
    t0, run_loss, run_n = time.perf_counter(), torch.zeros((), device=device), 0
    net.train()
    while step < stop:
        side = sides[int(torch.multinomial(sizes, 1, generator=gen))]
        g = tensors[side]
        idx = torch.randint(len(g["gt"]), (cfg.batch,), generator=gen).to(device)
        innov = g["innov"][idx].float()
        ctx = g["context"][idx].float()
        gt = g["gt"][idx].float().div_(255.0)
        for pg in opt.param_groups:
            pg["lr"] = _lr_at(cfg, step)
        out_img = ctx[:, :3] + net(innov, ctx)
        loss = torch.nn.functional.l1_loss(out_img, gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        run_loss += loss.detach()  # summed on the device: one host sync per log line, not per step
        run_n += 1
        bar.update(1)
        if step % 50 == 0 or step == stop:
            base = float(torch.nn.functional.l1_loss(ctx[:, :3], gt))
            mean_loss = float(run_loss) / run_n
            history.append({"step": step, "l_fuse_l1": mean_loss, "l_single_l1": base,
                            "s": round(time.perf_counter() - t0, 1)})
            bar.set_postfix(l1=f"{mean_loss:.4f}", single=f"{base:.4f}")
            run_loss, run_n = torch.zeros((), device=device), 0
        if step % cfg.ckpt_every == 0 or step == stop:
            _save(ckpt_path, net, opt, step, cfg, gen, history, digest)
    bar.close()
    return out


def export(run: str | Path, dest: str | Path) -> Path:
    """Write a finished run's weights as a released fusion model (``fusion.pt``, float32, no optimizer)."""
    run = Path(run)
    ck = load_checkpoint(RunDir(run).require_last())
    dest = Path(dest)
    return save_checkpoint(dest, {"format": fusion.FUSION_FORMAT, "arch_kwargs": ck["arch_kwargs"],
                                  "state_dict": ck["state_dict"], "config": ck["config"], "step": ck["step"],
                                  "restorer_sha256": ck.get("restorer_sha256"),
                                  "history": ck["history"][-5:]})
