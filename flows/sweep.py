"""Flow `experiment-sweep`: queue a few `-S` variations as DVC experiments, run them, compare.

Why DVC's queue rather than our own loop: each queued experiment runs in its own temporary copy
of the repository (`.dvc/tmp/exps`), so the sweep never touches the workspace, and every result
lands in `dvc exp show` for later comparison. The flow queues each point through DVC's Python
CLI (holding vitlab's workspace lock while it does), runs the queue (`dvc exp run --run-all`),
waits for DVC's queue workers to exit, and compares the points from `dvc.api.exp_show` in its
artifacts. Queued experiments start from the last commit plus tracked changes: commit new
files first.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.dag import DagFailed, StageFailed, check_experiment, check_root, workspace_lock
from flows.proc import dvc_command, log_path, log_tail, run_logged, stop_reason
from flows.report import TEST_ACC, VAL_ACC, fmt, table
from vitlab.core.errors import VitlabError

DEFAULT_POINTS: tuple[tuple[str, ...], ...] = (
    ("train.lr=0.001",),
    ("train.lr=0.002",),
    ("train.lr=0.004",),
)
WORKER_EXIT_TIMEOUT_S = 90.0
BOOKKEEPING = ("Experiment", "rev", "typ", "Created", "parent", "State", "Executor")


@task(name="queue-experiments", cache_policy=NO_CACHE, persist_result=False)
def queue_experiments(root: str, points: list[list[str]], names: list[str]) -> None:
    """`dvc exp run --queue -S ... --name <name>`: stash each point for the queue."""
    for point, name in zip(points, names, strict=True):
        args = ["exp", "run", "--queue", "--name", name]
        for o in point:
            args += ["-S", o]
        log = log_path(Path(root), f"exp-queue-{name}")
        code, _ = run_logged(dvc_command(*args), Path(root), log, lambda: None)
        if code != 0:
            raise StageFailed(f"queueing experiment '{name}' failed:\n{log_tail(log)}")


@task(name="run-queue", cache_policy=NO_CACHE, persist_result=False)
def run_queue(root: str, names: list[str], jobs: int) -> dict[str, str]:
    """Run every queued experiment (`dvc exp run --run-all`), then wait for DVC's workers.

    `--run-all` exits 0 even when an experiment failed, so the outcome per experiment is read
    from the queue's status. DVC's celery workers outlive the command by a few seconds; the
    task waits for them so that no process is left behind.
    """
    from dvc.repo import Repo

    repo_path = Path(root)
    log = log_path(repo_path, "exp-run-all")
    cmd = dvc_command("exp", "run", "--run-all", "--jobs", str(jobs))
    code, stopped = run_logged(cmd, repo_path, log, stop_reason)
    if stopped or code != 0:
        raise StageFailed(f"dvc exp run --run-all {stopped or 'failed'}:\n{log_tail(log)}")
    with Repo(root) as repo:
        queue = repo.experiments.celery_queue
        deadline = time.monotonic() + WORKER_EXIT_TIMEOUT_S
        while queue.worker_status() and time.monotonic() < deadline:
            time.sleep(2.0)
        if queue.worker_status():
            get_run_logger().warning(
                "DVC queue workers still up after %.0f s; stopping them", WORKER_EXIT_TIMEOUT_S
            )
            queue.shutdown()
        statuses = {e["name"]: e["status"] for e in queue.status()}
    return {n: statuses.get(n, "unknown") for n in names}


def override_key(override: str) -> str:
    """The parameter an override sets: `params.yaml:train.lr=0.1` -> `train.lr`."""
    lhs = override.split("=", 1)[0]
    return lhs.split(":", 1)[-1].lstrip("+~")


def compare_rows(shown: list[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """`dvc.api.exp_show` rows of the baseline commit and the named experiments, labelled."""
    rows = []
    for r in shown:
        if r.get("typ") == "baseline" and r.get("rev") != "workspace":
            label = "baseline"
        elif r.get("Experiment") in names:
            label = r["Experiment"]
        else:
            continue
        values = {k: v for k, v in r.items() if k not in BOOKKEEPING}
        rows.append({"experiment": label, "rev": str(r.get("rev", ""))[:7], **values})
    return rows if len(rows) > 1 else []


def _mean(row: dict[str, Any], suffix: str) -> float | None:
    vals = [v for k, v in row.items() if k.endswith(suffix) and isinstance(v, int | float)]
    return sum(vals) / len(vals) if vals else None


def sweep_markdown(rows: list[dict[str, Any]], keys: Sequence[str], points: dict[str, str]) -> str:
    """Comparison of the sweep's experiments: their overrides and headline accuracies."""
    out = ["# experiment-sweep", ""]
    if not rows:
        return "\n".join(out + ["`dvc exp show` lists none of the sweep's experiments."])
    columns = list(dict.fromkeys(k for r in rows for k in r))
    shown = [k for k in columns if k.endswith(VAL_ACC)] or [
        k for k in columns if k not in ("experiment", "rev", *keys)
    ]
    header = ["experiment", "overrides", f"mean {VAL_ACC}", f"mean {TEST_ACC}", *shown]
    cells = [
        [r["experiment"], points.get(r["experiment"], "(committed params)")]
        + [fmt(_mean(r, VAL_ACC)), fmt(_mean(r, TEST_ACC))]
        + [fmt(r.get(k)) for k in shown]
        for r in rows
    ]
    out += [table(header, cells), ""]
    ranked = [r for r in rows if r["experiment"] != "baseline" and _mean(r, VAL_ACC) is not None]
    if ranked:
        best = max(ranked, key=lambda r: _mean(r, VAL_ACC) or 0.0)
        out += [
            f"Best by mean val accuracy: **{best['experiment']}** ({points[best['experiment']]}); "
            f"bring it into the workspace with `dvc exp apply {best['experiment']}`.",
            "",
        ]
    out += ["Every column: table artifact `experiment-sweep-comparison`; or `dvc exp show`."]
    return "\n".join(out)


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
    import dvc.api
    from prefect.runtime import flow_run

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

    with workspace_lock(root_path, f"experiment-sweep flow run '{flow_run.name}' (queueing)"):
        queue_experiments(str(root_path), pts, names)
    statuses = run_queue(str(root_path), names, jobs)
    logger.info("queue results: %s", statuses)

    keys = list(dict.fromkeys(override_key(o) for p in pts for o in p))
    rows = compare_rows(dvc.api.exp_show(repo=str(root_path)), names)
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
            logs = subprocess.run(
                dvc_command("queue", "logs", n), cwd=root_path, capture_output=True, text=True
            )
            tail = "\n".join(logs.stdout.strip().splitlines()[-10:])
            parts.append(f"experiment '{n}' ({labels[n]}) {statuses[n].lower()}:\n{tail}")
        raise DagFailed("\n".join(parts))
    return {"experiments": labels, "statuses": statuses, "rows": rows}
