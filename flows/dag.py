"""Flow `experiment-dag`: the DVC pipeline as Prefect tasks, one task per DVC stage.

Why this shape: users trigger and watch the study through Prefect (per-stage state and logs,
retries, artifacts) while DVC stays the only judge of what is up to date. The stage graph comes
from DVC itself (`Repo.index.graph`, the graph `dvc repro` walks: foreach/matrix expanded,
every dvc.yaml and .dvc file included, edges from output->dependency paths), never from a
second list here. Each task runs `dvc --wait-for-lock repro --single-item <stage>`: DVC checks
that one stage and runs or skips it, and the lock flag lets stages of different models run side
by side (DVC frees its repo lock while a stage's command runs). With overrides the run is a DVC
experiment: the `-S` values are applied with DVC's own override code, the stages run as tasks,
and `dvc exp save` records the result so it shows in `dvc exp show`.
"""

import fnmatch
import math
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed

from flows.report import publish_artifacts
from vitlab.errors import VitlabError

METRICS_CSV = "reports/metrics.csv"
FIGURE_DIRS = ("reports/figures", "reports/captions")  # contract: figures, captioner outputs
PARAMS_FILE = "params.yaml"
MODELS_KEY = "models"
TRANSIENT_STAGES = ("fetch*",)  # downloads: worth a retry
STDERR_TAIL_LINES = 15
PROGRESS_EVERY_S = 5.0  # carriage-return progress lines are logged at most this often

_RAN = re.compile(r"^Running stage '(?P<stage>.+)':")
_SKIPPED = re.compile(r"^(?:Stage )?'(?P<stage>.+)' didn't change, skipping")
_RESTORED = re.compile(r"^Stage '(?P<stage>.+)' is cached - skipping run")
_EXITED = re.compile(r"exited with (-?\d+)")
_SAVED = re.compile(r"^Experiment has been saved as: (\S+)")
_EOL = re.compile(rb"\r\n|\n|\r")


class StageFailed(Exception):
    """A DVC stage exited non-zero; the message names it and quotes its stderr tail."""


class DagFailed(Exception):
    """The flow run could not finish every stage; the message names the failed ones."""


# --------------------------------------------------------------------------- the stage graph


@dataclass(frozen=True)
class StageNode:
    """One DVC stage as the flow schedules it."""

    name: str  # DVC's address: `train@B_16`, `sub/dvc.yaml:stage`, `data.dvc`
    upstream: tuple[str, ...]  # stages whose outputs this one depends on
    outs: tuple[str, ...]  # its outputs, relative to the repository root
    git_paths: tuple[str, ...]  # what git versions: `cache: false` outputs, plain-file deps
    model: str | None  # the `models` key a foreach generated it for; None for shared stages
    is_import: bool = False


def read_params(root: str | os.PathLike[str], params_file: str = PARAMS_FILE) -> dict[str, Any]:
    """params.yaml as a dict ({} when absent): the flow only reads model keys and nproc."""
    path = Path(root) / params_file
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise VitlabError(f"{path}: not valid YAML ({e}); fix the file and rerun") from e
    return data if isinstance(data, dict) else {}


def read_model_keys(root: str | os.PathLike[str], params_file: str = PARAMS_FILE) -> list[str]:
    """Keys of the `models` mapping in params.yaml: the foreach keys that split stages by model."""
    models = read_params(root, params_file).get(MODELS_KEY)
    return [str(k) for k in models] if isinstance(models, dict) else []


def procs_per_stage(root: str | os.PathLike[str]) -> int:
    """`runtime.nproc_per_node`: how many devices one training stage takes (torchrun/DDP)."""
    runtime = read_params(root).get("runtime")
    n = runtime.get("nproc_per_node", 1) if isinstance(runtime, dict) else 1
    return n if isinstance(n, int) and n > 0 else 1


def model_of(stage: str, model_keys: Iterable[str]) -> str | None:
    """The model a stage belongs to: `train@B_16` -> `B_16` when B_16 is a models key."""
    local = stage.rsplit(":", 1)[-1]
    if "@" not in local:
        return None
    key = local.split("@", 1)[1]
    return key if key in set(model_keys) else None


