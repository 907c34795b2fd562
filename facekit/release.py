"""Release a trained run as a restoration chain folder with its model card.

``release_run(run, out)`` turns a finished training run (``data/runs/<name>/``) into the folder
that :mod:`facekit.restore` and the evaluation load as ``chain:default``::

    models/default/
        chain.yaml        # size + stages (reconstruct: reconstruct.pt) + sha256 of reconstruct.pt
        reconstruct.pt    # EMA generator, a facekit.chain stage file (weights_only loadable)
        config.yaml       # the run's TrainConfig, so it can be retrained from this alone
        report.json       # every number in TRAINING.md, machine readable
        TRAINING.md       # model card: data, training, held-out quality per lighting condition
        curves.png        # validation PSNR and losses over training (every compared run)

The card is rendered from ``facekit/templates/model_card*.md`` and names the sources the run's
config (and its ``init_from`` parents') trained on, with their citations (each :data:`facekit.data.SOURCES`
entry's ``card_note``).
The run folder is read through :class:`facekit.runs.RunDir`, its config as a typed
:class:`facekit.train.TrainConfig` (:func:`load_config`).

The quality table is measured here, not copied: the run's test split (for CelebA, the untouched
9,901-10,000 slice) is degraded with the run's preset at its scale under each lighting condition
(paired draws, :class:`facekit.evaluate.PairMaker`), restored by bicubic upsampling, by the
released model and by every ``compare`` run, and scored by :func:`facekit.evaluate.evaluate`.
"""

from __future__ import annotations

import json
import re
import shutil
import string
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from facekit import degrade, ood
from facekit.data import SOURCES, load_faces, source_kind
from facekit.errors import ConfigError
from facekit.runs import RunDir
from facekit.settings import PROJECT_ROOT, check_writable

# "TrainConfig" in annotations is facekit.train.TrainConfig, imported by load_config only when a
# config is read: the trainer's module imports torch, which the card and table helpers never need.

STAGE_FILE = "reconstruct.pt"
RELEASE_CONFIG = "config.yaml"  # a released folder's copy of the run's config; parents' as init-<run>.yaml
MAX_MODEL_MB = 25.0
# Quality bar of the released model over bicubic, per lighting condition.
TARGET_PSNR_GAIN = 3.0
TARGET_SSIM_GAIN = 0.05
# The row order of the headroom table's families; a family no entry names comes after these.
HEADROOM_FAMILY_ORDER = (degrade.HEADROOM_NOISE, degrade.HEADROOM_SCENE, degrade.HEADROOM_BLUR)


def headroom_groups(ops: dict[str, degrade.OpDef] | None = None) -> dict[str, tuple[str, ...]]:
    """The degradation families :func:`headroom_table` removes one at a time, from the op registry.

    Args:
        ops: the op registry (default :data:`facekit.degrade.OPS`); an op joins a family with its
            ``headroom`` label.

    Returns:
        family label -> its op names in imaging-chain order; families in
        :data:`HEADROOM_FAMILY_ORDER`, then any other in registry order.
    """
    registry = degrade.OPS if ops is None else ops
    named = dict.fromkeys(opdef.headroom for opdef in registry.values() if opdef.headroom)
    ordered = sorted(registry.values(), key=lambda opdef: opdef.chain_position)
    families = [f for f in HEADROOM_FAMILY_ORDER if f in named] + [f for f in named if f not in HEADROOM_FAMILY_ORDER]
    return {f: tuple(opdef.name for opdef in ordered if opdef.headroom == f) for f in families}


def headroom_keep(ops: dict[str, degrade.OpDef] | None = None) -> tuple[str, ...]:
    """The ops the headroom table's "downsample only" row keeps (``headroom_keep``), in chain order."""
    ordered = sorted((degrade.OPS if ops is None else ops).values(), key=lambda opdef: opdef.chain_position)
    return tuple(opdef.name for opdef in ordered if opdef.headroom_keep)


# Degradation families removed one at a time by :func:`headroom_table` (ops absent from a preset
# are skipped): how much of bicubic's error each family causes, and how the model fares without it.
HEADROOM_GROUPS: dict[str, tuple[str, ...]] = headroom_groups()
HEADROOM_KEEP = headroom_keep()  # the "downsample only" row keeps just these
CARD_TEMPLATES = "templates"  # package folder of the model card's string.Template files


def load_config(source: str | Path | dict, where: str | Path | None = None) -> "TrainConfig":
    """A saved :class:`facekit.train.TrainConfig`, typed and validated.

    Args:
        source: a ``config.yaml`` (a run's, or a released folder's ``config.yaml``/``init-*.yaml``),
            or the config dict a checkpoint holds.
        where: the file a dict came from, named in errors.

    Raises:
        ConfigError: naming the file, for a missing, empty or invalid config.
    """
    from facekit.train import TrainConfig  # imports torch: only once a run's config is read

    if not isinstance(source, dict):
        return TrainConfig.from_yaml(source)
    try:
        return TrainConfig.from_dict(source)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None


def _run_summary(run_dir: str | Path) -> dict:
    """``summary.json`` of a run folder that holds its ``checkpoints/last.pt`` (``{}`` without one).

    Raises:
        ConfigError: the folder has no last checkpoint (not a finished training run).
    """
    run = RunDir(run_dir)
    run.require_last()
    return run.read_summary()


def lineage(run_dir: str | Path) -> list[Path]:
    """The run folders a fine-tuned run descends from (``init_from``), oldest first, itself last.

    Raises:
        ConfigError: an ancestor's folder is missing, or the chain loops.
    """
    chain = [Path(run_dir)]
    while True:
        init_from = load_config(RunDir(chain[0]).config).init_from
        if not init_from or released_folder(init_from):  # a released model: see released_parent
            return chain
        parent = RunDir.of(init_from)  # a run folder, or a checkpoint inside one
        if not parent.is_run():
            raise ConfigError(f"{chain[0]}: init_from {init_from!r} is not a run folder with a config.yaml; "
                              "its parent run is needed to describe (and reproduce) the released model")
        if parent.path.resolve() in [c.resolve() for c in chain]:
            raise ConfigError(f"{chain[0]}: init_from chain loops back to {parent.path}")
        chain.insert(0, parent.path)


def released_folder(path: str | Path | None) -> Path | None:
    """The released chain folder whose stage file ``path`` is (a ``.pt`` with a ``config.yaml`` beside it), else None."""
    if not path:
        return None
    path = Path(path)
    return path.parent if path.suffix == ".pt" and (path.parent / RELEASE_CONFIG).is_file() else None


def released_parent(run_dir: str | Path) -> Path | None:
    """The released chain folder the oldest run of ``run_dir``'s lineage was fine-tuned from
    (``init_from`` naming its stage file, e.g. ``models/default/reconstruct.pt``), or None."""
    return released_folder(load_config(RunDir(lineage(run_dir)[0]).config).init_from)


def _released_configs(folder: Path) -> list[tuple[str, "TrainConfig", dict]]:
    """``(file, config, {})`` for a released folder's ``config.yaml`` and its ``init-*.yaml`` parents."""
    return [(str(f), load_config(f), {}) for f in [folder / RELEASE_CONFIG, *sorted(folder.glob("init-*.yaml"))]]


def _released_lineage(folder: Path, stage_file: str) -> tuple[list[dict], dict[str, str]]:
    """A released parent as lineage entries (its own parents, then itself) and the configs to copy.

    Returns:
        ``(entries, files)``: report ``lineage`` entries, oldest first, the released run's carrying
        ``released`` (the stage file named by ``init_from`` and its sha256); and
        ``{name in the new folder: text}`` for its ``init-*.yaml`` and its ``config.yaml``
        (read now, before a release into the same tree can replace them).

    Raises:
        ConfigError: the folder has no ``report.json`` saying which run it released.
    """
    report_path = folder / "report.json"
    if not report_path.is_file():
        raise ConfigError(f"{folder}: a released parent needs its report.json (which run it released, and that "
                          "run's lineage) to describe the model fine-tuned from it")
    parent = json.loads(report_path.read_text())
    name = parent["released_run"]
    entries = [dict(e) for e in parent.get("lineage", [])]
    entries.append({"run": name, "config": f"init-{name}.yaml", "summary": parent.get("training", {}).get(name, {}),
                    "released": {"stage_file": str(stage_file), "sha256": _sha256(stage_file)}})
    files = {e["config"]: (folder / e["config"]).read_text() for e in entries[:-1]}
    files[f"init-{name}.yaml"] = (folder / RELEASE_CONFIG).read_text()
    return entries, files


