"""facekit: reconstruct recognisable faces from low-quality CCTV footage, CPU-first.

The package is layered: a module imports only modules of its own layer or of the layers
listed before it (never a cycle), and what users run (``restore``, ``video``, ``identify``,
``fuse``, ``mesh``) sits below training, evaluation and release, so it imports none of them.
:data:`LAYERS` lists every module, lowest layer first; ``tests/test_layers.py`` enforces it and
the README's layout table follows it.
"""

__version__ = "0.1.0"

# layer -> (what it holds, its modules), lowest first. A literal so the rule is readable here.
LAYERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "core": ("errors, settings and threads, image files and layouts, run folders, progress bars",
             ("errors", "settings", "progress", "imageio", "images", "runs")),
    "ops": ("numpy image operations: degradations, lighting and pose, metrics, tracking",
            ("augment", "degrade", "randdeg", "ood_recipe", "synthclip", "metrics", "tracking", "ncnn")),
    "models": ("networks, weights and the models that read faces",
               ("checkpoint", "pretrained", "archs", "archs.resample", "archs.unet", "archs.faithful",
                "archs.discriminator", "archs.deblurganv2", "archs.rrdbnet", "archs.fusionnet", "losses",
                "relight", "faces", "recognition", "perceptual", "mesh")),
    "data": ("face sources, caches and paired datasets", ("data", "dataset")),
    "runtime": ("what users run: the restorer contract and its registry, the chain, track fusion, identification, video",
                ("restorer", "chain", "baselines", "restorers", "fusion", "identify", "restore", "video_io",
                 "video_identity", "video_tracks", "video")),
    "training": ("training loops and their configs", ("train", "stage_train", "fusion_train")),
    "evaluation": ("scoring restorers and explaining them",
                   ("evaluate", "ood", "fusion_eval", "chain_eval", "explorer")),
    "release": ("a finished run -> a released model folder and its card", ("release",)),
    "reports": ("notebooks headless and their HTML reports", ("report", "runner")),
    "commands": ("the command line: one thin module per command",
                 ("commands", "commands.data", "commands.train", "commands.run", "commands.evaluate",
                  "commands.identify", "commands.restore", "commands.release", "commands.fuse", "commands.video",
                  "commands.mesh", "cli", "__main__")),
}

import os as _os

if _os.environ.get("FACEKIT_PLAIN_PROGRESS"):  # the runner's headless kernels (facekit.progress)
    from facekit.progress import use_plain_progress as _use_plain_progress

    _use_plain_progress()
