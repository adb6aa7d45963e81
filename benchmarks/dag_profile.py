"""Per-stage wall time and peak memory of a whole `dvc repro`, from a fresh clone.

Clones this repository into a scratch directory (or uses --root) and runs `dvc repro` there,
the one command a user runs: the total is its wall time, DVC's own startup included. A stage's
seconds run from DVC's "Running stage" line to the next one (its command, then DVC hashing and
caching its outputs); its memory is the peak resident set of its largest process, read from
the kernel's high-water mark while it runs. Ends with a second `dvc repro`, which must be a
no-op, and writes reports/bench/dag.{json,md}.

    python -m benchmarks.dag_profile                 # default profile, fresh clone
    python -m benchmarks.dag_profile --root DIR      # a checkout none of whose stages ran yet
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import networkx as nx
import psutil
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


RUNNING = re.compile(r"^Running stage '([^']+)':")


def peak_rss_mib(proc: psutil.Process) -> int:
    """A live process's peak resident set (Linux's VmHWM), else its current one, in MiB."""
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
        return proc.memory_info().rss // 2**20
    except (OSError, psutil.Error):
        return 0


def _finish(row: dict, now: float) -> None:
    row["seconds"] = round(now - row.pop("started"), 1)
    print(f"{row['stage']:24s} {row['seconds']:7.1f} s  {row['peak_rss_mib']:6d} MiB", flush=True)


def profile_repro(cmd: list[str], cwd: Path, env: dict) -> tuple[float, list[dict]]:
    """(wall seconds, per-stage rows) of one `dvc repro`, from its output as it streams."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    rows: list[dict] = []
    done = threading.Event()

    def sample() -> None:  # the stage running now is rows[-1]: DVC runs one at a time
        parent = psutil.Process(proc.pid)
        while not done.wait(0.05):
            try:
                kids = parent.children(recursive=True)
            except psutil.Error:
                return
            if rows and kids:
                row = rows[-1]
                row["peak_rss_mib"] = max(row["peak_rss_mib"], *map(peak_rss_mib, kids))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = []
    for line in proc.stdout:
        output.append(line)
        if m := RUNNING.match(line):
            now = time.perf_counter()
            if rows:
                _finish(rows[-1], now)
            rows.append({"stage": m[1], "started": now, "peak_rss_mib": 0})
    proc.wait()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{''.join(output[-40:])}")
    if rows:
        _finish(rows[-1], time.perf_counter())
    return seconds, rows


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
        total, rows = profile_repro([*dvc, "repro"], root, env)
        expected = stage_order(root)
        if sorted(r["stage"] for r in rows) != sorted(expected):
            sys.exit(f"dvc repro ran {[r['stage'] for r in rows]}, not every stage {expected}: "
                     "some were up to date or restored from DVC's cache; profile a fresh clone "
                     "(leave out --root)")  # fmt: skip
        noop_s, _, noop_out = timed([*dvc, "repro"], root, env)
        result = {
            "where": "a fresh clone" if scratch else str(root),
            "total_seconds": round(total, 1),
            "stage_seconds": round(sum(r["seconds"] for r in rows), 1),
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
        f"`dvc repro` in {result['where']} took {result['total_seconds']} s (the stages "
        f"{result['stage_seconds']} s, DVC's startup the rest); peak memory "
        f"{result['peak_rss_mib']} MiB; a second `dvc repro` took "
        f"{result['second_repro_seconds']} s "
        f"({'a no-op' if result['second_repro_is_noop'] else 'NOT a no-op'}).",
        "",
        "| stage | seconds | peak RSS of its largest process (MiB) |",
        "|---|---|---|",
        *[f"| {r['stage']} | {r['seconds']} | {r['peak_rss_mib']} |" for r in rows],
    ]
    write_text(args.out / "dag.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