def check_probes_unseen(run_dirs: list[Path], people: int) -> None:
    """Refuse a gallery check whose probe people some run (or a run it started from) trained on.

    Args:
        run_dirs: the released and compared runs.
        people: ORL people ``1..people`` that :func:`facekit.evaluate.probe_check` uses.

    Raises:
        ConfigError: naming the run and the people it mixed in from ORL.
    """
    for run in run_dirs:
        for where, cfg, summary in training_configs(run):
            # (config key, source, people kept or None for every person); a run handed its faces by
            # the caller (train(faces=...)) did not read cfg.data
            used = [("data", summary.get("data_source", cfg.data), None)]
            if cfg.mix_data:
                used.append(("mix_data", cfg.mix_data, cfg.mix_people))
            used += [("sources", e["data"], e.get("people")) for e in cfg.sources or []]
            for key, source, chosen in used:
                if not source or source_kind(source) != "orl":
                    continue
                first, last = (int(chosen[0]), chosen[1]) if chosen else (1, "all")
                if first <= int(people):
                    raise ConfigError(f"{where}: trained on ORL people {first}-{last} ({key}), so the ORL gallery "
                                      f"check on people 1-{people} would test on training faces; train on ORL "
                                      f"people above {people} or release with probe_people=0")


def _teacher_configs(teacher: str, student: Path, seen: list[Path]) -> list[tuple[str, "TrainConfig", dict]]:
    """What a ``distill_from`` teacher trained on: a run folder (or its checkpoint) and its
    lineage, or a released chain folder's stage file with the ``config.yaml``/``init-*.yaml`` beside it.
    """
    folder = released_folder(teacher)
    if folder:
        return _released_configs(folder)
    run = RunDir.of(Path(teacher))  # a run folder, or a checkpoint inside one
    if not run.is_run():
        raise ConfigError(f"{student}: distill_from {teacher!r} is neither a run folder nor a released model folder "
                          "with its config.yaml, so what the teacher trained on cannot be checked")
    return training_configs(run.path, seen)


def training_configs(run_dir: str | Path, seen: list[Path] | None = None) -> list[tuple[str, "TrainConfig", dict]]:
    """Every training config behind a run: its ``init_from`` lineage and any ``distill_from``
    teacher's (recursively), as ``(where, config, summary)`` for data checks.

    Raises:
        ConfigError: a parent or teacher that cannot be found, or an init_from loop.
    """
    seen = [] if seen is None else seen
    found = []
    for a in lineage(run_dir):
        if a.resolve() in seen:  # shared by init_from and distill_from, or a distill_from loop: listed once
            continue
        seen.append(a.resolve())
        cfg = load_config(RunDir(a).config)
        found.append((str(a), cfg, _run_summary(a)))
        if cfg.distill_from:
            found += _teacher_configs(cfg.distill_from, a, seen)
    parent = released_parent(run_dir)
    if parent and parent.resolve() not in seen:  # what the released model it started from trained on
        seen.append(parent.resolve())
        found += _released_configs(parent)
    return found


def _steps(run: Path) -> int:
    return load_config(RunDir(run).config).steps


def _step_offsets(runs: list[Path]) -> dict[Path, int]:
    """Global step at which each run's step 0 falls, so a fine-tune plots after its parent."""
    return {run: sum(_steps(a) for a in lineage(run)[:-1]) for run in runs}


WEIGHTS = ("best", "ema", "raw")


def val_scores(nets: dict, cfg: "TrainConfig", faces=None) -> dict[str, dict[str, float]]:
    """PSNR/SSIM of generators on the run's own validation pairs (never the test split).

    The faces are loaded and the pairs synthesised once for all ``nets``.

    Args:
        nets: name -> generator taking ``(N,3,h,w)`` in [0,1].
        cfg: the run's config.
        faces: val faces ``(M,S,S,3) uint8`` instead of the run's data source's val split.

    Returns:
        name -> ``{"psnr", "ssim"}``.
    """
    from facekit.train import evaluate, make_val_pairs, split_faces

    if faces is None:
        _, faces = split_faces(load_faces(cfg.data, size=cfg.size, seed=cfg.seed, progress=False), cfg.val_count)
    lq, gt, _ = make_val_pairs(np.asarray(faces)[: cfg.val_count], cfg)
    import torch

    return {name: evaluate(net, lq, gt, torch.device("cpu")) for name, net in nets.items()}


def release_size(cfg: "TrainConfig") -> int:
    """The gt side a run is measured and released at: its ``val_size`` (multi-scale runs cache
    larger faces than they are measured at), else its ``size``."""
    return int(cfg.val_size or cfg.size)


LOCUS_FACES = 4000  # training faces the relight locus is fitted on (a seeded sample)


def training_faces_sample(cfg: "TrainConfig", n: int = LOCUS_FACES, seed: int = 0) -> np.ndarray:
    """A seeded sample of a run's clean training faces, every mixed-in source included (their
    train splits only), ``(n,S,S,3) uint8``: what the relight locus is fitted on."""
    from facekit.train import mix_faces, split_faces

    train, _ = split_faces(load_faces(cfg.data, size=cfg.size, limit=cfg.limit, seed=cfg.seed, progress=False),
                           cfg.val_count)
    if cfg.mix_entries():
        train, _ = mix_faces(train, cfg)  # repeated by share, so the sample follows the training mix
    pick = np.random.default_rng(seed).choice(len(train), size=min(n, len(train)), replace=False)
    return train[np.sort(pick)]


def prepare_for_release(net, info: dict, relight: bool = True, luma_detail_only: bool = False) -> dict:
    """Arch kwargs for the released stage; a ``faithful`` generator gets its relight locus fitted
    on the run's training faces and the (explicit, switchable) relight step turned on, and with
    ``luma_detail_only`` its chroma detail switched off (the output's colour is then the input's).

    Returns:
        The kwargs to save with the stage.
    """
    kwargs = dict(info["kwargs"])
    if info["arch"] == "faithful":
        from facekit.relight import fit_locus, set_locus

        set_locus(net, fit_locus(training_faces_sample(load_config(info["config"]))))
        net.relight = bool(relight)
        kwargs["relight"] = bool(relight)
        if luma_detail_only:
            net.chroma_detail = False
            kwargs["chroma_detail"] = False
    elif luma_detail_only:
        raise ConfigError(f"luma_detail_only needs a faithful generator, not {info['arch']!r}")
    return kwargs


