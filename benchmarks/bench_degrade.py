"""Throughput of pair synthesis: pairs/s for every degradation preset at 64 and 128 px, one core.

Prints one JSON object. ``pipeline`` rows time ``Pipeline(preset)(face, rng, condition)`` with a
random lighting condition per pair (what the dataset does); ``dataset`` rows time
``PairedFaceDataset.__getitem__`` (adds the per-sample generator, head pose and the torch
tensors). Target: >= 2,000 pairs/s for ``cctv-heavy`` at 64 px on one core.

Two rates per row: ``pipeline``/``dataset`` per wall-clock second, and ``*_cpu`` per second of
this process's CPU time. On a shared machine (``load_average`` is recorded) the wall rate
measures the other jobs too; the CPU rate is what one core delivers, and the target is read
from it.

Measured 2026-12-01, one thread, two training jobs beside it (this process at nice 19), pairs per
CPU second (per wall second in brackets): cctv-heavy 2,295 at 64 px (1,500), 1,134 at 128 px;
the dataset path (pose warp, per-sample generator, tensors) 1,494 at 64 px, 885 at 128 px;
cctv-light 4,596 / 2,417; lowlight 2,580 / 1,279; motion 4,280 / 1,418; cctv-video 642 / 679.

    python benchmarks/bench_degrade.py [--seconds 1.5] [--sizes 64 128] [--scale 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from facekit import augment, degrade, settings  # noqa: E402


def faces_at(size: int, n: int = 64) -> np.ndarray:
    """Real faces for timing: the cached ORL crops, or ORL centre crops when the cache is not built."""
    try:
        from facekit.data import load_faces

        return load_faces("orl", size=size, progress=False).images[:n]
    except Exception:  # timing does not need aligned faces
        from facekit.data import orl_dir

        out = []
        for p in sorted(orl_dir().glob("s*/*.pgm"))[:n]:
            g = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            top = (g.shape[0] - g.shape[1]) // 2
            g = cv2.resize(g[top:top + g.shape[1]], (size, size), interpolation=cv2.INTER_AREA)
            out.append(np.repeat(g[:, :, None], 3, axis=2))
        return np.stack(out)


def rate(fn, n_items: int, seconds: float, warmup: int = 200) -> tuple[float, float]:
    """``(calls per wall second, calls per CPU second)`` of ``fn(i)`` over about ``seconds`` of
    wall time (after a warm-up that fills kernel caches)."""
    for i in range(warmup):
        fn(i % n_items)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        for _ in range(50):
            fn(n % n_items)
            n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt, n / max(1e-9, time.process_time() - c0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="timing window per row")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--scale", type=int, default=4)
    args = ap.parse_args(argv)
    settings.set_threads(1)  # one core: cv2.setNumThreads(1), torch.set_num_threads(1)
    from facekit.dataset import PairedFaceDataset

    result = {"unit": "pairs/s", "threads": 1, "scale": args.scale, "seconds_per_row": args.seconds,
              "machine": f"{platform.machine()} {os.cpu_count()} cpu", "opencv": cv2.__version__,
              "load_average": [round(x, 2) for x in os.getloadavg()],
              "pipeline": {}, "dataset": {}, "pipeline_cpu": {}, "dataset_cpu": {}}
    for size in args.sizes:
        faces = faces_at(size)
        conds = augment.CONDITIONS
        for name in degrade.PRESETS:
            pipe = degrade.Pipeline(name, scale=args.scale)
            rng = np.random.default_rng(0)
            slow = name == "cctv-video"  # ~2 ms/pair of file I/O: a short window is enough
            r, r_cpu = rate(lambda i: pipe(faces[i], rng, condition=conds[i % 5]), len(faces),
                            min(args.seconds, 0.5) if slow else args.seconds, warmup=20 if slow else 200)
            result["pipeline"].setdefault(name, {})[str(size)] = round(r, 1)
            result["pipeline_cpu"].setdefault(name, {})[str(size)] = round(r_cpu, 1)
        ds = PairedFaceDataset(faces, preset="cctv-heavy", scale=args.scale, seed=0)
        r, r_cpu = rate(lambda i: ds[i], len(faces), args.seconds)
        result["dataset"].setdefault("cctv-heavy", {})[str(size)] = round(r, 1)
        result["dataset_cpu"].setdefault("cctv-heavy", {})[str(size)] = round(r_cpu, 1)
    heavy = result["pipeline_cpu"]["cctv-heavy"].get("64")
    if heavy is not None:
        result["cctv_heavy_64_meets_2000"] = bool(heavy >= 2000)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
