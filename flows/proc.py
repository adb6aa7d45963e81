"""Subprocesses of a flow run: a session of their own, output in a log file, stopped with the run.

Why not pipes and reader threads: a child writing into a file never blocks on a full pipe, the
file is the full log for later, and a polling loop in the task's own thread forwards its new
lines to Prefect, where the run logger has its context. Why a session: the whole tree (DVC, the
stage, torchrun, loader workers) is stopped as one process group, and a signal meant for the
flow's own process (the runner's, on cancellation) does not reach it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prefect import get_run_logger

POLL_S = 1.0  # how often a running command forwards its log and looks for a cancellation
GRACE_S = 5.0  # between SIGINT, SIGTERM and SIGKILL when a command is stopped
TAIL_LINES = 15
LOGS = Path(".dvc/tmp/vitlab-logs")  # in DVC's scratch folder: git-ignored, not in experiments


def dvc_command(*args: str) -> list[str]:
    """`dvc ...` through this interpreter, so the flow needs no activated virtualenv."""
    return [sys.executable, "-m", "dvc", *args]


def command_env() -> dict[str, str]:
    """The environment for DVC and stage commands: unbuffered, no analytics, this venv first."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    bindir = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[0] != bindir:
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def log_line(logger: Any, line: str) -> None:
    """Forward one output line at the level DVC gave it."""
    text = line.rstrip()
    if not text:
        return
    if text.startswith("ERROR"):
        logger.error(text)
    elif text.startswith("WARNING"):
        logger.warning(text)
    else:
        logger.info(text)


def run_logged(
    cmd: Sequence[str], cwd: Path, log: Path, stop: Callable[[], str | None]
) -> tuple[int, str | None]:
    """Run `cmd` in a session of its own with its output in `log`; (exit code, why stopped).

    Every POLL_S its new lines go to the run logger and `stop()` is asked whether to stop it;
    when `stop()` gives a reason, the whole group is stopped and that reason returned.
    """
    logger = get_run_logger()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=command_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
    reason = None
    rest = b""
    with open(log, "rb") as src:
        try:
            while proc.returncode is None:
                try:
                    proc.wait(timeout=POLL_S)
                except subprocess.TimeoutExpired:
                    if (reason := stop()) is not None:
                        stop_group(proc)
                *lines, rest = (rest + src.read()).split(b"\n")
                for line in lines:
                    log_line(logger, line.decode(errors="replace"))
        except BaseException:
            stop_group(proc)
            raise
    log_line(logger, rest.decode(errors="replace"))
    return proc.returncode, reason


def _default_sigint() -> None:
    """In the child: Ctrl-C's default action, so that stop_group's SIGINT lets DVC release its
    locks even when the flow was started with SIGINT ignored (`cmd &` in a script, nohup)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop `proc`'s process group: SIGINT first (DVC and Python stages clean up as on Ctrl-C,
    DVC releasing its locks), then SIGTERM, then SIGKILL, GRACE_S apart."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + GRACE_S
        while _group_alive(proc) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _group_alive(proc):
            return


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader, so that only live members keep the group
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def log_tail(log: Path, lines: int = TAIL_LINES) -> str:
    """The last non-blank lines of a stage's log (DVC's error line names the exit status)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    return "\n".join([x for x in text.splitlines() if x.strip()][-lines:])


def log_path(root: Path, stage: str) -> Path:
    """<root>/.dvc/tmp/vitlab-logs/<stage>.log: the stage's full output of the latest run."""
    return root / LOGS / (re.sub(r"[^\w@.-]", "_", stage) + ".log")


def stop_reason(failures: bool = False) -> str | None:
    """Why the running task's command must stop or not start: its flow run is cancelled or
    cancelling, or (with `failures`) another stage of the run has failed. Read from the
    Prefect API, so it holds wherever the task runs (a thread here, a Dask worker elsewhere)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas import filters as f
    from prefect.client.schemas.objects import StateType
    from prefect.context import TaskRunContext

    flow_run_id = TaskRunContext.get().task_run.flow_run_id
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
            if state and state.type in (StateType.CANCELLING, StateType.CANCELLED):
                return "the flow run was cancelled"
            if failures:
                bad = f.TaskRunFilterStateType(any_=[StateType.FAILED, StateType.CRASHED])
                failed = client.read_task_runs(
                    flow_run_filter=f.FlowRunFilter(id=f.FlowRunFilterId(any_=[flow_run_id])),
                    task_run_filter=f.TaskRunFilter(state=f.TaskRunFilterState(type=bad)),
                )
                if failed:
                    return f"stage '{failed[0].name}' failed"
    except Exception as e:  # an API hiccup must not stop, or hold back, a stage
        get_run_logger().warning("cannot read the run's state from the Prefect API: %s", e)
    return None
