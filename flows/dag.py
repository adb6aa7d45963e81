"""Flow `experiment-dag`: the DVC pipeline as Prefect tasks, one task per DVC stage.

Why this shape: users trigger and watch the study through Prefect (per-stage state and logs,
retries, artifacts) while DVC stays the only judge of what is up to date. The stage graph is
DVC's own (`Repo.index.graph`, the graph `dvc repro` walks), never a second list here. Every
stage is submitted at once, upstream stages first, with `wait_for` on the stages it depends
on, and the task runner decides what runs when: Prefect's thread pool on one machine, or a Dask
cluster (`dask_address`), where a stage that declares `runtime.device` asks for
`GPU=runtime.nproc_per_node` worker resources. Each task runs
`dvc --wait-for-lock repro --single-item <stage>` in a process group of its own, its output in
a per-stage log file, and stops that group when the flow run is cancelled. With overrides the
run is a DVC experiment: the `-S` values are applied with DVC's own code and `dvc exp save`
records the result.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, wait
from prefect.states import Cancelled, State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.proc import dvc_command, log_path, log_tail, run_logged, stop_reason
from flows.report import publish_artifacts
from vitlab.core import contract
from vitlab.core.errors import VitlabError

TRANSIENT_STAGES = ("fetch*",)  # downloads: worth a retry
DEVICE_PARAM = "runtime.device"  # a stage that declares it runs on the accelerator
LOCK = Path(".dvc/tmp/vitlab-flow.lock")  # in DVC's scratch folder: git-ignored


class StageFailed(Exception):
    """A DVC stage exited non-zero; the message names it and quotes its log's tail."""


class DagFailed(Exception):
    """The flow run could not finish every stage; the message names the failed ones."""


# --------------------------------------------------------------------------- the stage graph


@dataclass(frozen=True)
class StageNode:
    """One DVC stage as the flow schedules it."""

    name: str  # DVC's address: `train@B_16`, `sub/dvc.yaml:stage`, `data.dvc`
    upstream: tuple[str, ...]  # stages whose outputs this one depends on
    outs: tuple[str, ...]  # its outputs, relative to the repository root
    scratch: tuple[str, ...]  # the outs DVC deletes before running it (all but `persist`)
    git_paths: tuple[str, ...]  # what git versions: `cache: false` outputs, plain-file deps
    model: str | None  # the `models` key a foreach generated it for; None for shared stages
    device: bool  # declares `runtime.device`: it runs on the accelerator
    is_import: bool = False


def read_params(root: Path) -> dict[str, Any]:
    """The parameters DVC sees (`dvc.api.params_show`): the model keys and nproc_per_node."""
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        return dvc.api.params_show(repo=str(root))
    except DvcException as e:
        raise VitlabError(f"root: DVC cannot read the parameters of {root}: {e}") from e


def model_of(stage: str, model_keys: Iterable[str]) -> str | None:
    """The model a stage belongs to: `train@B_16` -> `B_16` when B_16 is a models key."""
    local = stage.rsplit(":", 1)[-1]
    key = local.split("@", 1)[1] if "@" in local else None
    return key if key in set(model_keys) else None


def read_stage_graph(root: Path, model_keys: Iterable[str] = ()) -> list[StageNode]:
    """DVC's stage graph in topological generations (every stage after those it depends on;
    each generation by name), so that a thread pool starts independent stages together."""
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    root = root.resolve()
    keys = list(model_keys)
    try:
        with Repo(str(root)) as repo:
            graph = repo.index.graph  # edge: stage -> a stage it depends on
            produced = {_relpath(o.fs_path, root) for s in graph for o in s.outs}
            name = {s: _address(s, root) for s in graph}
            generations = nx.topological_generations(graph.reverse(copy=True))
            return [
                StageNode(
                    name=name[stage],
                    upstream=tuple(sorted(name[u] for u in graph.successors(stage))),
                    outs=tuple(_relpath(o.fs_path, root) for o in stage.outs),
                    scratch=tuple(_relpath(o.fs_path, root) for o in stage.outs if not o.persist),
                    git_paths=_git_paths(stage, root, produced),
                    model=model_of(name[stage], keys),
                    device=_declares_device(stage),
                    is_import=bool(stage.is_import),
                )
                for generation in generations
                for stage in sorted(generation, key=name.get)
            ]
    except DvcException as e:
        raise VitlabError(f"root: DVC cannot read the pipeline in {root}: {e}") from e


