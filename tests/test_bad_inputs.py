"""Bad-input corpus (issue 19): CLI values, config values and names through the real CLI.

Every case runs ``python -m facekit ...`` in its own process and must end in a one-line error
that names the bad input and the reason: exit 1 for a bad config or input (``facekit CMD: error:
...``), exit 2 for a bad command-line value (argparse's usage error). Never a traceback, never a
signal, and nothing created, changed or deleted on disk (``DATA_DIR``, ``REPORTS_DIR`` and the
working folder all point into the test's temporary folder, with sentinel ``*.pt``/``*.png`` files
where a run named ``..`` or ``.`` used to clean up).

Speed: importing torch costs 3-10 s per process on a busy 2-core machine, so the corpus runs in
one helper process that imports facekit once and forks a child per case; the child runs
``facekit/__main__.py`` exactly as ``python -m facekit`` does (``runpy``), with its own argv,
environment, working folder, stdout/stderr and exit status (an uncaught exception prints the
interpreter's traceback and exits 1, a crash shows as a signal). Two cases also run as plain
``python -m facekit`` subprocesses to check that the helper behaves like the real thing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Not marked slow: ~20-30 s in all on 2 busy cores (one helper process of ~60 forked cases, two
# plain subprocesses), no single test over ~10 s.

REPO = Path(__file__).resolve().parent.parent
CASE_TIMEOUT_S = 60  # a case still running then is killed and fails (the alias bomb used to run 205 s)
FAST_S = 20  # every case must fail fast: validation comes before any work

# The helper: imports facekit (and torch, via every command module) once, then forks a child per
# case that runs facekit/__main__.py like ``python -m facekit`` and reports exit status, output,
# seconds and what changed under the watched folder.
SERVER = r'''
import json, os, runpy, signal, sys, time

cases_path, results_path, watched = sys.argv[1:4]
import importlib
import facekit.cli
for module_name, _ in facekit.cli.COMMANDS.values():  # torch, cv2 ... once, before forking
    try:
        importlib.import_module(module_name)
    except ImportError:
        pass
import torch  # noqa: F401  (facekit.settings.set_threads imports it in every case)


def snapshot(root):
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def run_child(case, out_path, err_path):
    env = case.get("env") or {}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    os.chdir(case["cwd"])
    fd_out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    fd_err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd_out, 1)
    os.dup2(fd_err, 2)
    sys.argv = ["facekit", *case["argv"]]
    code = 0
    try:
        runpy.run_module("facekit", run_name="__main__", alter_sys=True)
    except SystemExit as exc:  # what the interpreter does with it
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)


cases = json.loads(open(cases_path).read())
results = {}
io_dir = os.path.dirname(results_path)
for case in cases:
    out_path = os.path.join(io_dir, case["id"] + ".out")
    err_path = os.path.join(io_dir, case["id"] + ".err")
    before = snapshot(watched)
    sys.stdout.flush()
    sys.stderr.flush()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        run_child(case, out_path, err_path)
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() - t0 > case["timeout"]:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            timed_out = True
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    after = snapshot(watched)
    results[case["id"]] = {
        "rc": os.waitstatus_to_exitcode(status),
        "timed_out": timed_out,
        "seconds": round(seconds, 3),
        "stdout": open(out_path, errors="replace").read(),
        "stderr": open(err_path, errors="replace").read(),
        "created": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(k for k in set(before) & set(after)
                          if before[k] != after[k] and not os.path.isdir(os.path.join(watched, k))),
    }
with open(results_path, "w") as fh:
    json.dump(results, fh)
'''


# --------------------------------------------------------------------------------------------
# the corpus: (id, argv, env overrides, expected exit code, fragments the error line must hold)
# {T} in argv is the corpus folder; "{cfg:NAME}" is a train config built from BASE_CFG (see below).

BASE_CFG = {
    "name": "badinput",
    "data": "folder:{T}/no-such-faces",  # a valid config would fail here, naming this folder
    "size": 32, "scale": 4, "batch": 2, "steps": 2, "val_count": 2,
    "arch_g_kwargs": {"base": 8, "depth": 2}, "arch_d_kwargs": {"base": 8, "n_layers": 2},
    "device": "cpu",
}

# train config variants: file name -> YAML text of the changed lines (appended after the base keys)
CONFIGS = {
    "steps-text": 'steps: "thirty"',
    "batch-float": "batch: 2.5",
    "lr-text": "lr_g: fast",
    "lr-nan": "lr_d: .nan",
    "lr-inf": "lr_g: .inf",
    "lr-enotation": "lr_g: 2e-4",  # YAML 1.1 reads this as the text '2e-4'
    "betas-scalar": "betas: 0.5",
    "betas-range": "betas: [0.5, 1.5]",
    "name-nul": 'name: "run\\0x"',
    "name-slash": "name: a/b",
    "name-dotdot": 'name: ".."',
    "name-dot": 'name: "."',
    "name-space": 'name: "my run"',
    "seed-negative": "seed: -1",
    "device-missing-gpu": "device: cuda:99",
    "device-format": "device: gpu",
    "threads-zero": "threads: 0",
    "flag-text": "angles: maybe",
}

CASES = [
    # threads: --threads and FACEKIT_THREADS (set_threads raises ConfigError)
    ("threads-flag-zero", ["--threads", "0", "data", "folder:{T}/no-such-faces"], {}, 1,
     ["--threads", "whole number", "got 0"]),
    ("threads-env-text", ["data", "folder:{T}/no-such-faces"], {"FACEKIT_THREADS": "abc"}, 1,
     ["FACEKIT_THREADS", "whole number", "got 'abc'"]),
    ("threads-env-zero", ["data", "folder:{T}/no-such-faces"], {"FACEKIT_THREADS": "0"}, 1,
     ["FACEKIT_THREADS", "whole number", "got '0'"]),
    # train config values (exit 1, "facekit train: error: ...")
    ("train-steps-text", ["train", "--config", "{cfg:steps-text}"], {}, 1, ["steps='thirty'", "integer"]),
    ("train-batch-float", ["train", "--config", "{cfg:batch-float}"], {}, 1, ["batch=2.5", "integer"]),
    ("train-lr-text", ["train", "--config", "{cfg:lr-text}"], {}, 1, ["lr_g='fast'", "number"]),
    ("train-lr-nan", ["train", "--config", "{cfg:lr-nan}"], {}, 1, ["lr_d=nan", "finite"]),
    ("train-lr-inf", ["train", "--config", "{cfg:lr-inf}"], {}, 1, ["lr_g=inf", "finite"]),
    ("train-lr-enotation", ["train", "--config", "{cfg:lr-enotation}"], {}, 1, ["lr_g='2e-4'", "2.0e-4"]),
    ("train-betas-scalar", ["train", "--config", "{cfg:betas-scalar}"], {}, 1, ["betas=0.5", "two numbers"]),
    ("train-betas-range", ["train", "--config", "{cfg:betas-range}"], {}, 1, ["betas=[0.5, 1.5]", "[0, 1)"]),
    ("train-name-nul", ["train", "--config", "{cfg:name-nul}"], {}, 1, ["name='run\\x00x'", "folder name"]),
    ("train-name-slash", ["train", "--config", "{cfg:name-slash}"], {}, 1, ["name='a/b'", "folder name"]),
    ("train-name-dotdot", ["train", "--config", "{cfg:name-dotdot}"], {}, 1, ["name='..'", "folder name"]),
    ("train-name-dot", ["train", "--config", "{cfg:name-dot}"], {}, 1, ["name='.'", "folder name"]),
    ("train-name-space", ["train", "--config", "{cfg:name-space}"], {}, 1, ["name='my run'", "folder name"]),
    ("train-seed-negative", ["train", "--config", "{cfg:seed-negative}"], {}, 1, ["seed=-1", "[0, "]),
    ("train-device-missing-gpu", ["train", "--config", "{cfg:device-missing-gpu}"], {}, 1,
     ["device='cuda:99'", "CUDA"]),
    ("train-device-format", ["train", "--config", "{cfg:device-format}"], {}, 1, ["device='gpu'", "cuda:N"]),
    ("train-threads-zero", ["train", "--config", "{cfg:threads-zero}"], {}, 1, ["threads=0", "[1, "]),
    ("train-flag-text", ["train", "--config", "{cfg:flag-text}"], {}, 1, ["angles='maybe'", "true or false"]),
    ("train-set-bad-yaml", ["train", "--config", "{cfg:base}", "--set", "steps=["], {}, 1,
     ["--set 'steps=['", "not valid YAML"]),
    ("train-set-name-dotdot", ["train", "--config", "{cfg:base}", "--set", "name=.."], {}, 1,
     ["name='..'", "folder name"]),
    ("train-set-no-equals", ["train", "--config", "{cfg:base}", "--set", "steps"], {}, 1,
     ["--set 'steps'", "key=value"]),
    ("train-yaml-alias-bomb", ["train", "--config", "{T}/bomb.yaml"], {}, 1, ["bomb.yaml", "alias"]),
    ("train-yaml-recursive", ["train", "--config", "{T}/recursive.yaml"], {}, 1, ["recursive.yaml", "itself"]),
    ("train-yaml-deep", ["train", "--config", "{T}/deep.yaml"], {}, 1, ["deep.yaml", "nest"]),
    ("train-yaml-too-big", ["train", "--config", "{T}/huge.yaml"], {}, 1, ["huge.yaml", "limit"]),
    ("train-yaml-not-utf8", ["train", "--config", "{T}/latin1.yaml"], {}, 1, ["latin1.yaml", "UTF-8"]),
    ("train-yaml-directory", ["train", "--config", "{T}"], {}, 1, ["not a regular file"]),
    ("train-yaml-list", ["train", "--config", "{T}/list.yaml"], {}, 1, ["list.yaml", "mapping"]),
    # every other YAML the CLI reads goes through the same limits (runner profiles; degradation specs,
    # chain.yaml: below)
    ("run-profile-alias-bomb", ["run", "--profile", "{T}/bomb.yaml"], {}, 1, ["bomb.yaml", "alias"]),
    # a valid config: fails on its (missing) data folder, proving the cases above failed on their value
    ("train-control-missing-data", ["train", "--config", "{cfg:base}"], {}, 1, ["no-such-faces"]),
    # evaluate options (argparse: exit 2) and the device (exit 1)
    ("evaluate-batch-negative", ["evaluate", "--batch", "-1"], {}, 2, ["--batch", "'-1'", "integer"]),
    ("evaluate-seed-negative", ["evaluate", "--seed", "-1"], {}, 2, ["--seed", "'-1'"]),
    ("evaluate-split-bogus", ["evaluate", "--split", "bogus"], {}, 2, ["--split", "'bogus'", "train"]),
    ("evaluate-sample-size-zero", ["evaluate", "--sample-size", "0"], {}, 2, ["--sample-size", "'0'"]),
    ("evaluate-scale-zero", ["evaluate", "--scale", "0"], {}, 2, ["--scale", "'0'"]),
    ("evaluate-size-zero", ["evaluate", "--size", "0"], {}, 2, ["--size", "'0'"]),
    ("evaluate-limit-zero", ["evaluate", "--suite", "ood", "--limit", "0"], {}, 2, ["--limit", "'0'"]),
    ("evaluate-name-traversal", ["evaluate", "--name", "../../escape"], {}, 2, ["--name", "'../../escape'"]),
    ("evaluate-name-dotdot", ["evaluate", "--name", ".."], {}, 2, ["--name", "'..'"]),
    ("evaluate-device-format", ["evaluate", "--device", "gpu0"], {}, 2, ["--device", "'gpu0'"]),
    ("evaluate-device-missing-gpu", ["evaluate", "--device", "cuda:99", "--data", "folder:{T}/no-such-faces"],
     {}, 1, ["--device='cuda:99'", "CUDA"]),
    ("evaluate-scale-not-dividing", ["evaluate", "--size", "64", "--scale", "3",
                                     "--data", "folder:{T}/no-such-faces"], {}, 1, ["--scale 3", "--size 64"]),
    # video options (argparse: exit 2)
    ("video-queue-size-zero", ["video", "{T}/in.mp4", "{T}/out", "--queue-size", "0"], {}, 2,
     ["--queue-size", "'0'"]),
    ("video-queue-size-negative", ["video", "{T}/in.mp4", "{T}/out", "--queue-size", "-5"], {}, 2,
     ["--queue-size", "'-5'"]),
    ("video-queue-size-huge", ["video", "{T}/in.mp4", "{T}/out", "--queue-size", "100000"], {}, 2,
     ["--queue-size", "'100000'"]),
    ("video-detect-side-zero", ["video", "{T}/in.mp4", "{T}/out", "--detect-side", "0"], {}, 2,
     ["--detect-side", "'0'"]),
    ("video-crop-size-huge", ["video", "{T}/in.mp4", "{T}/out", "--crop-size", "20000"], {}, 2,
     ["--crop-size", "'20000'", "1024"]),
    ("video-detect-every-zero", ["video", "{T}/in.mp4", "{T}/out", "--detect-every", "0"], {}, 2,
     ["--detect-every", "'0'"]),
    ("video-quality-over", ["video", "{T}/in.mp4", "{T}/out", "--quality", "101"], {}, 2, ["--quality", "'101'"]),
    ("video-temporal-one", ["video", "{T}/in.mp4", "{T}/out", "--temporal", "1"], {}, 2, ["--temporal", "'1'"]),
    ("video-webm-scale-nan", ["video", "{T}/in.mp4", "{T}/out", "--webm-scale", "nan"], {}, 2,
     ["--webm-scale", "'nan'", "finite"]),
    ("video-open-timeout-negative", ["video", "{T}/in.mp4", "{T}/out", "--open-timeout", "-1"], {}, 2,
     ["--open-timeout", "'-1'"]),
    ("video-gallery-threshold", ["video", "{T}/in.mp4", "{T}/out", "--gallery-threshold", "5"], {}, 2,
     ["--gallery-threshold", "[-1, 1]"]),
    # a stream that accepts the connection and never answers: the timeout message, exit 1 (it used to
    # abort in C++ at exit, 134, because the open thread was still inside OpenCV)
    ("video-stream-never-answers", ["video", "rtsp://127.0.0.1:{PORT}/x", "{T}/out-rtsp", "--enhancer", "none",
                                    "--open-timeout", "1"], {}, 1, ["rtsp://127.0.0.1:", "within 1 s"]),
    # identify options (argparse: exit 2; the device: exit 1, before the gallery is enrolled)
    ("identify-top-k-zero", ["identify", "{T}/gallery", "{T}/probes", "--top-k", "0"], {}, 2, ["--top-k", "'0'"]),
    ("identify-threshold-five", ["identify", "{T}/gallery", "{T}/probes", "--threshold", "5"], {}, 2,
     ["--threshold", "'5'", "[-1, 1]"]),
    ("identify-threshold-nan", ["identify", "{T}/gallery", "{T}/probes", "--threshold", "nan"], {}, 2,
     ["--threshold", "'nan'", "[-1, 1]"]),
    ("identify-threshold-text", ["identify", "{T}/gallery", "{T}/probes", "--threshold", "high"], {}, 2,
     ["--threshold", "'high'"]),
    # outputs that would overwrite or be re-read as inputs, and a GPU this machine lacks (exit 1, before any model)
    ("restore-output-is-input", ["restore", "{T}/face.png", "{T}/face.png", "--aligned"], {}, 1,
     ["{T}/face.png", "overwrite the input"]),
    ("restore-output-is-input-folder", ["restore", "{T}/crops", "{T}/crops", "--aligned"], {}, 1,
     ["is the input folder {T}/crops"]),
    ("restore-output-inside-input", ["restore", "{T}/crops", "{T}/crops/restored", "--aligned"], {}, 1,
     ["inside the input folder {T}/crops"]),
    ("restore-device-missing-gpu", ["restore", "{T}/face.png", "{T}/restored", "--device", "cuda:99"], {}, 1,
     ["--device='cuda:99'", "CUDA"]),
    ("fuse-output-is-input", ["fuse", "{T}/crops", "{T}/crops"], {}, 1, ["is the crops folder"]),
    ("mesh-output-overwrites-input", ["mesh", "{T}/face.png", "{T}"], {}, 1, ["would overwrite the input face.png"]),
    ("mesh-output-is-a-file", ["mesh", "{T}/face.png", "{T}/random.pt"], {}, 1, ["{T}/random.pt is a file"]),
    ("fuse-output-is-a-file", ["fuse", "{T}/crops", "{T}/face.png"], {}, 1, ["{T}/face.png", "existing file"]),
    ("fuse-device-missing-gpu", ["fuse", "{T}/crops", "{T}/fused", "--device", "cuda:99"], {}, 1,
     ["--device='cuda:99'", "CUDA"]),
    # restore options (argparse: exit 2): --size 0 used to become 16, --size 30000 "unreadable input"
    ("restore-size-zero", ["restore", "{T}/face.png", "{T}/restored", "--size", "0"], {}, 2, ["--size", "'0'"]),
    ("restore-size-huge", ["restore", "{T}/face.png", "{T}/restored", "--size", "30000"], {}, 2,
     ["--size", "'30000'", "1024"]),
    ("restore-batch-zero", ["restore", "{T}/face.png", "{T}/restored", "--batch", "0"], {}, 2, ["--batch", "'0'"]),
    ("restore-det-score-nan", ["restore", "{T}/face.png", "{T}/restored", "--det-score", "nan"], {}, 2,
     ["--det-score", "'nan'"]),
    # checkpoints and chain folders (exit 1, one line naming the file; never suggests weights_only=False)
    ("ckpt-random-bytes", ["restore", "{T}/face.png", "{T}/restored", "--checkpoint", "reconstruct={T}/random.pt"],
     {}, 1, ["random.pt", "not a readable PyTorch checkpoint", "corrupt"]),
    ("ckpt-pickle-code", ["restore", "{T}/face.png", "{T}/restored", "--checkpoint", "reconstruct={T}/evil.pt"],
     {}, 1, ["evil.pt", "never loads", "GLOBAL"]),
    ("ckpt-nan-weights", ["restore", "{T}/face.png", "{T}/restored", "--checkpoint", "reconstruct={T}/nan.pt"],
     {}, 1, ["nan.pt", "NaN or infinite"]),
    ("ckpt-huge-arch", ["restore", "{T}/face.png", "{T}/restored", "--checkpoint", "reconstruct={T}/huge-arch.pt"],
     {}, 1, ["huge-arch.pt", "max_channels=100000", "out of range"]),
    ("ckpt-many-params", ["restore", "{T}/face.png", "{T}/restored", "--checkpoint",
                          "reconstruct={T}/many-params.pt"], {}, 1, ["many-params.pt", "parameters, above the limit"]),
    ("chain-sha-mismatch", ["restore", "{T}/face.png", "{T}/restored", "--models", "{T}/chain-changed"], {}, 1,
     ["chain-changed/reconstruct.pt", "weights file changed or corrupted"]),
    ("chain-yaml-alias-bomb", ["restore", "{T}/face.png", "{T}/restored", "--models", "{T}/chain-bomb"], {}, 1,
     ["chain-bomb/chain.yaml", "alias"]),
    ("identify-device-missing-gpu", ["identify", "{T}/gallery", "{T}/probes", "--device", "cuda:99"], {}, 1,
     ["--device='cuda:99'", "CUDA"]),
    # data options (argparse: exit 2)
    ("data-seed-negative", ["data", "folder:{T}/no-such-faces", "--seed", "-1"], {}, 2, ["--seed", "'-1'"]),
    ("data-size-zero", ["data", "folder:{T}/no-such-faces", "--size", "0"], {}, 2, ["--size", "'0'"]),
    ("data-limit-zero", ["data", "folder:{T}/no-such-faces", "--limit", "0"], {}, 2, ["--limit", "'0'"]),
]

# Non-UTF-8 file names (issue 19): on Linux a name is bytes, and one that is not UTF-8 reaches Python
# as a str with surrogate escapes; OpenCV used to segfault on it (exit 139) and csv/print/.encode()
# raised. {B} in argv is such a name part (bytes ff fe). Each case: the exit code, and fragments its
# stdout + stderr must hold (the name written with \xNN escapes). The files are built by
# _build_bad_names; the cases are left out (and their test skipped) when the file system refuses
# such names (macOS APFS does).
BAD_NAME = b"\xff\xfe"
NAME_CASES = [
    # a video file with such a name: read through a temporary ASCII link, never crashes OpenCV
    ("names-video-file", ["video", "{T}/names/clip{B}.avi", "{T}/names/out-file", "--enhancer", "none",
                          "--no-webm"], 0, ["outputs in"]),
    # an image sequence holding such names: frames read through bytes (np.fromfile), the junk one
    # skipped with a printable line
    ("names-video-sequence", ["video", "{T}/names/seq", "{T}/names/out-seq", "--enhancer", "none", "--no-webm"], 0,
     ["skipped", "junk\\xff\\xfe.png: not a recognised image"]),
    # a folder source: the readable one is ingested, the junk one skipped with its manifest line
    ("names-data-folder", ["data", "folder:{T}/names/imgs", "--size", "32", "--align", "none", "--no-cache"], 0,
     ["2 faces from", "junk\\xff\\xfe.png: is a text file"]),
    # a video source with such a name: opened and read (its frames hold no face: exit 1, one line)
    ("names-data-video", ["data", "video:{T}/names/clip{B}.avi", "--size", "32", "--no-cache"], 1,
     ["clip\\xff\\xfe.avi", "no usable face"]),
    # a gallery person and a probe with such names: enrolled, matched, written to the CSV
    ("names-identify", ["identify", "{T}/names/gallery", "{T}/names/imgs", "--threshold", "0.3", "--csv",
                        "{T}/names/identify.csv"], 0,
     ["b\\xff\\xfe.png", "b\\xff\\xfeb", "skipped", "junk\\xff\\xfe.png"]),
]


def _build_bad_names(t: Path) -> bool:
    """Files and folders with non-UTF-8 names under ``t/names``; False when the file system refuses them."""
    import cv2
    import numpy as np

    names = t / "names"
    names.mkdir()
    root = os.fsencode(names)
    try:
        os.mkdir(root + b"/probe" + BAD_NAME)
    except OSError:
        return False
    os.rmdir(root + b"/probe" + BAD_NAME)
    rng = np.random.default_rng(0)

    def image(seed: int) -> bytes:
        y, x = np.mgrid[0:64, 0:64]
        img = np.stack([(x * 4 + seed * 40) % 256, (y * 4) % 256, ((x + y) * 2 + seed * 70) % 256], -1)
        return cv2.imencode(".png", img.astype(np.uint8))[1].tobytes()

    for sub in (b"/seq", b"/imgs", b"/gallery", b"/gallery/alice", b"/gallery/b" + BAD_NAME + b"b"):
        os.mkdir(root + sub)
    files = {b"/seq/f0.png": image(0), b"/seq/f1.png": image(1), b"/seq/f" + BAD_NAME + b"2.png": image(2),
             b"/seq/junk" + BAD_NAME + b".png": b"junk", b"/imgs/a.png": image(3),
             b"/imgs/b" + BAD_NAME + b".png": image(4), b"/imgs/junk" + BAD_NAME + b".png": b"junk",
             b"/gallery/alice/a.png": image(3), b"/gallery/b" + BAD_NAME + b"b/b.png": image(4)}
    for rel, data in files.items():
        with open(root + rel, "wb") as fh:
            fh.write(data)
    writer = cv2.VideoWriter(str(names / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 64))
    for _ in range(6):
        writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    os.rename(root + b"/clip.avi", root + b"/clip" + BAD_NAME + b".avi")
    return True


# run as plain ``python -m facekit`` subprocesses too (the helper must behave like the real CLI)
REAL_SUBPROCESS = ("train-name-dotdot", "video-queue-size-zero", "video-stream-never-answers")


def _yaml_base(tmp: Path) -> str:
    lines = []
    for k, v in BASE_CFG.items():
        v = v.replace("{T}", str(tmp)) if isinstance(v, str) else v
        lines.append(f"{k}: {json.dumps(v)}")
    return "\n".join(lines) + "\n"


_SERVER: list = []


def _silent_server():
    """A local TCP server that accepts every connection and never answers.

    Connections are accepted (and held open) by a daemon thread: a socket that only listens fills
    its accept queue after a few opens (the in-process and the subprocess case, each with FFmpeg's
    retries), and an open that is then refused fails fast with "cannot open" instead of timing out.
    """
    import socket
    import threading

    if not _SERVER:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        held = []

        def accept_forever():
            while True:
                try:
                    held.append(sock.accept()[0])
                except OSError:
                    return

        threading.Thread(target=accept_forever, daemon=True, name="silent-server").start()
        _SERVER.extend([sock, held])
    return _SERVER[0]


def _tiny_stage(**changes) -> dict:
    """A facekit stage checkpoint dict of a tiny ``unet`` (``changes`` replace its entries)."""
    import torch

    from facekit.archs import build_model
    from facekit.chain import STAGE_FORMAT

    kwargs = {"scale": 4, "base": 4, "depth": 1, "max_channels": 8}
    torch.manual_seed(0)
    state = build_model("unet", **kwargs).state_dict()
    payload = {"format": STAGE_FORMAT, "stage": "reconstruct", "arch": "unet", "arch_kwargs": kwargs,
               "in_size": 16, "state_dict": state, "extra": {}}
    payload.update(changes)
    return payload


class _RunsCode:
    """Pickles to a call of os.system: what a malicious checkpoint holds."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _build_checkpoints(t: Path) -> None:
    """Hostile and broken checkpoints and chain folders for the ``ckpt-*`` and ``chain-*`` cases."""
    import hashlib

    import cv2
    import numpy as np
    import torch

    y, x = np.mgrid[0:64, 0:64]
    cv2.imwrite(str(t / "face.png"), np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8))
    (t / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    torch.save({"format": "x", "payload": _RunsCode()}, t / "evil.pt")
    nan = _tiny_stage()
    first = next(iter(nan["state_dict"]))
    nan["state_dict"][first] = nan["state_dict"][first].clone().fill_(float("nan"))
    torch.save(nan, t / "nan.pt")
    torch.save(_tiny_stage(arch_kwargs={"max_channels": 100000}, state_dict={}), t / "huge-arch.pt")
    torch.save(_tiny_stage(arch_kwargs={"base": 4096, "depth": 6, "max_channels": 4096}, state_dict={}),
               t / "many-params.pt")
    # a released chain folder whose stage file changed after its sha256 was recorded
    changed = t / "chain-changed"
    changed.mkdir()
    torch.save(_tiny_stage(), changed / "reconstruct.pt")
    wrong = hashlib.sha256(b"the bytes that were released").hexdigest()
    (changed / "chain.yaml").write_text(f"size: 16\nstages:\n  reconstruct: reconstruct.pt\n"
                                        f"sha256:\n  reconstruct.pt: {wrong}\n")
    bomb = t / "chain-bomb"
    bomb.mkdir()
    torch.save(_tiny_stage(), bomb / "reconstruct.pt")
    (bomb / "chain.yaml").write_text("size: 16\nstages:\n  reconstruct: reconstruct.pt\n"
                                     'x0: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
                                     + "".join(f"x{i}: &{c} [{','.join(['*' + p] * 9)}]\n"
                                               for i, (p, c) in enumerate(zip("abcdefgh", "bcdefghi"), 1)))


def _build_corpus(root: Path) -> tuple[Path, Path, list[dict]]:
    """Corpus files under ``root/corpus``, the watched working tree under ``root/work``; returns
    (corpus dir, watched dir, the helper's case list)."""
    t = root / "corpus"
    t.mkdir()
    work = root / "work"
    data = work / "data"
    # sentinels where a run named '..' (DATA_DIR) or '.' (DATA_DIR/runs) used to delete *.pt / *.png
    for d in (data / "checkpoints", data / "samples", data / "runs" / "checkpoints", data / "runs" / "samples"):
        d.mkdir(parents=True)
    for d in (data / "checkpoints", data / "runs" / "checkpoints"):
        (d / "keep.pt").write_bytes(b"sentinel")
    for d in (data / "samples", data / "runs" / "samples"):
        (d / "keep.png").write_bytes(b"sentinel")
    (work / "reports").mkdir()
    (work / "cwd").mkdir()

    base = _yaml_base(t)
    (t / "base.yaml").write_text(base)
    for name, extra in CONFIGS.items():
        key = extra.split(":", 1)[0]
        kept = "".join(line + "\n" for line in base.splitlines() if not line.startswith(key + ":"))
        (t / f"{name}.yaml").write_text(kept + extra + "\n")
    # YAML hostile files
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
        f'{c}: &{c} [{",".join(["*" + p] * 9)}]\n' for p, c in zip("abcdefgh", "bcdefghi"))
    assert len(bomb) < 1024  # the "billion laughs" of issue 19: 9**9 strings from 342 bytes
    (t / "bomb.yaml").write_text(base + bomb)
    (t / "recursive.yaml").write_text(base + "loop: &x [*x]\n")
    (t / "deep.yaml").write_text(base + "deep: " + "[" * 5000 + "]" * 5000 + "\n")
    (t / "huge.yaml").write_text(base + ("# padding padding padding padding padding padding padding\n" * 20000))
    (t / "latin1.yaml").write_bytes(base.encode() + "data: caf\u00e9\n".encode("latin-1"))
    (t / "list.yaml").write_text("- name: x\n- steps: 3\n")
    (t / "in.mp4").write_bytes(b"not really a video")
    _build_checkpoints(t)
    (t / "gallery").mkdir()
    (t / "probes").mkdir()
    (t / "crops").mkdir()
    for name in ("a.png", "b.png"):
        (t / "crops" / name).write_bytes((t / "face.png").read_bytes())

    cases = []
    for cid, argv, env, _, _ in CASES:
        args = []
        for a in argv:
            if a.startswith("{cfg:"):
                a = str(t / f"{a[5:-1]}.yaml")
            args.append(a.replace("{T}", str(t)).replace("{PORT}", str(_silent_server().getsockname()[1])))
        cases.append({"id": cid, "argv": args, "env": env, "cwd": str(work / "cwd"), "timeout": CASE_TIMEOUT_S})
    if _build_bad_names(t):
        bad = os.fsdecode(BAD_NAME)  # the str Python makes of such a name (surrogate escapes)
        for cid, argv, _, _ in NAME_CASES:
            args = [a.replace("{T}", str(t)).replace("{B}", bad) for a in argv]
            cases.append({"id": cid, "argv": args, "env": {}, "cwd": str(work / "cwd"), "timeout": CASE_TIMEOUT_S})
    return t, work, cases


