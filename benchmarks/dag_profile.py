"""Per-stage wall time and peak memory of a whole `dvc repro`, from a fresh clone.

Clones this repository into a scratch directory (or uses --root), then runs every stage in
DVC's topological order with `dvc repro --single-item <stage>` under GNU time, so each stage's
seconds and peak resident memory (its whole process tree) are its own. Ends with a plain
`dvc repro`, which must be a no-op, and writes reports/bench/dag.{json,md}.

    python -m benchmarks.dag_profile                 # default profile, fresh clone
    python -m benchmarks.dag_profile --root . --keep # profile this checkout in place
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import networkx as nx
from dvc.repo import Repo

from vitlab.core.atomic import write_json, write_text


def stage_order(root: Path) -> list[str]:
    """Stage names in the order DVC would run them."""
    graph = Repo(str(root)).index.graph  # edges point from a stage to what it depends on
    return [s.name for s in reversed(list(nx.topological_sort(graph)))]


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, int, str]:
    """(seconds, peak RSS in MiB of the process tree, output) of one command under GNU time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
        start = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-o", t.name, "-f", "%M", *cmd],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        if proc.returncode:
            sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
        return seconds, int(t.read().split()[-1]) // 1024, proc.stdout


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--root", type=Path, default=None, help="profile this checkout instead of a clone"
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch clone")
    p.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = p.parse_args()
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    scratch = None
    root = args.root
    if root is None:
        scratch = Path(tempfile.mkdtemp(prefix="vitlab-dag-"))
        root = scratch / "repo"
        subprocess.run(["git", "clone", "-q", str(Path.cwd()), str(root)], check=True)
    try:
        dvc = [sys.executable, "-m", "dvc"]
        rows = []
        for stage in stage_order(root):
            seconds, rss, _ = timed([*dvc, "repro", "--single-item", stage], root, env)
            rows.append({"stage": stage, "seconds": round(seconds, 1), "peak_rss_mib": rss})
            print(f"{stage:24s} {seconds:7.1f} s  {rss:6d} MiB", flush=True)
        noop_s, _, noop_out = timed([*dvc, "repro"], root, env)
        total = sum(r["seconds"] for r in rows)
        result = {
            "total_seconds": round(total, 1),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
            "second_repro_seconds": round(noop_s, 1),
            "second_repro_is_noop": "Running stage" not in noop_out,
            "cpus": os.cpu_count(),
            "stages": rows,
        }
    finally:
        if scratch and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    write_json(args.out / "dag.json", result)
    lines = [
        f"# `dvc repro` of the default DAG on {result['cpus']} CPUs",
        "",
        f"Total {result['total_seconds']} s; peak memory {result['peak_rss_mib']} MiB; a second "
        f"`dvc repro` took {result['second_repro_seconds']} s "
        f"({'a no-op' if result['second_repro_is_noop'] else 'NOT a no-op'}).",
        "",
        "| stage | seconds | peak RSS (MiB) |",
        "|---|---|---|",
        *[f"| {r['stage']} | {r['seconds']} | {r['peak_rss_mib']} |" for r in rows],
    ]
    write_text(args.out / "dag.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