def _declares_device(stage: Any) -> bool:
    """Whether the stage lists `runtime.device` (or all of `runtime`) among its DVC params."""
    params = [p for d in stage.deps for p in getattr(d, "params", None) or ()]
    return any(p == DEVICE_PARAM or DEVICE_PARAM.startswith(f"{p}.") for p in params)


def _address(stage: Any, root: Path) -> str:
    """DVC's address of a stage, relative to the root rather than the current directory."""
    rel = _relpath(stage.path, root)
    stage_name = getattr(stage, "name", None)
    if stage_name is None:  # a .dvc file
        return rel
    return stage_name if rel == "dvc.yaml" else f"{rel}:{stage_name}"


def _git_paths(stage: Any, root: Path, produced: set[str]) -> tuple[str, ...]:
    """The paths `dvc exp run` would stage in git for this stage: its dvc.yaml and dvc.lock (or
    .dvc file), uncached outs and source deps."""
    dvcfile = _relpath(stage.path, root)
    files = [dvcfile]
    if dvcfile.endswith((".yaml", ".yml")):
        files.append((Path(dvcfile).parent / "dvc.lock").as_posix())
    outs = [_relpath(o.fs_path, root) for o in stage.outs if not o.use_cache]
    deps = [_relpath(d.fs_path, root) for d in stage.deps if getattr(d, "fs_path", None)]
    sources = [
        d
        for d in deps
        if not Path(d).is_absolute()
        and not any(d == p or d.startswith(p + "/") or p.startswith(d + "/") for p in produced)
    ]
    return tuple(files + outs + sources)