def read_stage_graph(
    root: str | os.PathLike[str], model_keys: Iterable[str] = ()
) -> list[StageNode]:
    """DVC's stage graph, upstream stages first (ties broken by name, so the order is stable)."""
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    root_path = Path(root).resolve()
    keys = list(model_keys)
    try:
        with Repo(str(root_path)) as repo:
            graph = repo.index.graph  # edge: stage -> a stage it depends on
            produced = {_relpath(o.fs_path, root_path) for s in graph for o in s.outs}
            name = {s: _address(s, root_path) for s in graph}
            order = nx.lexicographical_topological_sort(graph.reverse(copy=True), key=name.get)
            nodes = []
            for stage in order:
                nodes.append(
                    StageNode(
                        name=name[stage],
                        upstream=tuple(sorted(name[u] for u in graph.successors(stage))),
                        outs=tuple(_relpath(o.fs_path, root_path) for o in stage.outs),
                        git_paths=_git_paths(stage, root_path, produced),
                        model=model_of(name[stage], keys),
                        is_import=bool(stage.is_import),
                    )
                )
    except DvcException as e:
        raise VitlabError(f"root: DVC cannot read the pipeline in {root_path}: {e}") from e
    return nodes


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


def plan_stages(
    nodes: Sequence[StageNode], models: Sequence[str] | None, root: str | os.PathLike[str]
) -> Plan:
    """Keep the shared stages and those of the chosen models.

    A kept stage that depends on a left-out stage runs only if that stage's outputs exist (so
    `summarize` with one model reuses the other models' earlier results); otherwise it is left
    out too, with the reason recorded, instead of failing on a missing dependency.
    """
    chosen = None if models is None else set(models)
    root_path = Path(root)
    plan = Plan(run=[])
    for node in nodes:
        if chosen is not None and node.model is not None and node.model not in chosen:
            plan.not_run[node.name] = f"model {node.model} not selected"
            continue
        missing = [
            u
            for u in node.upstream
            if u in plan.not_run and not all((root_path / o).exists() for o in _outs_of(nodes, u))
        ]
        if missing:
            plan.not_run[node.name] = (
                f"needs the outputs of {', '.join(missing)}, which is not selected and has none "
                "yet; run it once with every model"
            )
            continue
        plan.run.append(node)
    return plan


def _outs_of(nodes: Sequence[StageNode], name: str) -> tuple[str, ...]:
    return next((n.outs for n in nodes if n.name == name), ())


# --------------------------------------------------------------------------- hardware


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [x.strip() for x in env.split(",") if x.strip()]
        return [] if ids in ([], ["-1"]) else ids
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, _ in enumerate(x for x in out.splitlines() if x.startswith("GPU "))]