def _env(work: Path) -> dict:
    env = dict(os.environ)
    env.update(FACEKIT_THREADS="1", FACEKIT_DATA_DIR=str(work / "data"), FACEKIT_REPORTS_DIR=str(work / "reports"),
               TQDM_DISABLE="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    t, work, cases = _build_corpus(root)
    io = root / "io"
    io.mkdir()
    (io / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, "-c", SERVER, str(io / "cases.json"), str(io / "results.json"),
                           str(work)], env=_env(work), cwd=str(work / "cwd"), capture_output=True, text=True,
                          timeout=CASE_TIMEOUT_S * 3 + 60 * len(cases) // 10 + 120)
    assert proc.returncode == 0, f"corpus helper failed:\n{proc.stderr[-4000:]}"
    return {"dir": t, "work": work, "cases": {c["id"]: c for c in cases},
            "results": json.loads((io / "results.json").read_text())}


def _check(cid: str, rc: int, stderr: str, expect_rc: int, fragments: list[str], corpus_dir: Path) -> None:
    assert "Traceback" not in stderr, f"{cid}: traceback\n{stderr[-3000:]}"
    assert "weights_only" not in stderr, f"{cid}: points at the unsafe load\n{stderr[-3000:]}"
    assert rc == expect_rc, f"{cid}: exit {rc}, expected {expect_rc}\n{stderr[-3000:]}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, f"{cid}: no error message"
    last = lines[-1]
    assert last.startswith("facekit"), f"{cid}: the last line is not facekit's error: {last!r}"
    assert "error:" in last, f"{cid}: {last!r}"
    if expect_rc == 1:  # facekit's own errors are one line; argparse's come after its usage lines
        assert len(lines) == 1, f"{cid}: more than one line on stderr:\n{stderr}"
    line = last.replace(str(corpus_dir), "{T}")
    for frag in fragments:
        assert frag in line, f"{cid}: {frag!r} not in the error line {line!r}"


@pytest.mark.parametrize("cid,argv,env,expect_rc,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_with_a_clear_message(corpus, cid, argv, env, expect_rc, fragments):
    res = corpus["results"][cid]
    assert not res["timed_out"], f"{cid}: still running after {CASE_TIMEOUT_S} s"
    assert res["rc"] >= 0, f"{cid}: killed by signal {-res['rc']}\n{res['stderr'][-3000:]}"
    _check(cid, res["rc"], res["stderr"], expect_rc, fragments, corpus["dir"])
    assert res["seconds"] < FAST_S, f"{cid}: took {res['seconds']} s to refuse its input"
    assert not (res["created"] or res["removed"] or res["changed"]), (
        f"{cid}: touched files: created {res['created']}, removed {res['removed']}, changed {res['changed']}")


@pytest.mark.parametrize("cid,argv,expect_rc,fragments", NAME_CASES, ids=[c[0] for c in NAME_CASES])
def test_non_utf8_file_names(corpus, cid, argv, expect_rc, fragments):
    """A file or folder name that is not UTF-8 is read (or skipped with a printable line), never a crash."""
    res = corpus["results"].get(cid)
    if res is None:
        pytest.skip("this file system refuses file names that are not UTF-8")
    out = res["stdout"] + res["stderr"]
    assert not res["timed_out"], f"{cid}: still running after {CASE_TIMEOUT_S} s"
    assert res["rc"] >= 0, f"{cid}: killed by signal {-res['rc']} (OpenCV given a surrogate str?)\n{out[-3000:]}"
    assert "Traceback" not in out, f"{cid}: traceback\n{out[-3000:]}"
    assert res["rc"] == expect_rc, f"{cid}: exit {res['rc']}, expected {expect_rc}\n{out[-3000:]}"
    for frag in fragments:
        assert frag in out, f"{cid}: {frag!r} not in the output\n{out[-3000:]}"
    if expect_rc == 1:
        lines = [line for line in res["stderr"].splitlines() if line.strip()]
        assert lines and lines[-1].startswith("facekit ") and "error:" in lines[-1], res["stderr"]
    names = corpus["dir"] / "names"
    if cid.startswith("names-video"):
        out_dir = names / ("out-file" if cid == "names-video-file" else "out-seq")
        summary = json.loads((out_dir / "summary.json").read_text())
        assert summary["frames"] == (6 if cid == "names-video-file" else 3)
        assert (out_dir / "annotated.mp4").stat().st_size > 0
        assert not [p for p in out_dir.iterdir() if "facekit-tmp" in p.name]
    if cid == "names-identify":
        table = (names / "identify.csv").read_text(encoding="utf-8")
        assert "b\\xff\\xfe.png" in table and "b\\xff\\xfeb" in table


@pytest.mark.parametrize("cid", REAL_SUBPROCESS)
def test_real_cli_subprocess_matches(corpus, cid):
    """The same case through a plain ``python -m facekit`` process gives the same answer."""
    case = corpus["cases"][cid]
    _, _, _, expect_rc, fragments = next(c for c in CASES if c[0] == cid)
    env = _env(corpus["work"])
    env.update({k: v for k, v in (case["env"] or {}).items() if v is not None})
    proc = subprocess.run([sys.executable, "-m", "facekit", *case["argv"]], env=env, cwd=case["cwd"],
                          capture_output=True, text=True, timeout=CASE_TIMEOUT_S * 2)
    _check(cid, proc.returncode, proc.stderr, expect_rc, fragments, corpus["dir"])
    assert proc.stderr.splitlines()[-1] == corpus["results"][cid]["stderr"].splitlines()[-1]
    sentinels = [corpus["work"] / "data" / p for p in ("checkpoints/keep.pt", "samples/keep.png",
                                                       "runs/checkpoints/keep.pt", "runs/samples/keep.png")]
    assert all(p.read_bytes() == b"sentinel" for p in sentinels)
    assert sorted(p.name for p in (corpus["work"] / "data").iterdir()) == ["checkpoints", "runs", "samples"]
    assert sorted(p.name for p in (corpus["work"] / "data" / "runs").iterdir()) == ["checkpoints", "samples"]


def test_chain_sha256_checked_only_where_recorded(tmp_path):
    """A stage file loads when chain.yaml records its sha256 or records none (older releases);
    the committed releases record the hashes of their committed weights."""
    import torch

    from facekit.chain import Stage
    from facekit.checkpoint import file_sha256, recorded_sha256
    from facekit.settings import MODELS_DIR

    old = tmp_path / "old"
    old.mkdir()
    torch.save(_tiny_stage(), old / "reconstruct.pt")
    (old / "chain.yaml").write_text("size: 16\nstages:\n  reconstruct: reconstruct.pt\n")
    assert recorded_sha256(old / "reconstruct.pt") is None
    assert Stage.from_checkpoint("reconstruct", old / "reconstruct.pt").arch == "unet"
    new = tmp_path / "new"
    new.mkdir()
    torch.save(_tiny_stage(), new / "reconstruct.pt")
    digest = file_sha256(new / "reconstruct.pt")
    (new / "chain.yaml").write_text(f"size: 16\nstages:\n  reconstruct: reconstruct.pt\n"
                                    f"sha256:\n  reconstruct.pt: {digest.upper()}\n")
    assert recorded_sha256(new / "reconstruct.pt") == digest
    assert Stage.from_checkpoint("reconstruct", new / "reconstruct.pt").arch == "unet"
    for folder in ("default", "celeba-orl-identity"):
        stage = MODELS_DIR / folder / "reconstruct.pt"
        if stage.is_file():
            assert recorded_sha256(stage) == file_sha256(stage), f"{stage}: chain.yaml records another sha256"


def test_degradation_spec_yaml_has_the_limits(tmp_path):
    """A degradation spec (file or text) is read with the size and alias limits of every config."""
    from facekit import degrade
    from facekit.errors import ConfigError

    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
        f'{c}: &{c} [{",".join(["*" + p] * 9)}]\n' for p, c in zip("abcdefgh", "bcdefghi"))
    spec = tmp_path / "spec.yaml"
    spec.write_text("ops: [{op: blur}]\n" + bomb)
    with pytest.raises(ConfigError, match="spec.yaml: YAML aliases expand"):
        degrade.load_spec(spec)
    with pytest.raises(ConfigError, match="pipeline spec: YAML aliases expand"):
        degrade.load_spec("ops: [{op: blur}]\n" + bomb)
    assert degrade.load_spec("ops: [{op: blur}]\n") == [{"op": "blur"}]


def test_stale_checkpoint_temps_swept_at_the_first_save(tmp_path, capsys):
    """Temporaries of killed saves (``.last.pt.XXXXXXXX.tmp``) older than this process are removed
    at its first save into their folder; newer ones, other names and other folders are kept."""
    import time

    import torch

    from facekit import checkpoint

    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    old = [ckpt_dir / ".last.pt.k1ll3d_1.tmp", ckpt_dir / ".step_000100.pt.abcdefgh.tmp"]
    kept = [ckpt_dir / ".last.pt.n0wsav1n.tmp", ckpt_dir / "notes.tmp", ckpt_dir / ".last.pt.tmp",
            ckpt_dir / "last.pt.abcdefgh.tmp"]
    elsewhere = tmp_path / ".last.pt.abcdefgh.tmp"
    for f in old + kept + [elsewhere]:
        f.write_bytes(b"partial")
    past = time.time() - 3600
    for f in old + kept[1:] + [elsewhere]:
        os.utime(f, (past, past))
    os.utime(kept[0], (time.time() + 60, time.time() + 60))  # a save still in progress
    checkpoint.save_checkpoint(ckpt_dir / "last.pt", {"step": torch.tensor(1)})
    assert not any(f.exists() for f in old)
    assert all(f.exists() for f in kept) and elsewhere.exists()
    assert "removed 2 temporary file(s) left by killed saves" in capsys.readouterr().err
    assert checkpoint.load_checkpoint(ckpt_dir / "last.pt")["step"] == 1
    (ckpt_dir / ".last.pt.k1ll3d_2.tmp").write_bytes(b"x")
    os.utime(ckpt_dir / ".last.pt.k1ll3d_2.tmp", (past, past))
    checkpoint.save_checkpoint(ckpt_dir / "last.pt", {"step": torch.tensor(2)})  # swept once per process
    assert (ckpt_dir / ".last.pt.k1ll3d_2.tmp").exists()
