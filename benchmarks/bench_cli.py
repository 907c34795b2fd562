"""Start-up cost of the command line: wall time and peak RSS of ``python -m facekit --help``.

Prints one JSON object. Each command is run ``--runs`` times as a fresh process (stdout to
/dev/null, ``FACEKIT_THREADS=1``); the median wall time, the median CPU time (user + system of
the child, read with ``os.wait4``) and the largest peak RSS of the runs are reported, plus
whether the command imported torch (one extra ``-X importtime`` run). Target: the top-level
``--help`` under 1 s, without torch. ``restore --help`` imports its module (torch, OpenCV) and
is the reference for what one command's sub-parser costs.

On a shared machine (``load_average`` is recorded) wall time measures the other jobs too; the
CPU time is what the start-up itself costs.

Measured 2026-12-03 (2 cores, a training job beside it, median of 5): before the lazy sub-parsers
(every command module imported to build the parser) ``--help`` took 7.5 s wall, 6.6 s CPU and
1,055 MB peak RSS, importing torch, torchvision and cv2; after, 0.07 s and 14 MB, no torch.
``restore --help`` (imports torch and cv2): 3.4 s wall, 3.2 s CPU, 849 MB.

    python benchmarks/bench_cli.py [--runs 5] [--root DIR] [--command=--help --command="restore --help"]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "cv2", "onnxruntime")


def run_once(args: list[str], root: Path) -> dict:
    """One ``python -m facekit ARGS`` process: wall s, CPU s, peak RSS MB and exit code."""
    env = {**os.environ, "FACEKIT_THREADS": "1"}
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "facekit", *args], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keep Popen consistent
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024, "rc": proc.returncode}


def heavy_imports(args: list[str], root: Path) -> list[str]:
    """Top-level packages among ``HEAVY`` that ``python -m facekit ARGS`` imports."""
    env = {**os.environ, "FACEKIT_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "facekit", *args], cwd=root, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    names = {line.rsplit("|", 1)[1].strip().split(".")[0]
             for line in proc.stderr.splitlines() if line.startswith("import time:") and "|" in line}
    return sorted(names & set(HEAVY))


def measure(args: list[str], runs: int, root: Path) -> dict:
    samples = [run_once(args, root) for _ in range(runs)]
    return {"runs": runs, "rc": sorted({s["rc"] for s in samples}),
            "wall_s_median": round(statistics.median(s["wall_s"] for s in samples), 3),
            "wall_s_min": round(min(s["wall_s"] for s in samples), 3),
            "cpu_s_median": round(statistics.median(s["cpu_s"] for s in samples), 3),
            "peak_rss_mb": round(max(s["peak_rss_mb"] for s in samples), 1),
            "heavy_imports": heavy_imports(args, root)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per command (median reported)")
    ap.add_argument("--root", type=Path, default=ROOT, help="project folder to run from (another checkout to compare)")
    ap.add_argument("--command", action="append", default=None,
                    help="facekit arguments to time, repeatable (default: '--help' and 'restore --help')")
    args = ap.parse_args(argv)
    commands = args.command or ["--help", "restore --help"]

    result = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
              "load_average": [round(x, 2) for x in os.getloadavg()], "root": str(args.root), "commands": {}}
    for command in commands:
        result["commands"][command] = measure(shlex.split(command), args.runs, args.root)
        print(f"bench_cli: facekit {command}: {result['commands'][command]}", file=sys.stderr)
    # All children together (the largest single child's peak), as resource reports it.
    result["children_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    top = result["commands"].get("--help")
    if top:
        result["target_help_under_1s"] = top["wall_s_median"] < 1.0
        result["help_imports_no_torch"] = "torch" not in top["heavy_imports"]
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
