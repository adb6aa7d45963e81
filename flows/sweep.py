"""Flow `experiment-sweep`: queue a few `-S` variations as DVC experiments, run them, compare.

Why DVC's queue rather than our own loop: each queued experiment runs in its own temporary copy
of the repository (`.dvc/tmp/exps`), so the sweep never touches the workspace, and every result
lands in `dvc exp show` for later comparison. The flow queues each point
(`dvc exp run --queue -S ... --name <prefix>-<i>`), runs the queue (`dvc exp run --run-all`),
waits for DVC's queue workers to exit, and compares the points from `dvc exp show --json` in
its artifacts. Queued experiments start from the last commit plus tracked changes: commit new
files first.
"""

import json
import re
import subprocess
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.dag import (
    DagFailed,
    StageFailed,
    check_experiment,
    check_root,
    command_env,
    dvc_command,
    failure_message,
    log_line,
    stream_command,
)
from vitlab.errors import VitlabError

DEFAULT_POINTS: tuple[tuple[str, ...], ...] = (
    ("train.lr=0.001",),
    ("train.lr=0.002",),
    ("train.lr=0.004",),
)
WORKER_EXIT_TIMEOUT_S = 90.0
_WORKERS = re.compile(r"Worker status: (\d+) active, (\d+) idle")


def _dvc(root: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        dvc_command(*args), cwd=root, env=command_env(), capture_output=True, text=True
    )


def _streamed(root: str, what: str, *args: str) -> list[str]:
    """Run a DVC command with its output in the task's log; raise with its stderr tail."""
    logger = get_run_logger()
    result = stream_command(
        dvc_command(*args), root, command_env(), lambda _s, line: log_line(logger, line)
    )
    if result.returncode != 0:
        raise StageFailed(failure_message(what, result.returncode, result.stderr_tail))
    return result.stdout


def queue_status(root: str) -> tuple[dict[str, str], tuple[int, int] | None]:
    """`dvc queue status` as {experiment name: status} and (active, idle) workers."""
    out = _dvc(root, "queue", "status").stdout
    tasks: dict[str, str] = {}
    workers = None
    for line in out.splitlines():
        if m := _WORKERS.search(line):
            workers = (int(m.group(1)), int(m.group(2)))
            continue
        parts = line.split()
        if len(parts) >= 4 and parts[0] != "Task":
            tasks[parts[1]] = parts[-1]
    return tasks, workers


@task(name="queue-experiment", cache_policy=NO_CACHE, persist_result=False)
def queue_experiment(root: str, overrides: list[str], name: str) -> str:
    """`dvc exp run --queue -S ... --name <name>`: stash one point for the queue."""
    args = ["exp", "run", "--queue", "--name", name]
    for o in overrides:
        args += ["-S", o]
    _streamed(root, f"queueing experiment '{name}'", *args)
    return name


@task(name="run-queue", cache_policy=NO_CACHE, persist_result=False)
def run_queue(root: str, names: list[str], jobs: int) -> dict[str, str]:
    """Run every queued experiment (`dvc exp run --run-all`), then wait for DVC's workers.

    `--run-all` exits 0 even when an experiment failed, so the outcome per experiment is read
    from `dvc queue status`. DVC's celery workers outlive the command by a few seconds; the
    task waits for them so that no process is left behind.
    """
    logger = get_run_logger()
    _streamed(root, "dvc exp run --run-all", "exp", "run", "--run-all", "--jobs", str(jobs))
    deadline = time.monotonic() + WORKER_EXIT_TIMEOUT_S
    while True:
        tasks, workers = queue_status(root)
        if workers in (None, (0, 0)) or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    if workers not in (None, (0, 0)):
        logger.warning(
            "DVC queue workers still up after %.0f s; stopping them", WORKER_EXIT_TIMEOUT_S
        )
        _dvc(root, "queue", "stop")
    return {n: tasks.get(n, "unknown") for n in names}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def override_key(override: str) -> str:
    """The parameter an override sets: `params.yaml:train.lr=0.1` -> `train.lr`."""
    lhs = override.split("=", 1)[0]
    return lhs.split(":", 1)[-1].lstrip("+~")


def _values(entry: dict[str, Any], kind: str) -> dict[str, Any]:
    files = (entry.get("data") or {}).get(kind) or {}
    flat: dict[str, Any] = {}
    for path, content in files.items():
        values = _flatten((content or {}).get("data") or {})
        prefix = "" if len(files) == 1 else f"{path}:"
        flat.update({prefix + k: v for k, v in values.items()})
    return flat