def export_stage(run_dir: str | Path, path: str | Path, weights: str = "ema", val_faces=None,
                 allow_unfinished: bool = False, half: bool = True,
                 luma_detail_only: bool = False) -> tuple[Path, dict]:
    """Write a run's generator as a ``reconstruct`` chain stage.

    Args:
        run_dir: training run folder (``checkpoints/last.pt``, ``summary.json``).
        path: destination ``.pt``.
        weights: "ema" (the moving average), "raw" (the last step's weights) or "best": whichever
            of the two scores the higher PSNR on the run's validation pairs. On a short run the
            EMA (decay 0.999) still carries a noticeable share of the initial, bicubic-like
            weights, so the raw weights can be better.
        val_faces: validation faces for "best" (default: the run's source's val split).
        allow_unfinished: export a run that has not reached its last step (an interim candidate
            for evaluation; never a release).
        half: store the parameters as float16 (half the file, so a release stays small in git;
            they run in float32 after loading, and the card's numbers are measured on them).
        luma_detail_only: see :func:`prepare_for_release`.

    Returns:
        ``(path, info)`` with info from :func:`facekit.checkpoint.load_generator` plus ``summary``,
        ``weights`` (the ones written) and ``val`` (their val scores, for "best").
    """
    from facekit.chain import save_stage
    from facekit.checkpoint import load_generator

    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights!r}: valid: {', '.join(WEIGHTS)}")
    run = RunDir(run_dir)
    ckpt = run.require_last()
    summary = run.read_summary()
    net, info = load_generator(ckpt, ema=weights != "raw")
    cfg = load_config(info["config"], ckpt)
    if not allow_unfinished and info.get("step") is not None and int(info["step"]) < cfg.steps:
        raise ConfigError(f"{ckpt}: the run stopped at step {info['step']} of {cfg.steps}; "
                          f"finish it (python -m facekit train --config {run.config} --resume) first")
    chosen, val = ("raw" if weights == "raw" else "ema"), {}
    if weights == "best":
        raw, _ = load_generator(ckpt, ema=False)
        val = val_scores({"ema": net, "raw": raw}, cfg, val_faces)
        if val["raw"]["psnr"] > val["ema"]["psnr"]:
            net, chosen = raw, "raw"
    in_size = release_size(cfg) // cfg.scale
    info["kwargs"] = prepare_for_release(net, info, luma_detail_only=luma_detail_only)
    save_stage(path, "reconstruct", net, dict(info["kwargs"]), arch=info["arch"], in_size=in_size,
               extra={"run": run.name, "step": info["step"], "config": info["config"], "summary": summary,
                      "weights": chosen, "val": val, "stored_dtype": "float16" if half else "float32"},
               half=half)
    info.update(summary=summary, weights=chosen, val=val, stored_dtype="float16" if half else "float32")
    return Path(path), info


def _method_label(run_dir: Path, cfg: "TrainConfig") -> str:
    """A run's name in the card's tables, with its identity loss and mixed-in source."""
    w = float(cfg.identity_weight or 0.0)
    mode = cfg.identity_mode
    kind = f"id loss {w:g}" + ("" if mode == "cosine" else f" {mode}") if w > 0 else "no id loss"
    if cfg.mix_data:
        people = cfg.mix_people
        kind += f", + {cfg.mix_data}" + (f" people {people[0]}-{people[1]}" if people else "")
    return f"{run_dir.name} ({kind})"


def quality_table(df: pd.DataFrame, model: str, baseline: str = "bicubic", n_boot: int = 1000) -> pd.DataFrame:
    """Per condition: model and baseline PSNR/SSIM means, their gains, and whether the targets hold.

    Args:
        df: rows of :func:`facekit.evaluate.evaluate`.
        model, baseline: method names in ``df``.

    Returns:
        One row per condition: ``condition, n, psnr_<m>, psnr_<b>, psnr_gain, ssim_<m>, ssim_<b>,
        ssim_gain, meets_target``.
    """
    from facekit.evaluate import summarise

    s = summarise(df[df["method"].isin([model, baseline])], ("method", "condition"),
                  metrics=["psnr", "ssim"], n_boot=n_boot)
    rows = []
    for cond, grp in s.groupby("condition", sort=False):
        m = grp[grp["method"] == model].iloc[0]
        b = grp[grp["method"] == baseline].iloc[0]
        row = {"condition": cond, "n": int(m["n"]),
               "psnr_model": m["psnr"], "psnr_bicubic": b["psnr"], "psnr_gain": m["psnr"] - b["psnr"],
               "ssim_model": m["ssim"], "ssim_bicubic": b["ssim"], "ssim_gain": m["ssim"] - b["ssim"]}
        row["meets_target"] = bool(row["psnr_gain"] >= TARGET_PSNR_GAIN and row["ssim_gain"] >= TARGET_SSIM_GAIN)
        rows.append(row)
    return pd.DataFrame(rows)


def headroom_table(faces, method, preset: str = "cctv-heavy", scale: int = 4, condition: str = "medium",
                   seed: int = 0) -> pd.DataFrame:
    """PSNR of bicubic and of ``method`` with each degradation family of ``preset`` removed.

    The same faces and seeds for every row, so rows differ only in the ops left out. The gap
    between the "full preset" and "downsample only" bicubic rows is what a restorer can win back
    without hallucinating detail beyond the input's resolution.

    Args:
        faces: ``(N,S,S,3) uint8`` clean faces (or a FaceSet).
        method: callable ``(lq (N,3,h,w) in [0,1], (S,S)) -> (N,3,S,S)``, e.g. from
            :func:`facekit.restorers.build_restorer`.
        preset: degradation preset (a name from :data:`facekit.degrade.PRESETS` or a spec).
        scale: downsampling factor.
        condition: lighting condition for every row.
        seed: degradation seed.

    Returns:
        One row per variant: ``variant``, ``removed`` (op names), ``psnr_bicubic``, ``psnr_model``,
        ``gain``.
    """
    import torch
    import torch.nn.functional as F

    from facekit.dataset import make_eval_pairs
    from facekit.metrics import psnr

    spec = degrade.load_spec(preset)
    names = [e.get("op") if isinstance(e, dict) else None for e in spec]
    variants = [("full preset", ())]
    for label, ops in HEADROOM_GROUPS.items():
        gone = tuple(o for o in ops if o in names)
        if gone:
            variants.append((f"no {label}", gone))
    variants.append(("downsample only", tuple(n for n in names if n not in HEADROOM_KEEP)))
    rows = []
    for label, gone in variants:
        kept = [e for e, n in zip(spec, names) if n not in gone]
        lq, gt = make_eval_pairs(faces, kept, scale=scale, condition=condition, seed=seed)
        size = tuple(gt.shape[-2:])
        with torch.inference_mode():
            bic = F.interpolate(lq, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
            out = method(lq, size).clamp(0, 1)
        pb, pm = float(psnr(bic, gt).mean()), float(psnr(out, gt).mean())
        rows.append({"variant": label, "removed": ", ".join(gone) or "-", "psnr_bicubic": pb, "psnr_model": pm,
                     "gain": pm - pb})
    return pd.DataFrame(rows)


def released_quality(model_dir: str | Path | None = None) -> pd.DataFrame:
    """The per-condition quality table a release measured (its ``report.json``), no re-measuring.

    Args:
        model_dir: a released folder (default ``models/default``).

    Returns:
        The :func:`quality_table` rows, with ``attrs["model"]`` (the released run's name).

    Raises:
        ConfigError: no ``report.json`` there, or one without a quality table.
    """
    model_dir = Path(model_dir) if model_dir is not None else PROJECT_ROOT / "models" / "default"
    path = model_dir / "report.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no release report here; `python -m facekit release RUN {model_dir}` writes one")
    report = json.loads(path.read_text())
    if not report.get("quality"):
        raise ConfigError(f"{path}: the report has no per-condition quality table")
    table = pd.DataFrame(report["quality"])
    table.attrs["model"] = report.get("released_run", model_dir.name)
    return table


