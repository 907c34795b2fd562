"""Track fusion cost (issue 22): milliseconds to fuse one k-crop track of 16 px faces, per step.

    python benchmarks/bench_fusion.py [--threads 2] [--k 8] [--repeats 20] [--backend auto|torch|onnx] [--mirror]

Prints JSON. Target: an 8-crop track in at most 20 ms on 2 threads (the learned stage when
models/fusion/fusion.pt is installed, else the classical fusion).
"""

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--side", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--backend", default="auto", help="auto (ONNX Runtime on the CPU where installed), torch or onnx")
    ap.add_argument("--mirror", action="store_true", help="average the learned stage with its mirrored pass")
    args = ap.parse_args()

    from facekit import fusion
    from facekit.data import load_faces
    from facekit.settings import set_threads

    set_threads(args.threads)
    faces = load_faces("orl", size=128, progress=False, limit=40).images
    learned = fusion.default_fusion_model().is_file()
    config = fusion.FusionConfig(mirror=args.mirror)
    fuser = fusion.TrackFuser(config, restorer="default", model="default" if learned else None, backend=args.backend)
    tracks = []
    for i in range(8):
        rng = np.random.default_rng([9, i])
        lq, _, _ = fusion.synthetic_burst(faces[i * 5], args.k, args.side, rng, fusion.ood_degrade(args.side),
                                          context=1.2)
        tracks.append(lq)
    fuser(tracks[0])  # warm-up (first call allocates)
    times, steps = [], {}
    for r in range(args.repeats):
        lq = tracks[r % len(tracks)]
        t0 = time.perf_counter()
        res = fuser(lq)
        times.append((time.perf_counter() - t0) * 1000)
        for key, v in res.timings_ms.items():
            steps.setdefault(key, []).append(v)
    print(json.dumps({
        "benchmark": "fusion", "threads": args.threads, "k": args.k, "side": args.side,
        "mode": "learned" if learned else "classical", "mirror": config.mirror, "backend": fuser.backend,
        "ms_per_track_median": round(float(np.median(times)), 2),
        "ms_per_track_p90": round(float(np.percentile(times, 90)), 2),
        "step_ms_median": {k: round(float(np.median(v)), 2) for k, v in steps.items()},
        "target_ms": 20.0,
    }, indent=2))


if __name__ == "__main__":
    main()