def default_parallelism(
    gpus: Sequence[str] | None = None, cpus: int | None = None, procs: int = 1
) -> int:
    """Stages at once: one per `procs` GPUs (a DDP stage takes `procs`); on CPU, one per 4*procs
    cores (a training stage uses every core it is given)."""
    gpus = visible_gpus() if gpus is None else gpus
    if gpus:
        return max(1, len(gpus) // procs)
    return max(1, (cpus or os.cpu_count() or 1) // (4 * procs))


def slot_env(slot: int, max_parallel: int, gpus: Sequence[str], cpus: int) -> dict[str, str]:
    """Environment that keeps concurrent stages off each other's GPUs and cores.

    With several slots and at least one GPU per slot, slot i gets GPUs i, i+n, ...; CPU
    threads are split between slots unless the user set OMP_NUM_THREADS. One slot: unchanged.
    """
    env: dict[str, str] = {}
    if max_parallel <= 1:
        return env
    if len(gpus) >= max_parallel:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[slot::max_parallel])
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, cpus // max_parallel))
    return env


# --------------------------------------------------------------------------- subprocesses


def dvc_command(*args: str) -> list[str]:
    """`dvc ...` through this interpreter, so the flow needs no activated virtualenv."""
    return [sys.executable, "-m", "dvc", *args]


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for DVC and stage commands: unbuffered, no analytics, this venv first."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    bindir = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[0] != bindir:
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


@dataclass
class CommandResult:
    """What a streamed command left behind."""

    returncode: int
    stdout: list[str]
    stderr_tail: list[str]


def stream_command(
    cmd: Sequence[str],
    cwd: str | os.PathLike[str],
    env: dict[str, str] | None,
    on_line: Callable[[str, str], None],
    tail_lines: int = STDERR_TAIL_LINES,
) -> CommandResult:
    """Run `cmd`, handing each stdout/stderr line to `on_line(stream, line)` as it arrives.

    Two reader threads drain the pipes (so neither can fill up and block the child); lines are
    handed over in the calling thread, where Prefect's run logger has its context. Progress bars
    that redraw with carriage returns are passed on at most every PROGRESS_EVERY_S seconds.
    """
    proc = subprocess.Popen(
        list(cmd),
        cwd=str(cwd),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: queue.Queue[tuple[str, str | None, bool]] = queue.Queue()
    readers = [
        threading.Thread(target=_read_lines, args=(proc.stdout, "stdout", lines), daemon=True),
        threading.Thread(target=_read_lines, args=(proc.stderr, "stderr", lines), daemon=True),
    ]
    for r in readers:
        r.start()
    stdout: list[str] = []
    tail: deque[str] = deque(maxlen=tail_lines)
    last_progress = {"stdout": -math.inf, "stderr": -math.inf}
    open_streams = 2
    try:
        while open_streams:
            stream, line, transient = lines.get()
            if line is None:
                open_streams -= 1
                continue
            if not line.strip():
                continue
            if transient:
                now = time.monotonic()
                if now - last_progress[stream] < PROGRESS_EVERY_S:
                    continue
                last_progress[stream] = now
            if stream == "stdout":
                stdout.append(line)
            else:
                tail.append(line)
            on_line(stream, line)
    finally:
        if proc.poll() is None and open_streams:
            proc.kill()
        returncode = proc.wait()
        for r in readers:
            r.join(timeout=5)
    return CommandResult(returncode=returncode, stdout=stdout, stderr_tail=list(tail))


def _read_lines(stream: Any, name: str, out: queue.Queue) -> None:
    buf = b""
    try:
        for chunk in iter(lambda: stream.read1(65536), b""):
            buf += chunk
            while (m := _EOL.search(buf)) is not None:
                if m.group() == b"\r" and m.end() == len(buf):
                    break  # maybe the first half of "\r\n": wait for more
                out.put((name, buf[: m.start()].decode(errors="replace"), m.group() == b"\r"))
                buf = buf[m.end() :]
        if buf:
            out.put((name, buf.rstrip(b"\r").decode(errors="replace"), False))
    finally:
        out.put((name, None, False))


def log_line(logger: Any, line: str) -> None:
    """Forward one output line at the level DVC gave it."""
    text = line.rstrip()
    if text.startswith("ERROR"):
        logger.error(text)
    elif text.startswith("WARNING"):
        logger.warning(text)
    else:
        logger.info(text)


def stage_status(line: str) -> str | None:
    """What DVC did with a stage, from its own report line; None for any other line."""
    if _RAN.match(line):
        return "ran"
    if _SKIPPED.match(line):
        return "skipped"
    if _RESTORED.match(line):
        return "restored"
    return None


def failure_message(stage: str, returncode: int, tail: Sequence[str]) -> str:
    """`stage 'x' failed (exit n)` plus the stage's last stderr lines.

    DVC itself exits 255 whatever the command did; the command's own status is in DVC's
    `exited with N` line, so that is the one reported when present.
    """
    codes = [m.group(1) for line in tail if (m := _EXITED.search(line))]
    head = f"stage '{stage}' failed (exit {codes[-1] if codes else returncode})"
    return head + (":\n" + "\n".join(tail) if tail else "")


# --------------------------------------------------------------------------- tasks


@task(name="dvc-stage", cache_policy=NO_CACHE, persist_result=False)
def run_stage(root: str, stage: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one DVC stage via `dvc repro --single-item`; DVC decides whether it is up to date."""
    logger = get_run_logger()
    status = "checked"

    def on_line(_stream: str, line: str) -> None:
        nonlocal status
        status = stage_status(line) or status
        log_line(logger, line)

    started = time.monotonic()
    cmd = dvc_command("--wait-for-lock", "repro", "--single-item", stage)
    result = stream_command(cmd, cwd=root, env=command_env(env), on_line=on_line)
    seconds = round(time.monotonic() - started, 2)
    if result.returncode != 0:
        raise StageFailed(failure_message(stage, result.returncode, result.stderr_tail))
    logger.info("stage %s: %s (%.1f s)", stage, status, seconds)
    return {"stage": stage, "status": status, "seconds": seconds}


def apply_param_overrides(root: str | os.PathLike[str], overrides: list[str]) -> dict:
    """Apply `-S` overrides to the params files with DVC's own code, as `dvc exp run -S` does."""
    from dvc.exceptions import DvcException
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    by_file = to_path_overrides(overrides)
    for path, items in by_file.items():
        target = Path(root) / path
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
    by_file = apply_param_overrides(root, overrides)
    for path, items in by_file.items():
        get_run_logger().info("%s: %s", path, " ".join(items))
    return by_file


@task(name="save-experiment", cache_policy=NO_CACHE, persist_result=False)
def save_experiment(root: str, name: str | None, include: list[str]) -> str:
    """Record the workspace as a DVC experiment (`dvc exp save`); returns its name."""
    logger = get_run_logger()
    args = ["exp", "save"]
    if name:
        args += ["--name", name]
    for path in include:
        args += ["--include-untracked", path]
    result = stream_command(
        dvc_command(*args), root, command_env(), lambda _s, line: log_line(logger, line)
    )
    if result.returncode != 0:
        raise StageFailed(failure_message("dvc exp save", result.returncode, result.stderr_tail))
    said = [m.group(1) for x in result.stdout if (m := _SAVED.match(x.strip()))]
    saved = said[-1] if said else (name or "")
    logger.info("experiment saved as %s; compare with `dvc exp show`", saved)
    return saved


# --------------------------------------------------------------------------- checks


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


# --------------------------------------------------------------------------- scheduling


@dataclass
class RunOutcome:
    """Per-stage results of one pass over the plan."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    not_started: list[str] = field(default_factory=list)


def run_plan(
    root: Path,
    plan: Plan,
    max_parallel: int,
    retries: int,
    retry_delay_seconds: float,
    retry_stages: Sequence[str],
) -> RunOutcome:
    """Submit each stage once its upstream stages completed, at most `max_parallel` at a time.

    After a failure nothing new starts; stages already running finish (like `dvc repro`, which
    stops at the first failure).
    """
    logger = get_run_logger()
    planned = {n.name for n in plan.run}
    gpus = visible_gpus() if max_parallel > 1 else []
    cpus = os.cpu_count() or 1
    pending = list(plan.run)
    futures: dict[str, PrefectFuture] = {}
    inflight: dict[PrefectFuture, tuple[StageNode, int]] = {}
    free_slots = list(range(max_parallel))
    outcome = RunOutcome()
    while pending or inflight:
        if not outcome.failures:
            for node in list(pending):
                if not free_slots:
                    break
                if any(u in planned and u not in outcome.results for u in node.upstream):
                    continue
                slot = free_slots.pop(0)
                transient = node.is_import or any(
                    fnmatch.fnmatch(node.name, p) for p in retry_stages
                )
                runner = run_stage.with_options(
                    task_run_name=node.name,
                    retries=retries if transient else 0,
                    retry_delay_seconds=retry_delay_seconds,
                )
                fut = runner.submit(
                    root=str(root),
                    stage=node.name,
                    env=slot_env(slot, max_parallel, gpus, cpus),
                    wait_for=[futures[u] for u in node.upstream if u in futures],
                )
                futures[node.name] = fut
                inflight[fut] = (node, slot)
                pending.remove(node)
        if not inflight:
            break
        done = next(as_completed(list(inflight)))
        node, slot = inflight.pop(done)
        free_slots.append(slot)
        free_slots.sort()
        value = done.result(raise_on_failure=False)
        if done.state.is_completed() and isinstance(value, dict):
            outcome.results[node.name] = value
        else:
            message = str(value) if isinstance(value, BaseException) else done.state.message
            outcome.failures[node.name] = message or f"stage '{node.name}' failed"
            logger.error("%s", outcome.failures[node.name])
    outcome.not_started = [n.name for n in pending]
    return outcome


# --------------------------------------------------------------------------- the flow


@flow(name="experiment-dag", log_prints=True)
def experiment_dag(
    root: str = ".",
    models: list[str] | None = None,
    overrides: list[str] | None = None,
    experiment_name: str | None = None,
    max_parallel: int | None = None,
    retries: int = 2,
    retry_delay_seconds: float = 10.0,
    retry_stages: list[str] | None = None,
    metrics_csv: str = METRICS_CSV,
    figure_dirs: list[str] | None = None,
) -> dict[str, Any]:
    """Run the DVC pipeline at `root`, one Prefect task per stage, DVC deciding what is stale.

    models: a subset of the `models` mapping (default: all). overrides: `-S` strings such as
    `train.lr=0.003`; with overrides (or an experiment_name) the run is saved as a DVC
    experiment. max_parallel: stages run at once (default: one per GPU, or per
    runtime.nproc_per_node GPUs; on CPU one per 4 cores).
    retries: extra attempts for stages matching retry_stages (default `fetch*`) and imports.
    metrics_csv, figure_dirs: what the summary artifacts read (default: the output contract).
    """
    logger = get_run_logger()
    root_path = check_root(root)
    known = read_model_keys(root_path)
    chosen = check_models(models, known)
    parallel = max_parallel
    if parallel is None:
        parallel = default_parallelism(procs=procs_per_stage(root_path))
    if parallel < 1:
        raise VitlabError(f"max_parallel: {parallel} is below 1; use 1 for one stage at a time")
    if retries < 0:
        raise VitlabError(f"retries: {retries} is negative; use 0 for no retries")
    overrides = list(overrides or [])
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise VitlabError(f"overrides: {bad} lack '='; write them as DVC -S values: train.lr=0.003")
    is_experiment = bool(overrides) or bool(experiment_name)
    if is_experiment:
        check_experiment(root_path, [experiment_name] if experiment_name else [])
        if overrides:
            set_params(str(root_path), overrides)

    nodes = read_stage_graph(root_path, known)
    plan = plan_stages(nodes, chosen, root_path)
    logger.info(
        "%d stages in DVC's graph; running %d with max_parallel=%d%s",
        len(nodes),
        len(plan.run),
        parallel,
        f"; left out: {', '.join(plan.not_run)}" if plan.not_run else "",
    )
    outcome = run_plan(
        root_path,
        plan,
        parallel,
        retries,
        retry_delay_seconds,
        list(retry_stages) if retry_stages is not None else list(TRANSIENT_STAGES),
    )
    stages = []
    for node in nodes:
        if node.name in outcome.results:
            stages.append(outcome.results[node.name])
        elif node.name in outcome.failures:
            stages.append({"stage": node.name, "status": "failed", "seconds": None})
        elif node.name in plan.not_run:
            stages.append({"stage": node.name, "status": "left out", "seconds": None})
        else:
            stages.append({"stage": node.name, "status": "not run", "seconds": None})

    experiment = None
    if is_experiment and not outcome.failures:
        include = paths_to_include(root_path, plan.run)
        experiment = save_experiment(str(root_path), experiment_name, include)
    dirs = list(FIGURE_DIRS) if figure_dirs is None else figure_dirs
    publish_artifacts(root_path, metrics_csv, dirs, stages, experiment, overrides)

    if outcome.failures:
        parts = list(outcome.failures.values())
        if outcome.not_started:
            parts.append("not run: " + ", ".join(outcome.not_started))
        if is_experiment:
            parts.append("no experiment saved; params keep the overrides (as with `dvc exp run`)")
        raise DagFailed("\n".join(parts))
    return {
        "root": str(root_path),
        "stages": {s["stage"]: s["status"] for s in stages},
        "experiment": experiment,
        "metrics_csv": str(metrics) if (metrics := root_path / metrics_csv).is_file() else None,
    }