def plot_quality(quality: pd.DataFrame, axes=None):
    """Bar charts of the model's PSNR and SSIM gain over bicubic per condition, with the targets.

    Args:
        quality: :func:`quality_table` or :func:`released_quality` rows.
        axes: two matplotlib axes (default: a new figure).

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, (col, target, unit) in zip(axes, (("psnr_gain", TARGET_PSNR_GAIN, " (dB)"),
                                              ("ssim_gain", TARGET_SSIM_GAIN, ""))):
        met = quality[col] >= target
        ax.bar(quality["condition"], quality[col], color=np.where(met, "tab:green", "tab:red"))
        ax.axhline(target, color="black", ls="--", lw=1, label=f"target {target:g}")
        ax.set_title(f"{col.split('_')[0].upper()} gain over bicubic{unit}"), ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].figure.tight_layout()
    return axes[0].figure


def plot_curves(run_dirs: list[Path], path: Path) -> Path:
    """PNG of validation PSNR and the pixel/identity losses over steps, one line per run.

    A fine-tuned run (``init_from``) is drawn after its parent, whose curve is drawn too.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facekit.train import load_metrics

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    seen: dict[Path, Path] = {}  # resolved -> as given, parents first, each run once
    for run in run_dirs:
        for r in lineage(run):
            seen.setdefault(r.resolve(), r)
    runs = list(seen.values())
    offsets = _step_offsets(runs)
    for i, run in enumerate(runs):
        m = load_metrics(run)
        m["step"] = m["step"] + offsets[run]
        val = m.dropna(subset=["val_psnr"])
        style = {"label": run.name, "color": colours[i % len(colours)]}  # one colour per run on every panel
        axes[0].plot(val["step"], val["val_psnr"], marker="o", ms=3, **style)
        axes[1].plot(m["step"], m["l_g_pix"].rolling(8, min_periods=1).mean(), **style)
        if "l_g_id" in m.columns:
            axes[2].plot(m["step"], m["l_g_id"].rolling(8, min_periods=1).mean(), **style)
    for ax, title in zip(axes, ("val PSNR (dB, EMA weights)", "l_g_pix (L1, smoothed)", "l_g_id (1 - cos SFace)")):
        ax.set_title(title), ax.set_xlabel("step (a fine-tune continues its parent's count)"), ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A pandas table as GitHub markdown (no tabulate dependency)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) else str(v) for v in r.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def release_run(run_dir: str | Path, out_dir: str | Path, compare: list[str | Path] | None = None,
                sample_size: int | None = None, identity_nets=("sface", "dlib"), n_boot: int = 1000,
                progress: bool = True, faces=None, weights: str = "best", val_faces=None,
                probe_people: int = 20, ood_suite: bool = True, ood_limit: int | None = None,
                ood_sources=None, accept_failing: str | None = None, half: bool = True,
                luma_detail_only: bool = False, rank1_draws: int = ood.RANK1_DRAWS) -> dict:
    """Export a run as a chain folder, measure it on the held-out test split, write its model card.

    Args:
        run_dir: the finished training run to release.
        out_dir: the chain folder to (re)write, e.g. ``models/default``.
        compare: other finished runs scored beside it (e.g. the identity-loss twin).
        sample_size: evaluate a seeded subset of the test faces (None = all).
        identity_nets: identity networks for the comparison ("dlib" is skipped when not installed).
        n_boot: bootstrap resamples for the confidence intervals.
        progress: progress bars.
        faces: test faces instead of the run's data source's ``test`` split (FaceSet or array).
        weights: which weights to release (see :func:`export_stage`); compare runs are exported
            the same way, so both sides of a comparison get the same choice rule.
        val_faces: validation faces for ``weights="best"`` (default: the source's val split).
        probe_people: ORL people in the gallery check of :func:`facekit.evaluate.probe_check`
            (0 = skip it).
        ood_suite: measure the released stage on the out-of-distribution suite
            (:mod:`facekit.ood`) and put its table, with the cells worse than bicubic marked, and
            issue 24's targets on the card. Required for the default.
        ood_limit: faces (or people) per OOD source; None = the whole suite. Required None for
            the default.
        ood_sources: OOD sources (default all of :data:`facekit.ood.SOURCES`; all for the default).
        accept_failing: a reason to make the default despite failing *gain* targets (see
            :func:`_promote`); no-harm targets are never waived. Written on the card.
        half: float16 parameters in the stage files (see :func:`export_stage`).
        luma_detail_only: release a faithful generator with its chroma detail off (see
            :func:`prepare_for_release`); written on the card.
        rank1_draws: degradation draws of the medium cell that the rank-1 targets pool
            (:func:`facekit.ood.rank1_draws`); the default needs at least :data:`facekit.ood.RANK1_DRAWS`.

    Returns:
        The report dict written to ``report.json``.

    Raises:
        ConfigError: among others, when ``out_dir`` is the default folder (``models/default``) and
            any OOD target fails. The release is then left in ``models/candidate-<run>`` for
            inspection and the default is untouched; when every target passes, the previous
            default moves to ``models/<its run name>`` and the candidate becomes the default.
    """
    from facekit import evaluate as ev
    from facekit import recognition
    from facekit.chain import default_model_dir
    from facekit.restorers import build_restorer

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    to_default = out_dir.resolve() == default_model_dir().resolve()
    if to_default and (not ood_suite or ood_limit is not None or ood_sources is not None
                       or rank1_draws < ood.RANK1_DRAWS):
        raise ConfigError("a model becomes the default only after the whole out-of-distribution suite "
                          f"(ood_suite=True, ood_limit=None, rank1_draws >= {ood.RANK1_DRAWS}); "
                          "release it to another folder for a partial check")
    if rank1_draws < 1:
        raise ConfigError(f"rank1_draws must be at least 1, got {rank1_draws}")
    final_dir = out_dir
    if to_default:  # measured beside the default; swapped in only when every OOD target passes
        out_dir = out_dir.parent / f"candidate-{run_dir.name}"
    for folder in dict.fromkeys([out_dir, final_dir]):
        # inside the run its files would be overwritten (config.yaml), or lost with the run's
        # checkpoints when the run is trained afresh, which empties checkpoints/
        if folder.resolve().is_relative_to(run_dir.resolve()):
            where = "the run folder" if folder.resolve() == run_dir.resolve() else f"inside the run folder {run_dir}"
            raise ConfigError(f"{folder}: the release folder is {where}; "
                              "release to a folder of its own (e.g. models/NAME)")
        check_writable(folder, "release folder")
    compare = [Path(c) for c in (compare or [])]
    for c in compare:
        RunDir(c).require_last()
    if probe_people:  # before the slow part: a card must not report recognition on training faces
        check_probes_unseen([run_dir, *compare], probe_people)
    teacher = load_config(RunDir(run_dir).config).distill_from
    if teacher and Path(teacher).resolve() == (out_dir / STAGE_FILE).resolve():
        raise ConfigError(f"{run_dir}: its distillation teacher {teacher} is the file this release would overwrite; "
                          f"move the teacher to its own folder (and point distill_from there) first")
    teacher_sha = _sha256(teacher)  # before the export: the checkpoint's copy of the path may be stale
    parent = released_parent(run_dir)
    parent_entries, parent_files = [], {}
    if parent:
        init_from = load_config(RunDir(lineage(run_dir)[0]).config).init_from
        if Path(init_from).resolve() == (out_dir / STAGE_FILE).resolve():
            raise ConfigError(f"{run_dir}: it was fine-tuned from {init_from}, the file this release would overwrite; "
                              "release it to another folder (or as the default, which keeps the previous one)")
        parent_entries, parent_files = _released_lineage(parent, init_from)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage_path, info = export_stage(run_dir, out_dir / STAGE_FILE, weights=weights, val_faces=val_faces, half=half,
                                    luma_detail_only=luma_detail_only)
    size_mb = stage_path.stat().st_size / 2**20
    if size_mb > MAX_MODEL_MB:
        raise ConfigError(f"{stage_path}: {size_mb:.1f} MB is over the {MAX_MODEL_MB:g} MB budget for a released model")
    cfg = load_config(info["config"], RunDir(run_dir).last)
    scale = int(cfg.scale)
    in_size = release_size(cfg) // scale
    (out_dir / "chain.yaml").write_text(
        f"# Released by facekit.release from run {run_dir.name!r} (step {info['step']}); see TRAINING.md.\n"
        f"size: {in_size}\nstages:\n  reconstruct: {STAGE_FILE}\n"
        f"sha256:  # checked at every load (facekit.checkpoint.load_checkpoint)\n  {STAGE_FILE}: {_sha256(stage_path)}\n")
    shutil.copyfile(RunDir(run_dir).config, out_dir / RELEASE_CONFIG)
    ancestors = lineage(run_dir)[:-1]
    for old in out_dir.glob("init-*.yaml"):
        old.unlink()
    for name, text in parent_files.items():  # the released model it started from, and that one's parents
        (out_dir / name).write_text(text)
    for a in ancestors:  # a fine-tune is reproducible only with the configs of the runs it started from
        shutil.copyfile(RunDir(a).config, out_dir / f"init-{a.name}.yaml")

    if faces is None:
        faces = load_faces(cfg.data, size=release_size(cfg), seed=cfg.seed, progress=progress)
        faces = faces.subset("test")
        if len(faces.images) == 0:
            raise ConfigError(f"{cfg.data}: the source has no test split to measure the released model on")
    released = _method_label(run_dir, cfg)
    # a run trained on facekit.randdeg's random degradations is scored on the cctv-heavy preset here
    # (and on the OOD suite below); "random" is not a fixed preset to degrade test faces with
    test_preset = cfg.preset if cfg.preset != "random" else "cctv-heavy"
    methods = {"bicubic": build_restorer("bicubic", scale=scale),
               released: build_restorer(f"model:{stage_path}", scale=scale)}
    compared = {}
    for c in compare:
        ccfg = load_config(RunDir(c).config)
        cpath, cinfo = export_stage(c, out_dir / "compare" / f"{c.name}.pt", weights=weights, val_faces=val_faces,
                                    half=half)
        compared[c.name] = {"weights": cinfo["weights"], "val": cinfo["val"]}
        methods[_method_label(c, ccfg)] = build_restorer(f"model:{cpath}", scale=scale)
    nets = [n for n in identity_nets if n != "dlib" or recognition.dlib_available()]
    df = ev.evaluate(faces, methods, ev.EvalConfig(conditions=ev.CONDITIONS, preset=test_preset, scale=scale, seed=0,
                                                   sample_size=sample_size, angles=False, lpips=False, identity=True,
                                                   identity_nets=nets), progress=progress)
    df.to_csv(out_dir / "test_metrics.csv", index=False)
    headroom = headroom_table(faces.images if hasattr(faces, "images") else faces, methods[released],
                              preset=test_preset, scale=scale)
    quality, per_method, overall, id_cols = _score_tables(df, released, nets, n_boot)
    probes = None
    if probe_people:
        from facekit.evaluate import probe_check

        # SFace trains the identity loss, so the independent net scores the same probes beside it
        probes = probe_check(methods, people=probe_people, preset=test_preset, scale=scale,
                             size=release_size(cfg), progress=progress, nets=nets)
    ood_report = _ood_section(out_dir, run_dir, ood_limit, progress, ood_sources, rank1_draws) if ood_suite else None
    runs = [run_dir, *compare]
    plot_curves(runs, out_dir / "curves.png")
    summary = info["summary"]
    report = {
        "released_run": run_dir.name, "step": info["step"], "arch": info["arch"], "arch_kwargs": info["kwargs"],
        "weights": info["weights"], "val": info["val"], "compared": compared,
        "stored_dtype": info["stored_dtype"], "model_mb": round(size_mb, 3), "in_size": in_size, "out_size": release_size(cfg),
        "training": {r.name: _run_summary(r) for r in runs},
        "lineage": parent_entries + [{"run": a.name, "config": f"init-{a.name}.yaml", "summary": _run_summary(a)}
                                     for a in ancestors],
        "teacher_sha256": teacher_sha,
        "test": {"source": cfg.data, "split": "test", "faces": int(df["image"].nunique()),
                 "preset": test_preset, "scale": scale, "angles": False,
                 "identity_nets": nets, "missing": df.attrs.get("missing", {})},
        "targets": {"psnr_gain_db": TARGET_PSNR_GAIN, "ssim_gain": TARGET_SSIM_GAIN,
                    "met_in_every_condition": bool(quality["meets_target"].all())},
        "quality": json.loads(quality.to_json(orient="records", double_precision=4)),
        "headroom_medium": json.loads(headroom.to_json(orient="records", double_precision=10)),
        "orl_probes": None if probes is None else json.loads(probes.to_json(orient="records", double_precision=10)),
        "by_method_condition": json.loads(per_method.to_json(orient="records", double_precision=4)),
        "by_method": json.loads(overall.to_json(orient="records", double_precision=4)),
        "ood": ood_report,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    _write_card(out_dir, report, cfg, summary, quality, per_method, overall, id_cols, headroom, probes)
    if to_default:
        _promote(out_dir, final_dir, report, accept_failing)
    return report


OOD_METHOD = "released"  # the released stage's name in the OOD tables


def _ood_section(out_dir: Path, run_dir: Path, limit: int | None, progress: bool, sources=None,
                 rank1_draws: int = ood.RANK1_DRAWS) -> dict:
    """Run the OOD suite on the chain folder being written (beside bicubic and the current default)
    and its rank-1 draws (bicubic and the release), and return the card's OOD block: Markdown
    tables with the cells worse than bicubic marked, the targets, and per-group colour."""
    from facekit.chain import default_model_dir
    from facekit.restorers import build_restorer

    methods = {"bicubic": build_restorer("bicubic"), OOD_METHOD: build_restorer(f"chain:{out_dir}")}
    current = default_model_dir()
    if (current / "chain.yaml").is_file() and current.resolve() != out_dir.resolve():
        methods["current default"] = build_restorer("chain:default")
    data = ood.load_ood_data(sources or ood.SOURCES, limit=limit, progress=progress)
    df = ood.evaluate_ood(methods, data, ood.default_cells(), progress=progress, cache_dir=ood.embedding_cache_dir())
    rank1 = ood.rank1_draws({m: methods[m] for m in ("bicubic", OOD_METHOD)}, data, rank1_draws, progress,
                            cache_dir=ood.embedding_cache_dir())
    # every row in the (git-ignored) runs folder; the per-cell means beside the weights
    ood.save_results(df, ood.run_dir(f"release-{run_dir.name}"), [OOD_METHOD], rank1_rows=rank1)
    ood.summarise(df).to_csv(out_dir / "ood_summary.csv", index=False, float_format="%.5g")
    targets = ood.check_targets(df, OOD_METHOD, rank1_rows=rank1 if len(rank1) else None)
    colour = ood.summarise(df[(df["source"] == "utkface") & (df["cell"] == "medium")], ("group", "method"))
    return {
        "faces": {src: len(f) for src, f in data.probes.items()}, "skipped": data.skipped, "limit": limit,
        "cells": [c.name for c in ood.default_cells()], "rank1_draws": int(rank1_draws) if len(rank1) else 1,
        "psnr_md": ood.markdown_gain_table(df, OOD_METHOD, "psnr"),
        "margin_md": ood.markdown_gain_table(df, OOD_METHOD, "id_sface_margin", digits=3),
        "sface_md": ood.markdown_gain_table(df, OOD_METHOD, "id_sface", digits=3),
        "previous_psnr_md": (ood.markdown_gain_table(df, "current default", "psnr")
                             if "current default" in methods else None),
        "targets": [{"target": t.target, "value": t.value, "passed": t.passed} for t in targets],
        "all_passed": all(t.passed for t in targets),
        "colour_medium": json.loads(colour.to_json(orient="records", double_precision=4)) if len(colour) else [],
    }


# Targets that say a model does no harm; never waived. The others (rank-1 at 1.5x bicubic) ask for
# a gain, and a release may waive them, with a reason that goes on the card (``accept_failing``).
NO_HARM_TARGETS = ("PSNR, SSIM and SFace margin", "no cell below bicubic", "colour medium", "grey in")


def _promote(candidate: Path, default: Path, report: dict, accept_failing: str | None = None) -> None:
    """Make a candidate the default when every OOD target passed; else refuse, naming the failures.

    ``accept_failing`` (a reason) waives failing *gain* targets only, and only when the candidate
    passes every no-harm target (:data:`NO_HARM_TARGETS`); the waiver and its reason are written on
    the card.
    """
    ood_report = report.get("ood") or {}
    failing = [t for t in ood_report.get("targets", []) if not t["passed"]]
    harm = [t for t in failing if t["target"].startswith(NO_HARM_TARGETS)]
    waivable = bool(accept_failing) and not harm and ood_report.get("targets")
    if (failing or not ood_report.get("targets")) and not waivable:
        raise ConfigError(f"{report['released_run']} is not made the default: "
                          + ("; ".join(f"{t['target']} ({t['value']})" for t in failing) or "no OOD targets measured")
                          + f". Its card and numbers are in {candidate}; models/default is unchanged"
                          + (" (no-harm targets cannot be waived)" if accept_failing and harm else ""))
    if failing:
        report["ood"]["waived"] = {"targets": [t["target"] for t in failing], "reason": accept_failing}
        (candidate / "report.json").write_text(json.dumps(report, indent=2))
    if (default / "chain.yaml").is_file():
        old = json.loads((default / "report.json").read_text()).get("released_run", "previous-default") \
            if (default / "report.json").is_file() else "previous-default"
        keep = default.parent / old
        if keep.exists():
            keep = default.parent / f"{old}-{int(time.time())}"
        default.rename(keep)  # the previous default stays loadable as chain:models/<its run>
        if (keep / "TRAINING.md").is_file() and (keep / "report.json").is_file():
            rewrite_card(keep)  # its card now names its new folder
        _repoint_init_from(candidate / RELEASE_CONFIG, default, keep)
    candidate.rename(default)
    rewrite_card(default)


def remeasure_rank1(out_dir: str | Path, draws: int = ood.RANK1_DRAWS, progress: bool = True) -> dict:
    """Measure a released folder's rank-1 targets again over ``draws`` degradation draws, and
    rewrite its report and card (nothing else is re-measured).

    For a folder released before the rank-1 targets pooled draws (:func:`facekit.ood.rank1_draws`),
    or to pool more of them. A waiver (``accept_failing``) keeps its reason and now names only the
    gain targets that still fail; with none failing it is dropped.

    Args:
        out_dir: a folder written by :func:`release_run` with the OOD suite.
        draws: degradation draws of the medium cell (>= 1).
        progress: progress bars.

    Returns:
        The rewritten report's ``ood`` block.

    Raises:
        ConfigError: the folder is not a release with OOD targets, or no source with a gallery is here.
    """
    from facekit.restorers import build_restorer

    out_dir = Path(out_dir)
    report_path = out_dir / "report.json"
    if not report_path.is_file():
        raise ConfigError(f"{out_dir}: not a released model folder (no report.json)")
    report = _read_report(report_path)
    block = report.get("ood")
    if not isinstance(block, dict) or not isinstance(block.get("targets"), list):
        raise ConfigError(f"{report_path}: released without the out-of-distribution suite (no ood targets); "
                          "release it again with the suite")
    if int(draws) < 1:
        raise ConfigError(f"rank-1 draws must be at least 1, got {draws}")
    # the sources the release measured (a partial release's card must not gain a source)
    sources = [s for s in ood.RANK1_SOURCES if s in (block.get("faces") or {})] or list(ood.RANK1_SOURCES)
    data = ood.load_ood_data(sources, limit=block.get("limit"), progress=progress)
    methods = {"bicubic": build_restorer("bicubic"), OOD_METHOD: build_restorer(f"chain:{out_dir}")}
    rows = ood.rank1_draws(methods, data, draws, progress, cache_dir=ood.embedding_cache_dir())
    if not len(rows):
        raise ConfigError("no source with an enrolled gallery (" + ", ".join(ood.RANK1_SOURCES) + ") is here: "
                          + "; ".join(f"{k}: {v}" for k, v in data.skipped.items()))
    rows.to_csv(ood.run_dir(f"release-{report['released_run']}") / ood.RANK1_ROWS, index=False)
    fresh = [{"target": t.target, "value": t.value, "passed": t.passed} for t in ood.rank1_targets(rows, OOD_METHOD)]
    old = block["targets"]
    first = next((i for i, t in enumerate(old) if str(t.get("target", "")).startswith("rank-1 ")), len(old))
    kept = [t for t in old if not str(t.get("target", "")).startswith("rank-1 ")]
    block["targets"] = kept[:first] + fresh + kept[first:]
    block["all_passed"] = all(t["passed"] for t in block["targets"])
    block["rank1_draws"] = int(draws)
    if block.get("waived"):
        still = [t["target"] for t in block["targets"] if not t["passed"] and not t["target"].startswith(NO_HARM_TARGETS)]
        if still:
            block["waived"]["targets"] = still
        else:
            del block["waived"]
    tmp = report_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(report_path)
    rewrite_card(out_dir)
    return block


def _repoint_init_from(config: Path, old: Path, kept: Path) -> None:
    """Point a released config's ``init_from`` at the previous default's stage file where it was kept.

    A model fine-tuned from the default's own weights names them as ``models/default/reconstruct.pt``;
    once it is the default, that path holds its own weights, and retraining its config would
    fine-tune it again instead of reproducing it. The same bytes now live in ``kept``.
    """
    if not config.is_file():
        return
    cfg = load_config(config)
    if not cfg.init_from or Path(cfg.init_from).resolve() != (old / STAGE_FILE).resolve():
        return
    cfg.init_from = str(Path(cfg.init_from).parent.with_name(kept.name) / STAGE_FILE)
    cfg.to_yaml(config)


def _score_tables(df: pd.DataFrame, released: str, nets, n_boot: int):
    """The card's tables from per-face scores: ``(quality, per_method, overall, id_cols)``."""
    from facekit import evaluate as ev

    id_cols = [f"id_{n}" for n in nets if f"id_{n}" in df.columns]
    metrics = ["psnr", "ssim", *id_cols]
    return (quality_table(df, released, n_boot=n_boot),
            ev.summarise(df, ("method", "condition"), metrics=metrics, n_boot=n_boot),
            ev.summarise(df, ("method",), metrics=metrics, n_boot=n_boot), id_cols)


# what the card reads from a report.json, beside its optional sections; a file without them is
# not one release_run wrote
_REPORT_KEYS = ("released_run", "step", "arch", "arch_kwargs", "weights", "val", "model_mb", "in_size", "out_size",
                "training", "test", "targets")
_REPORT_TEST_KEYS = ("faces", "preset", "scale", "identity_nets")


def _read_report(path: Path) -> dict:
    """A release's ``report.json``, checked (:func:`_check_report`); ConfigError naming it otherwise."""
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    _check_report(path, report)
    return report


def _check_report(path: Path, report) -> None:
    """Raise ConfigError naming ``path`` unless ``report`` has what :func:`rewrite_card` reads."""
    if not isinstance(report, dict):
        raise ConfigError(f"{path}: not a release report (a JSON {type(report).__name__}, not an object)")
    missing = [k for k in _REPORT_KEYS if k not in report]
    if not missing:
        test, training = report["test"], report["training"]
        missing = ([f"test.{k}" for k in _REPORT_TEST_KEYS if k not in test] if isinstance(test, dict) else ["test"])
        if not isinstance(training, dict) or not isinstance(report["released_run"], str) \
                or report["released_run"] not in training:
            missing.append(f"training.{report['released_run']}")
        if not isinstance(report["targets"], dict) or "met_in_every_condition" not in report["targets"]:
            missing.append("targets.met_in_every_condition")
    if missing:
        raise ConfigError(f"{path}: not a release report (no {', '.join(missing)})")


def rewrite_card(out_dir: str | Path, n_boot: int = 1000) -> Path:
    """Rewrite a released folder's ``TRAINING.md`` from its ``report.json`` and ``test_metrics.csv``.

    Nothing is re-measured: the tables come from the saved per-face scores (the bootstrap is
    seeded, so the intervals are the same), for card text changes after a release.

    Args:
        out_dir: a folder written by :func:`release_run`.
        n_boot: bootstrap resamples, as given to the release.

    Returns:
        The card's path.

    Raises:
        ConfigError: the folder lacks one of the release's files, or one is not what a release writes.
    """
    out_dir = Path(out_dir)
    missing = [n for n in ("report.json", "test_metrics.csv", RELEASE_CONFIG) if not (out_dir / n).is_file()]
    if missing:
        raise ConfigError(f"{out_dir}: not a released model folder (missing {', '.join(missing)})")
    report_path, metrics_path = out_dir / "report.json", out_dir / "test_metrics.csv"
    report = _read_report(report_path)
    try:
        df = pd.read_csv(metrics_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{metrics_path}: not a readable CSV table ({' '.join(str(exc).split())})") from None
    missing = [c for c in ("method", "condition", "psnr", "ssim") if c not in df.columns]
    if missing:
        raise ConfigError(f"{metrics_path}: missing column{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}")
    cfg = load_config(out_dir / RELEASE_CONFIG)
    summary = report["training"][report["released_run"]]
    released = _method_label(Path(report["released_run"]), cfg)
    absent = [m for m in (released, "bicubic") if m not in set(df["method"])]
    if absent:
        raise ConfigError(f"{metrics_path}: no rows for method {', '.join(map(repr, absent))}")
    quality, per_method, overall, id_cols = _score_tables(df, released, report["test"]["identity_nets"], n_boot)
    headroom = pd.DataFrame(report["headroom_medium"]) if report.get("headroom_medium") else None
    probes = pd.DataFrame(report["orl_probes"]) if report.get("orl_probes") else None
    return _write_card(out_dir, report, cfg, summary, quality, per_method, overall, id_cols, headroom, probes)


def _sha256(path: str | None) -> str | None:
    """Hex digest of a file (a distillation teacher), or None when there is none to read."""
    if not path or not Path(path).is_file():
        return None
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _card_folder(out_dir: Path) -> str:
    """How the card names its own folder: relative to the project when it lies inside it."""
    try:
        return out_dir.resolve().relative_to(PROJECT_ROOT.resolve()).as_posix()
    except ValueError:
        return out_dir.as_posix()


def _loaded_by(out_dir: Path) -> str:
    from facekit.chain import default_model_dir

    if out_dir.resolve() == default_model_dir().resolve():
        return "`python -m facekit restore` and the evaluation as `chain:default`"
    folder = _card_folder(out_dir)
    return f"`python -m facekit restore --models {folder}` and the evaluation as `chain:{folder}`"


def _faces_note(summary: dict) -> str:
    """", 6612 training faces (1632 of them mixed in)" from a run's summary, or "" (older summaries lack it).

    The count says what a run really read: the same config pointed at a smaller copy of a source
    (a GPU machine gets a subset) trains on fewer faces than the source's card note describes.
    """
    if summary.get("train_faces") is None:
        return ""
    mixed = int(summary.get("mix_faces") or 0)
    return f", {int(summary['train_faces'])} training faces" + (f" ({mixed} of them mixed in)" if mixed else "")


def _training_lines(report: dict, cfg: "TrainConfig", summary: dict, folder: str) -> list[str]:
    """The card's training paragraph: the recipe, the time, and how to retrain (parents first)."""
    minutes = float(summary.get("seconds", float("nan"))) / 60
    resumed = int(summary.get("resumed_from") or 0)
    # summary.json times only the last process: after a resume, say so rather than under-report
    timed = f"{minutes:.0f} minutes" + (f" for the {int(cfg.steps) - resumed} steps after its resume from step "
                                         f"{resumed}" if resumed else "")
    gan = (f"{cfg.gan_type} GAN (weight {cfg.gan_weight}, from step {cfg.gan_start}), {cfg.gp_mode} "
           f"gradient penalty (weight {cfg.gp_weight}, every {cfg.lazy_k} steps)"
           if float(cfg.gan_weight) > 0 else "no adversarial term")
    where = f"{cfg.threads} CPU thread(s)" if str(cfg.device) == "cpu" else f"on {cfg.device}"
    recipe = (f"{cfg.steps} steps, batch {cfg.batch}, {where}{_faces_note(summary)}: {timed} "
              f"({summary.get('steps_per_s', float('nan')):.2f} steps/s). {cfg.pixel_loss} pixel loss, "
              f"{gan}, {cfg.schedule} LR (peak {cfg.lr_g}), identity loss weight {cfg.identity_weight}.")
    if cfg.distill_from:
        recipe += (f" Distilled from the frozen teacher `{cfg.distill_from}` (l_g_distill: {cfg.pixel_loss} to the "
                   f"teacher's restoration of each lq, weight {cfg.distill_weight}, beside l_g_pix to the gt); "
                   "retraining reads that file, so it needs the same teacher"
                   + (f" (sha256 {report['teacher_sha256'][:16]}...)." if report.get("teacher_sha256") else "."))
    parents = report.get("lineage", [])
    if not parents:
        return [recipe + f" Retrain with `python -m facekit train --config {folder}/config.yaml` "
                "(same seed, same data)."]
    total_steps, total_min = int(cfg.steps), minutes
    lines = []
    for p in parents:
        ps = p["summary"]
        total_steps += int(ps.get("steps", 0))
        total_min += float(ps.get("seconds", float("nan"))) / 60
        lines.append(f"`{p['run']}` (`{p['config']}`): {ps.get('steps')} steps{_faces_note(ps)}, "
                     f"{float(ps.get('seconds', float('nan'))) / 60:.0f} minutes, val PSNR {ps.get('val_psnr', float('nan')):.2f} dB.")
    retrain = " && ".join(f"python -m facekit train --config {folder}/{p['config']}" for p in parents)
    names = " -> ".join(f"`{p['run']}`" for p in parents)
    released = [p for p in parents if p.get("released")]
    # init_from named a released stage file, not a run folder: say which bytes, and how to chain a retrain
    note = "".join(f" `{p['run']}`'s child started from its released weights (`{p['released']['stage_file']}` at "
                   f"training time, sha256 {str(p['released']['sha256'])[:16]}...); after retraining `{p['run']}`, "
                   f"start it from that run with `--set init_from=data/runs/{p['run']}`." for p in released)
    return [f"Fine-tuned from {names}, "
            f"{total_steps} steps and {total_min:.0f} minutes in all.", "",
            *[f"- {line}" for line in lines],
            f"- `{report['released_run']}` (`config.yaml`, starting from those weights with a fresh optimizer and "
            f"schedule): {recipe}", "",
            f"Retrain with `{retrain} && python -m facekit train --config {folder}/config.yaml` "
            "(same seeds, same data; each config's `init_from` names the run folder the previous command writes)."
            + note]


def _lineage_configs(out_dir: Path, report: dict) -> list[tuple[str, "TrainConfig", dict]]:
    """``(run, config, summary)`` of each run a released model was fine-tuned from, oldest first,
    from the ``init-<run>.yaml`` copies in its folder."""
    return [(p["run"], load_config(out_dir / p["config"]), p["summary"]) for p in report.get("lineage", [])]


def _mix_lines(out_dir: Path, report: dict, cfg: "TrainConfig", summary: dict) -> str:
    """The card's sentence on faces mixed in from a second source (``mix_data``), per run, or ''."""
    runs = _lineage_configs(out_dir, report) + [(report["released_run"], cfg, summary)]
    parts = []
    for name, c, s in runs:
        if c.mix_data:
            people = c.mix_people
            who = f"people {people[0]}-{people[1]}" if people else "every person"
            parts.append(f"`{name}` also trained on {s.get('mix_faces', '?')} train-split faces of `{c.mix_data}` "
                         f"({who}; about {float(c.mix_share):.0%} of its samples)")
    return (" " + "; ".join(parts) + ".") if parts else ""


def trained_sources(cfg: "TrainConfig") -> list[str]:
    """Every source a run's faces came from: ``data``, then ``mix_data`` and each ``sources`` entry."""
    return [cfg.data] + [source for source, _, _ in cfg.mix_entries()]


def _source_notes(cfgs: list["TrainConfig"]) -> list[str]:
    """The card notes of the source kinds the configs trained on (:data:`facekit.data.SOURCES`' ``card_note``).

    Args:
        cfgs: the released run's config and its parents'.

    Returns:
        The citation and split note of each kind, in alphabetical order of kind (a ``folder:``
        or ``video:`` source has none).
    """
    kinds = {source_kind(s) for c in cfgs for s in trained_sources(c)}
    return [SOURCES[k].card_note for k in sorted(kinds) if k in SOURCES and SOURCES[k].card_note]


def _data_lines(cfg: "TrainConfig", parents: list["TrainConfig"] = ()) -> str:
    """The card's data paragraph: the sources the run (and the runs it was fine-tuned from) trained
    on, with their citations and licence, and how its pairs were made.

    Args:
        cfg: the released run's config.
        parents: the configs of the runs it was fine-tuned from (``init_from``), oldest first:
            their faces are in the weights too.
    """
    listed = [cfg.data] + [e["data"] for e in cfg.sources or []]  # mix_data has its own sentence (_mix_lines)
    inherited = [s for p in parents for s in [p.data] + [e["data"] for e in p.sources or []]]
    inherited = list(dict.fromkeys(s for s in inherited if s not in listed))
    notes = _source_notes([*parents, cfg])
    text = ("Trained on " + ", ".join(f"`{x}`" for x in listed)
            + (" (and, through the runs it was fine-tuned from, " + ", ".join(f"`{x}`" for x in inherited) + ")"
               if inherited else "")
            + (": " + "; ".join(notes) + ". **Non-commercial research use only**; these weights inherit that licence. "
               if notes else ". "))
    if cfg.preset == "random":
        text += ("Pairs are synthesised on the fly by `facekit.randdeg`: framing and scale jitter, grey samples, a "
                 "global light applied to both the clean target and the input (so the network restores under any "
                 "light and never guesses one), and one or two shuffled rounds of isotropic, anisotropic, motion and "
                 "defocus blur, area/bilinear/bicubic/nearest resizes, Gaussian, Poisson and colour noise and JPEG "
                 f"30-95, sometimes almost no degradation, at x{cfg.scale}.")
    else:
        light = ("all five lighting conditions" if not cfg.conditions
                 else "lighting " + ", ".join(f"`{c}`" for c in cfg.conditions))
        pose = "random head pose" if cfg.angles else "no head pose"
        text += f"Pairs are synthesised on the fly: preset `{cfg.preset}` at x{cfg.scale}, {light}, {pose}."
    return text


def render_card_template(name: str, **values) -> str:
    """Fill one of the model card's templates (``facekit/templates/<name>``, :class:`string.Template`).

    A value may be ``""`` for a section the release has none of: the blank lines around it
    collapse, so the card never holds more than one blank line in a row.

    Args:
        name: the template's file name, e.g. ``"model_card.md"``.
        **values: a value for every ``$placeholder`` of the template.

    Returns:
        The filled text, without leading or trailing blank lines.

    Raises:
        ConfigError: naming the template, when it is missing or a placeholder has no value.
    """
    template = resources.files("facekit").joinpath(CARD_TEMPLATES).joinpath(name)
    try:
        text = string.Template(template.read_text(encoding="utf-8")).substitute(values)
    except FileNotFoundError:
        raise ConfigError(f"{template}: model card template not found (is facekit installed with its "
                          "package data?)") from None
    except KeyError as exc:
        raise ConfigError(f"{template}: no value for the placeholder ${exc.args[0]}") from None
    except ValueError as exc:  # a lone "$" in the template
        raise ConfigError(f"{template}: {exc}") from None
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _ood_card_section(ood_report: dict | None) -> str:
    """The card's out-of-distribution section (``""`` when the suite was not run)."""
    if not ood_report:
        return ""
    faces = ", ".join(f"{k} {v}" for k, v in ood_report["faces"].items())
    suite = (f"{faces} faces" + (f", at most {ood_report['limit']} per source" if ood_report.get("limit") else "")
             + (f"; skipped: {ood_report['skipped']}" if ood_report.get("skipped") else ""))
    previous = (f"The default this release was measured beside, PSNR gain (dB):\n\n{ood_report['previous_psnr_md']}"
                if ood_report.get("previous_psnr_md") else "")
    waiver = ""
    if ood_report.get("waived"):
        w = ood_report["waived"]
        waiver = (f"**Made the default with failing gain target(s) waived**: {'; '.join(w['targets'])}. "
                  f"Reason given: {w['reason'].rstrip().rstrip('.')}. Every no-harm target holds.")
    colour = ""
    if ood_report.get("colour_medium"):
        table = pd.DataFrame(ood_report["colour_medium"])[["group", "method", "n", "dE", "dL", "psnr", "id_sface_margin"]]
        colour = ("Colour fidelity per skin-tone group (UTKFace eval, medium light): dE of the face region's mean "
                  "CIELAB colour to the clean face's, and the signed lightness shift dL.\n\n" + _fmt_table(table, digits=2))
    return render_card_template(
        "model_card_ood.md", suite_faces=suite, psnr_table=ood_report["psnr_md"],
        margin_table=ood_report["margin_md"], sface_table=ood_report["sface_md"], previous_default=previous,
        targets_verdict="all met" if ood_report["all_passed"] else "NOT all met",
        targets_table=_fmt_table(pd.DataFrame(ood_report["targets"])), waiver=waiver, colour=colour)


def _write_card(out_dir: Path, report: dict, cfg: "TrainConfig", summary: dict, quality: pd.DataFrame,
                per_method: pd.DataFrame, overall: pd.DataFrame, id_cols: list[str],
                headroom: pd.DataFrame | None = None, probes: pd.DataFrame | None = None) -> Path:
    """Write ``TRAINING.md``, the model card, from ``facekit/templates/model_card*.md``.

    Args:
        out_dir: the released folder.
        report: the release's ``report.json`` content.
        cfg: the released run's config (its ``config.yaml``); the runs it was fine-tuned from are
            read from the ``init-*.yaml`` files the report's ``lineage`` names.
        summary: the released run's ``summary.json``.
        quality, per_method, overall, id_cols: the tables of :func:`_score_tables`.
        headroom: :func:`headroom_table` rows, or None.
        probes: :func:`facekit.evaluate.probe_check` rows, or None.

    Returns:
        The card's path.
    """
    t = report["test"]
    keep = ["method", "n", "psnr", "ssim", *id_cols]
    parents = [c for _, c, _ in _lineage_configs(out_dir, report)]
    headroom_section = probes_section = ""
    if headroom is not None and len(headroom):
        headroom_section = render_card_template("model_card_headroom.md", headroom_table=_fmt_table(headroom, digits=2))
    if probes is not None and len(probes):
        p = probes.iloc[0]
        draws = int(probes["draws"].max()) if "draws" in probes else 1
        celeba = any(source_kind(s) == "celeba" for c in [*parents, cfg] for s in trained_sources(c))
        # the probes are degraded like the test faces: a "random"-preset run's with cctv-heavy
        probes_section = render_card_template(
            "model_card_probes.md", people=int(p["people"]), probes=int(p["probes"]), preset=t["preset"],
            scale=t["scale"], draws=draws, probe_count=draws * int(p["probes"]), nets=", ".join(probes["net"].unique()),
            orl_contrast="ORL is grey and twenty years older than CelebA" if celeba else "ORL is grey 1990s photos",
            probes_table=_fmt_table(probes[["net", "method", "similarity", "margin", "rank1"]]))
    text = render_card_template(
        "model_card.md", released_run=report["released_run"], arch=report["arch"], arch_kwargs=report["arch_kwargs"],
        in_size=report["in_size"], out_size=report["out_size"], weights=report["weights"], step=report["step"],
        model_mb=f"{report['model_mb']:.2f}", stored_dtype=report.get("stored_dtype", "float32"),
        loaded_by=_loaded_by(out_dir), data=_data_lines(cfg, parents) + _mix_lines(out_dir, report, cfg, summary),
        training="\n".join(_training_lines(report, cfg, summary, _card_folder(out_dir))),
        val_scores=json.dumps(report["val"]), test_faces=t["faces"], test_preset=t["preset"], test_scale=t["scale"],
        target_psnr=f"{TARGET_PSNR_GAIN:g}", target_ssim=f"{TARGET_SSIM_GAIN:g}",
        target_verdict="met" if report["targets"]["met_in_every_condition"] else "NOT met",
        quality_table=_fmt_table(quality), ood_section=_ood_card_section(report.get("ood")),
        headroom_section=headroom_section, overall_table=_fmt_table(overall[keep]),
        per_method_table=_fmt_table(per_method[["method", "condition", *keep[2:]]]), probes_section=probes_section)
    path = out_dir / "TRAINING.md"
    path.write_text(text + "\n")
    return path