def compare_rows(
    show: list[dict[str, Any]], names: Sequence[str], keys: Sequence[str]
) -> list[dict[str, Any]]:
    """Rows of `dvc exp show --json` for the baseline commit and the named experiments."""
    rows = []
    for baseline in show:
        if baseline.get("rev") == "workspace":
            continue
        entries = [("baseline", baseline)]
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name") in names:
                    entries.append((rev["name"], rev))
        if len(entries) == 1:
            continue
        for label, entry in entries:
            params = _values(entry, "params")
            row: dict[str, Any] = {"experiment": label, "rev": str(entry.get("rev", ""))[:7]}
            row.update({k: params.get(k) for k in keys})
            row.update(_values(entry, "metrics"))
            rows.append(row)
    return rows


def _mean(row: dict[str, Any], suffix: str) -> float | None:
    vals = [v for k, v in row.items() if k.endswith(suffix) and isinstance(v, int | float)]
    return sum(vals) / len(vals) if vals else None


def sweep_markdown(rows: list[dict[str, Any]], keys: Sequence[str], points: dict[str, str]) -> str:
    """Comparison of the sweep's experiments: their overrides and headline accuracies."""
    out = ["# experiment-sweep", ""]
    if not rows:
        return "\n".join(out + ["`dvc exp show` lists none of the sweep's experiments."])
    columns = list(dict.fromkeys(k for r in rows for k in r))
    shown = [k for k in columns if k.endswith("val_acc")] or [
        k for k in columns if k not in ("experiment", "rev", *keys)
    ]
    header = ["experiment", "overrides", "mean val_acc", "mean test_acc", *shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["experiment"], points.get(r["experiment"], "(committed params)")]
        cells += [_fmt(_mean(r, "val_acc")), _fmt(_mean(r, "test_acc"))]
        cells += [_fmt(r.get(k)) for k in shown]
        lines.append("| " + " | ".join(cells) + " |")
    out += lines + [""]
    ranked = [r for r in rows if r["experiment"] != "baseline" and _mean(r, "val_acc") is not None]
    if ranked:
        best = max(ranked, key=lambda r: _mean(r, "val_acc") or 0.0)
        out += [
            f"Best by mean val accuracy: **{best['experiment']}** ({points[best['experiment']]}); "
            f"bring it into the workspace with `dvc exp apply {best['experiment']}`.",
            "",
        ]
    out += ["Every column: table artifact `experiment-sweep-comparison`; or `dvc exp show`."]
    return "\n".join(out)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4f}"
    return "" if x is None else str(x)


@flow(name="experiment-sweep", log_prints=True)
def experiment_sweep(
    root: str = ".",
    points: list[list[str]] | None = None,
    name_prefix: str | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Queue one DVC experiment per point (a list of `-S` strings), run them, compare them.

    points default: train.lr at 0.001, 0.002 and 0.004. name_prefix: experiments are named
    `<prefix>-1`, `<prefix>-2`, ... (default `sweep-<date>-<time>`). jobs: experiments run at
    once by DVC's queue.
    """
    logger = get_run_logger()
    root_path = check_root(root)
    pts = [list(p) for p in (points if points is not None else DEFAULT_POINTS)]
    if not pts or any(not p for p in pts):
        raise VitlabError("points: give at least one point, each a non-empty list of -S values")
    bad = [o for p in pts for o in p if "=" not in o]
    if bad:
        raise VitlabError(f"points: {bad} lack '='; write them as DVC -S values: train.lr=0.003")
    if jobs < 1:
        raise VitlabError(f"jobs: {jobs} is below 1; use 1 to run the experiments one by one")
    prefix = name_prefix or datetime.now().strftime("sweep-%Y%m%d-%H%M%S")
    names = [f"{prefix}-{i}" for i in range(1, len(pts) + 1)]
    check_experiment(root_path, names, param="name_prefix")

    for point, name in zip(pts, names, strict=True):
        queue_experiment(str(root_path), point, name)
    statuses = run_queue(str(root_path), names, jobs)
    logger.info("queue results: %s", statuses)

    keys = list(dict.fromkeys(override_key(o) for p in pts for o in p))
    shown = _dvc(str(root_path), "exp", "show", "--json", "--no-pager")
    rows = compare_rows(json.loads(shown.stdout or "[]"), names, keys)
    labels = {n: " ".join(p) for n, p in zip(names, pts, strict=True)}
    if rows:
        create_table_artifact(
            key="experiment-sweep-comparison",
            table=rows,
            description=f"dvc exp show for sweep {prefix} in {root_path}",
        )
    create_markdown_artifact(
        key="experiment-sweep-summary",
        markdown=sweep_markdown(rows, keys, labels),
        description=f"Sweep {prefix}: overrides vs metrics",
    )

    failed = [n for n, s in statuses.items() if s != "Success"]
    if failed:
        parts = []
        for n in failed:
            tail = _dvc(str(root_path), "queue", "logs", n).stdout.strip().splitlines()[-10:]
            parts.append(
                f"experiment '{n}' ({labels[n]}) {statuses[n].lower()}:\n" + "\n".join(tail)
            )
        raise DagFailed("\n".join(parts))
    return {"experiments": labels, "statuses": statuses, "rows": rows}