def _relpath(path: str, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


@dataclass
class Plan:
    """Which stages this run schedules, and why the others are left alone."""

    run: list[StageNode]
    not_run: dict[str, str] = field(default_factory=dict)


def plan_stages(nodes: Sequence[StageNode], models: Sequence[str] | None, root: Path) -> Plan:
    """Keep the shared stages and those of the chosen models.

    A kept stage that depends on a left-out stage runs only if that stage's outputs exist (so
    `summarize` with one model reuses the other models' earlier results); otherwise it is left
    out too, with the reason recorded, instead of failing on a missing dependency.
    """
    chosen = None if models is None else set(models)
    outs = {n.name: n.outs for n in nodes}
    plan = Plan(run=[])
    for node in nodes:
        if chosen is not None and node.model is not None and node.model not in chosen:
            plan.not_run[node.name] = f"model {node.model} not selected"
            continue
        missing = [
            u
            for u in node.upstream
            if u in plan.not_run and not all((root / o).exists() for o in outs[u])
        ]
        if missing:
            plan.not_run[node.name] = (
                f"needs the outputs of {', '.join(missing)}, which is not selected and has none "
                "yet; run it once with every model"
            )
            continue
        plan.run.append(node)
    return plan


# --------------------------------------------------------------------------- one writer


@contextlib.contextmanager
def workspace_lock(root: Path, holder: str) -> Iterator[None]:
    """Hold vitlab's own lock on the checkout for a whole run (one writer per workspace).

    A second run on the same checkout refuses at once, naming the holder, instead of racing the
    first over params.yaml and dvc.lock. The kernel drops the lock when its process dies.
    """
    path = root / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise VitlabError(
                f"root: {root} is busy with another flow run ({f.read().strip() or 'unknown'}); "
                "wait for it to end or cancel it"
            ) from None
        f.truncate(0)
        f.write(f"pid {os.getpid()}, {holder}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- the stage task


def is_stale(root: Path, stage: str) -> bool:
    """Whether DVC will bring `stage` up to date: its own status of that one stage."""
    from dvc.repo import Repo

    with Repo(str(root), _wait_for_lock=True) as repo, repo.lock:  # as `dvc --wait-for-lock`
        found = next(s for s in repo.index.stages if _address(s, root) == stage)
        return bool(found.status(check_updates=False))


def worker_name() -> str:
    """Where a stage ran: the Dask worker's name, or this host under the thread pool."""
    dist = sys.modules.get("distributed")  # imported in every Dask worker
    if dist is not None:
        with contextlib.suppress(ValueError):
            return str(dist.get_worker().name)
    return socket.gethostname()


@task(name="dvc-stage", cache_policy=NO_CACHE, persist_result=False)
def run_stage(root: str, node: StageNode) -> dict[str, Any] | State:
    """Run one DVC stage via `dvc repro --single-item`; DVC decides whether it is up to date.

    Nothing starts once a stage of this run failed or the run is cancelled. A cancelled run
    stops the stage's process group and deletes what the stage had begun to write.
    """
    if (why := stop_reason(failures=True)) is not None:
        return Cancelled(name="NotRun", message=f"not started: {why}")
    repo = Path(root)
    stale = is_stale(repo, node.name)
    started = time.monotonic()
    log = log_path(repo, node.name)
    cmd = dvc_command("--wait-for-lock", "repro", "--single-item", node.name)
    code, stopped = run_logged(cmd, repo, log, stop_reason)
    seconds = round(time.monotonic() - started, 2)
    if stopped is not None:
        for rel in node.scratch if stale else ():
            path = repo / rel
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        message = f"stopped stage '{node.name}' after {seconds:.0f} s: {stopped}"
        get_run_logger().warning("%s; its processes are gone, its partial outputs removed", message)
        return Cancelled(name="Stopped", message=message)
    if code != 0:
        raise StageFailed(f"stage '{node.name}' failed (log: {log}):\n{log_tail(log)}")
    out = {"stage": node.name, "status": "ran" if stale else "skipped", "seconds": seconds}
    out["worker"] = worker_name()
    get_run_logger().info("stage %s: %s (%.1f s on %s)", *out.values())
    return out


def run_stages(
    runner: TaskRunner,
    root: str,
    nodes: list[StageNode],
    devices_per_stage: int,
    retries: int,
    retry_delay_seconds: float,
    retry_stages: list[str],
) -> dict[str, dict[str, Any]]:
    """Submit every stage to `runner`, upstream first, with `wait_for` its upstream stages;
    the runner decides what runs when. Returns each stage's outcome.

    Why a task runner of our own rather than the flow's: it is chosen per run (`dask_address`),
    and the tasks stay in this flow run, so `prefect deployment run --watch`, which follows one
    flow run's logs, shows every stage's output (a subflow's tasks would log elsewhere).
    """
    futures: dict[str, PrefectFuture] = {}
    with runner:
        for node in nodes:
            transient = node.is_import or any(fnmatch.fnmatch(node.name, p) for p in retry_stages)
            stage = run_stage.with_options(
                task_run_name=node.name,
                retries=retries if transient else 0,
                retry_delay_seconds=retry_delay_seconds,
            )
            upstream = [futures[u] for u in node.upstream if u in futures]
            with _resources(node, devices_per_stage):
                futures[node.name] = runner.submit(
                    stage, {"root": root, "node": node}, wait_for=upstream
                )
        wait(list(futures.values()))
        return {name: outcome(name, fut) for name, fut in futures.items()}


def _resources(node: StageNode, devices: int) -> contextlib.AbstractContextManager:
    """A device stage asks Dask for `GPU=devices` of a worker's resources (the thread pool
    ignores the annotation)."""
    if not node.device:
        return contextlib.nullcontext()
    import dask

    return dask.annotate(resources={"GPU": devices})


def outcome(stage: str, future: PrefectFuture) -> dict[str, Any]:
    """A stage's row of the run: its task's result, or its state in words."""
    state = future.state
    if state.is_completed():
        return future.result()
    row = {"stage": stage, "status": "not run", "seconds": None, "worker": None}
    if state.name == "Stopped":
        row["status"] = "stopped"
    elif state.is_failed() or state.is_crashed():
        return {**row, "status": "failed", "message": str(future.result(raise_on_failure=False))}
    return {**row, "message": state.message}


def task_runner(max_parallel: int, dask_address: str | None) -> TaskRunner:
    """Prefect's thread pool (`max_parallel` stages at once), or the Dask cluster at
    `dask_address`, whose workers' threads and GPU resources decide instead."""
    if dask_address is None:
        return ThreadPoolTaskRunner(max_workers=max_parallel)
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=dask_address)


# --------------------------------------------------------------------------- experiments


def apply_param_overrides(root: Path, overrides: list[str]) -> dict:
    """Apply `-S` overrides to the params files with DVC's own code, as `dvc exp run -S` does."""
    from dvc.exceptions import DvcException
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    by_file = to_path_overrides(overrides)
    for path, items in by_file.items():
        target = root / path
        if not target.is_file():
            raise VitlabError(f"overrides: {path} does not exist in {root}; check {items}")
        try:
            apply_overrides(target, items)
        except DvcException as e:
            cause = f" ({e.__cause__})" if e.__cause__ else ""
            raise VitlabError(
                f"overrides: {items} cannot be applied to {path}{cause}; use DVC's -S syntax, "
                "e.g. train.lr=0.003"
            ) from e
    return by_file


@task(name="set-params", cache_policy=NO_CACHE, persist_result=False)
def set_params(root: str, overrides: list[str]) -> dict[str, list[str]]:
    """Write the overrides into the params files before any stage runs."""
    by_file = apply_param_overrides(Path(root), overrides)
    for path, items in by_file.items():
        get_run_logger().info("%s: %s", path, " ".join(items))
    return by_file


@task(name="save-experiment", cache_policy=NO_CACHE, persist_result=False)
def save_experiment(root: str, name: str, include: list[str]) -> str:
    """Record the workspace as DVC experiment `name` (`dvc exp save`)."""
    args = ["exp", "save", "--name", name]
    for path in include:
        args += ["--include-untracked", path]
    log = log_path(Path(root), "exp-save")
    code, _ = run_logged(dvc_command(*args), Path(root), log, lambda: None)
    if code != 0:
        raise StageFailed(f"dvc exp save failed (log: {log}):\n{log_tail(log)}")
    get_run_logger().info("experiment saved as %s; compare with `dvc exp show`", name)
    return name


def check_root(root: str) -> Path:
    """The repository root as an absolute path, or a clear error."""
    path = Path(root).expanduser().resolve()
    if not (path / ".dvc").is_dir():
        raise VitlabError(
            f"root: {path} is not a DVC repository (no .dvc folder); pass the repository root"
        )
    return path


def check_models(models: Sequence[str] | None, known: Sequence[str]) -> list[str] | None:
    """The chosen models, validated against the `models` mapping; None means all of them."""
    if models is None:
        return None
    if not models:
        raise VitlabError("models: empty list; leave it out to run every model")
    unknown = [m for m in models if m not in known]
    if unknown:
        raise VitlabError(
            f"models: {', '.join(unknown)} not in params.yaml models; known: "
            f"{', '.join(known) or '(none)'}"
        )
    return list(models)


def check_experiment(root: Path, names: Sequence[str] = (), param: str = "experiment_name") -> None:
    """An experiment needs a git commit to hang from and names DVC has not used yet."""
    head = subprocess.run(
        ["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True, text=True
    )
    if head.returncode != 0:
        raise VitlabError(
            f"root: {root} has no git commit, and a DVC experiment needs one; "
            "run `git init && git add -A && git commit -m init` first"
        )
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or ".." in name:
            raise VitlabError(
                f"{param}: {name!r} is not a valid experiment name; use letters, digits, . _ -"
            )
    if names:
        # DVC keeps experiment `n` of baseline commit `abcdef...` at refs/exps/ab/cdef.../n
        sha = head.stdout.strip()
        refs = subprocess.run(
            ["git", "for-each-ref", "--format=%(refname)", f"refs/exps/{sha[:2]}/{sha[2:]}/"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.split()
        taken = [n for n in names if any(r.rsplit("/", 1)[-1] == n for r in refs)]
        if taken:
            raise VitlabError(
                f"{param}: experiment {', '.join(taken)} already exists; pick another name or "
                f"`dvc exp remove {' '.join(taken)}`"
            )


def paths_to_include(root: Path, nodes: Iterable[StageNode]) -> list[str]:
    """Files the experiment commit must hold, as `dvc exp run` stages them (git-ignored: no)."""
    nodes = list(nodes)
    ignores = {(Path(o).parent / ".gitignore").as_posix() for n in nodes for o in n.outs}
    wanted = {p for n in nodes for p in n.git_paths} | ignores  # DVC writes those .gitignores
    paths = sorted(p for p in wanted if (root / p).exists())
    if not paths:
        return []
    ignored = subprocess.run(
        ["git", "check-ignore", "--stdin"],
        cwd=root,
        input="\n".join(paths),
        capture_output=True,
        text=True,
    ).stdout.split()
    return [p for p in paths if p not in set(ignored)]


# --------------------------------------------------------------------------- the flow


@flow(name="experiment-dag", log_prints=True)
def experiment_dag(
    root: str = ".",
    models: list[str] | None = None,
    overrides: list[str] | None = None,
    experiment_name: str | None = None,
    max_parallel: int = 1,
    dask_address: str | None = None,
    retries: int = 2,
    retry_delay_seconds: float = 10.0,
    retry_stages: list[str] | None = None,
) -> dict[str, Any] | State:
    """Run the DVC pipeline at `root`, one Prefect task per stage, DVC deciding what is stale.

    models: a subset of the `models` mapping (default: all). overrides: `-S` strings such as
    `train.lr=0.003`; with overrides (or an experiment_name) the run is saved as a DVC
    experiment. max_parallel: stages at once on Prefect's thread pool. dask_address: run the
    stages on that Dask cluster instead (`tcp://host:8786`); stages that declare
    runtime.device need workers with `GPU` resources. retries: extra attempts for stages
    matching retry_stages (default `fetch*`) and imports.
    """
    from prefect.runtime import flow_run

    logger = get_run_logger()
    root_path = check_root(root)
    if max_parallel < 1:
        raise VitlabError(f"max_parallel: {max_parallel} is below 1; use 1 for one at a time")
    if retries < 0:
        raise VitlabError(f"retries: {retries} is negative; use 0 for no retries")
    overrides = list(overrides or [])
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise VitlabError(f"overrides: {bad} lack '='; write them as DVC -S values: train.lr=0.003")
    is_experiment = bool(overrides) or bool(experiment_name)
    name = experiment_name or datetime.now().strftime("dag-%Y%m%d-%H%M%S")

    with workspace_lock(root_path, f"experiment-dag flow run '{flow_run.name}'"):
        if is_experiment:
            check_experiment(root_path, [name])
        params = read_params(root_path)
        known = [str(k) for k in params.get("models") or {}]
        chosen = check_models(models, known)
        if overrides:
            set_params(str(root_path), overrides)
        nodes = read_stage_graph(root_path, known)
        plan = plan_stages(nodes, chosen, root_path)
        runner = task_runner(max_parallel, dask_address)
        logger.info(
            "%d stages in DVC's graph; running %d on %s%s",
            len(nodes),
            len(plan.run),
            dask_address or f"Prefect's thread pool ({max_parallel} at once)",
            f"; left out: {', '.join(plan.not_run)}" if plan.not_run else "",
        )
        done = run_stages(
            runner,
            str(root_path),
            plan.run,
            int((params.get("runtime") or {}).get("nproc_per_node") or 1),
            retries,
            retry_delay_seconds,
            list(TRANSIENT_STAGES if retry_stages is None else retry_stages),
        )
        left_out = {"status": "left out", "seconds": None, "worker": None}
        stages = [done.get(n.name) or {"stage": n.name, **left_out} for n in nodes]
        by_status: dict[str, list[str]] = {}
        for s in stages:
            by_status.setdefault(s["status"], []).append(s["stage"])
        experiment = None
        if is_experiment and set(by_status) <= {"ran", "skipped", "left out"}:
            include = paths_to_include(root_path, plan.run)
            experiment = save_experiment(str(root_path), name, include)
        publish_artifacts(root_path, stages, experiment, overrides)

    not_run = ", ".join(by_status.get("not run", []))
    if "stopped" in by_status:
        names = ", ".join(f"'{s}'" for s in by_status["stopped"])
        return Cancelled(message=f"cancelled: stopped stage {names}; not run: {not_run or '-'}")
    if "failed" in by_status:
        parts = [s["message"] for s in stages if s["status"] == "failed"]
        if not_run:
            parts.append(f"not run: {not_run}")
        if is_experiment:
            parts.append("no experiment saved; params keep the overrides (as with `dvc exp run`)")
        raise DagFailed("\n".join(parts))
    metrics = root_path / contract.METRICS_CSV
    return {
        "root": str(root_path),
        "stages": {s["stage"]: s["status"] for s in stages},
        "workers": {s["stage"]: s["worker"] for s in stages},
        "experiment": experiment,
        "metrics_csv": str(metrics) if metrics.is_file() else None,
    }
