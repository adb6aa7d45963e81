"""Prefect flows over real DVC: a tiny project of cheap stages, then the micro profile.

A real Prefect server on loopback (prefect_test_harness, one per session, temporary
PREFECT_HOME), real DVC in temporary git repositories, real `python -m flows.serve` and
`prefect deployment run ... --watch` subprocesses. The tiny project has vitlab's DAG shape
(fetch -> prepare -> train@M -> evaluate@M -> summarize, a foreach over a `models` mapping)
and stages that take milliseconds, so the orchestration itself is what is tested.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from tests.conftest import MICRO, make_project
from vitlab.core.errors import VitlabError

REPO = Path(__file__).resolve().parents[1]

TINY_DVC_YAML = """\
stages:
  fetch:
    cmd: python step.py fetch
    outs:
      - data/raw.txt
  prepare:
    cmd: python step.py prepare
    deps:
      - step.py
      - data/raw.txt
    params:
      - scale
    outs:
      - data/prepared.txt
  train:
    foreach: ${models}
    do:
      cmd: python step.py train ${key}
      deps:
        - data/prepared.txt
      params:
        - models.${key}
        - runtime.device
      outs:
        - models/${key}/weights.txt
        - models/${key}/state.txt:
            persist: true
  evaluate:
    foreach: ${models}
    do:
      cmd: python step.py evaluate ${key}
      deps:
        - models/${key}/weights.txt
      params:
        - runtime.device
      outs:
        - reports/eval/${key}.json:
            cache: false
        - reports/figures/${key}:
            cache: false
  summarize:
    cmd: python step.py summarize
    deps:
      - reports/eval
    outs:
      - reports/metrics.csv:
          cache: false
    metrics:
      - reports/metrics.json:
          cache: false
"""

TINY_STEP = '''\
"""Stages of a tiny DVC project with vitlab's DAG shape; each takes milliseconds."""
import json, os, sys, time
from pathlib import Path

import yaml

P = yaml.safe_load(Path("params.yaml").read_text())
STAGE = "@".join(sys.argv[1:])


def trace(event):
    with open("trace.log", "a") as f:
        f.write(f"{event} {STAGE} {time.time_ns()}\\n")


def write(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def barrier(model):
    """Wait until every model's train stage runs at once; fail if this one runs alone."""
    Path("barrier").mkdir(exist_ok=True)
    Path("barrier", model).touch()
    deadline = time.monotonic() + 90
    while not all(Path("barrier", m).exists() for m in P["models"]):
        if time.monotonic() > deadline:
            sys.exit(f"barrier: {model} ran alone; the other models never started")
        time.sleep(0.05)


trace("start")
print(f"hello from {STAGE}")
if P.get("fail") == STAGE:
    print(f"boom: {STAGE} was told to fail", file=sys.stderr)
    sys.exit(3)
if P.get("fail_once") == STAGE and not Path(".failed_once").exists():
    Path(".failed_once").touch()
    sys.exit(f"flaky: {STAGE} fails its first attempt")
step, model = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
if P.get("sleep") == STAGE:  # a long stage: half its output written, then a wait
    write(f"models/{model}/weights.txt", "partial")
    Path("sleeping.pgid").write_text(str(os.getpgid(0)))
    time.sleep(600)
if step == "fetch":
    write("data/raw.txt", "raw\\n")
elif step == "prepare":
    write("data/prepared.txt", Path("data/raw.txt").read_text() + f"scale={P['scale']}\\n")
elif step == "train":
    if P.get("barrier"):
        barrier(model)
    time.sleep(P.get("pause", 0))
    write(f"models/{model}/weights.txt", f"{P['models'][model]['n'] * P['scale']}\\n")
    write(f"models/{model}/state.txt", "resume state\\n")
elif step == "evaluate":
    w = float(Path(f"models/{model}/weights.txt").read_text())
    base = w / (10.0 + w)
    accs = {"epoch_002": base - 0.02, "best_epoch": base,
            "uniform_soup": base + 0.01, "greedy_soup": base + 0.02}
    report = {v: {"val_acc": a, "test_acc": a - 0.05} for v, a in accs.items()}
    write(f"reports/eval/{model}.json", json.dumps(report))
    write(f"reports/figures/{model}/attention_rollout_best_epoch.png", "png")
    write(f"reports/figures/{model}/positions/positions_best_epoch.png", "png")
elif step == "summarize":
    rows = ["model,variant,epochs,val_acc,test_acc,val_loss,test_loss,extra_col,bleu_4"]
    headline = {}
    for f in sorted(Path("reports/eval").glob("*.json")):
        rep = json.loads(f.read_text())
        for v, m in rep.items():
            rows.append(f"{f.stem},{v},2;3,{m['val_acc']},{m['test_acc']},1.0,1.1,x,")
        headline[f.stem] = {v: rep[v] for v in ("best_epoch", "uniform_soup", "greedy_soup")}
    rows.append("captioner,greedy,,,,,,,0.5")  # a row of another kind: no accuracies
    write("reports/metrics.csv", "\\n".join(rows) + "\\n")
    write("reports/metrics.json", json.dumps(headline))
trace("end")
'''

TINY_STAGES = ["fetch", "prepare", "train@a", "train@b", "evaluate@a", "evaluate@b", "summarize"]


def tiny_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def sh(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=tiny_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_tiny(dest: Path, **params: Any) -> Path:
    """A committed git + DVC repository with the tiny project; `params` update params.yaml."""
    dest.mkdir(parents=True, exist_ok=True)
    p = {"scale": 1, "fail": "", "fail_once": "", "sleep": "", "barrier": False}
    p.update(params)
    p["models"] = {"a": {"n": 1}, "b": {"n": 2}}
    p["runtime"] = {"device": "cpu", "nproc_per_node": 1}
    (dest / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (dest / "dvc.yaml").write_text(TINY_DVC_YAML)
    (dest / "step.py").write_text(TINY_STEP)
    (dest / ".gitignore").write_text("trace.log\nbarrier/\n.failed_once\nsleeping.pgid\n")
    sh(["git", "init", "-q"], dest)
    sh([sys.executable, "-m", "dvc", "init", "-q"], dest)
    sh(["git", "add", "-A"], dest)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dest)
    return dest


def _mentions(cmdline: Path, text: str) -> bool:
    try:
        return text in cmdline.read_bytes().decode(errors="replace")
    except OSError:  # the process ended meanwhile
        return False


def trace(root: Path) -> dict[tuple[str, str], int]:
    """(event, stage) -> ns timestamp of the last such event in the tiny project's trace."""
    out = {}
    for line in (root / "trace.log").read_text().splitlines():
        event, stage, ns = line.split()
        out[(event, stage)] = int(ns)
    return out


# --------------------------------------------------------------------------- Prefect


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server on 127.0.0.1 for the whole session; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        # the server streams the runs' logs to `prefect deployment run --watch`
        "PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED": "true",
        "PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    try:
        with (
            temporary_settings(updates={PREFECT_HOME: home}),
            prefect_test_harness(server_startup_timeout=60),
        ):
            yield PREFECT_API_URL.value()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def artifacts(flow_run_id: UUID) -> dict[str, Any]:
    """The artifacts of one flow run, by key (tables decoded)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    out: dict[str, Any] = {}
    for a in found:
        data = a.data
        if a.type == "table" and isinstance(data, str):
            data = json.loads(data)
        out[a.key] = data
    return out


def task_runs(flow_run_id: UUID) -> dict[str, Any]:
    """The task runs of one flow run, by task run name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    ids = FlowRunFilterId(any_=[flow_run_id])
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=ids))
    return {r.name: r for r in runs}


def run_logs(flow_run_id: UUID) -> str:
    """Every log line of a flow run and its tasks, as the Prefect API has it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    ids = LogFilterFlowRunId(any_=[flow_run_id])
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=ids))
    return "\n".join(r.message for r in logs)


def flow_run(flow_run_id: UUID) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def exp_show(root: Path) -> dict[str, dict[str, Any]]:
    """`dvc exp show --json` as {experiment name: data}."""
    shown = json.loads(sh([sys.executable, "-m", "dvc", "exp", "show", "--json"], root).stdout)
    return {
        rev["name"]: rev["data"]
        for commit in shown
        for exp in commit.get("experiments") or []
        for rev in exp["revs"]
    }


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


# --------------------------------------------------------------------------- the graph


def test_stage_graph_is_dvcs_own_with_foreach_expanded(tmp_path):
    from flows.dag import plan_stages, read_params, read_stage_graph

    root = make_tiny(tmp_path / "p")
    keys = list(read_params(root)["models"])
    nodes = read_stage_graph(root, keys)
    assert [n.name for n in nodes] == TINY_STAGES  # by generation: both trains, then evals
    by = {n.name: n for n in nodes}
    assert by["train@b"].upstream == ("prepare",) and by["train@b"].model == "b"
    assert by["summarize"].upstream == ("evaluate@a", "evaluate@b")
    assert by["summarize"].model is None
    assert set(by["evaluate@a"].outs) == {"reports/eval/a.json", "reports/figures/a"}
    # what declares runtime.device asks for a GPU; a persist out survives a stopped run
    assert [n.name for n in nodes if n.device] == TINY_STAGES[2:6]
    assert by["train@a"].scratch == ("models/a/weights.txt",)

    # a stage added to dvc.yaml is orchestrated with no change to the flows
    extra = {"cmd": "python step.py report", "deps": ["reports/metrics.csv"], "outs": ["r.txt"]}
    spec = yaml.safe_load(TINY_DVC_YAML)
    spec["stages"]["report"] = extra
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    nodes = read_stage_graph(root, ["a", "b"])
    assert [n.name for n in nodes][-1] == "report"
    assert {n.name: n.upstream for n in nodes}["report"] == ("summarize",)

    # one model: the other's stages are left out, and summarize too while b has no outputs
    plan = plan_stages(nodes, ["a"], root)
    assert [n.name for n in plan.run] == ["fetch", "prepare", "train@a", "evaluate@a"]
    assert "model b not selected" in plan.not_run["train@b"]
    assert "evaluate@b" in plan.not_run["summarize"]
    for out in ("reports/eval/b.json", "reports/figures/b/x.png"):
        (root / out).parent.mkdir(parents=True, exist_ok=True)
        (root / out).write_text("{}")
    plan = plan_stages(nodes, ["a"], root)
    assert [n.name for n in plan.run][-2:] == ["summarize", "report"]


def test_bad_inputs_name_the_parameter(tmp_path):
    from flows.dag import apply_param_overrides, check_experiment, check_models, check_root

    with pytest.raises(VitlabError, match="models: c not in params.yaml models; known: a, b"):
        check_models(["c"], ["a", "b"])
    with pytest.raises(VitlabError, match="models: empty list"):
        check_models([], ["a", "b"])
    with pytest.raises(VitlabError, match="is not a DVC repository"):
        check_root(str(tmp_path))
    sh(["git", "init", "-q"], tmp_path)
    with pytest.raises(VitlabError, match="has no git commit, and a DVC experiment needs one"):
        check_experiment(tmp_path)
    root = make_tiny(tmp_path / "p")
    before = (root / "params.yaml").read_text()
    with pytest.raises(VitlabError, match=r"overrides: \['nosuch.key=1'\] cannot be applied"):
        apply_param_overrides(root, ["nosuch.key=1"])
    assert (root / "params.yaml").read_text() == before
    with pytest.raises(VitlabError, match="experiment_name: 'a/b' is not a valid experiment"):
        check_experiment(root, ["a/b"])


# --------------------------------------------------------------------------- the flow


def test_flow_runs_every_stage_in_dag_order_concurrently_then_skips(prefect_api, tmp_path):
    from flows.dag import experiment_dag, read_stage_graph

    # barrier: train@a and train@b each wait for the other, so they must run at once
    root = make_tiny(tmp_path / "p", barrier=True)
    state = experiment_dag(root=str(root), max_parallel=2, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["stages"] == {s: "ran" for s in TINY_STAGES}
    t = trace(root)
    for n in read_stage_graph(root, ["a", "b"]):
        for up in n.upstream:
            assert t[("end", up)] < t[("start", n.name)], (up, n.name)
    assert t[("start", "train@a")] < t[("end", "train@b")]  # overlapped
    assert t[("start", "train@b")] < t[("end", "train@a")]
    for out in ("data/prepared.txt", "models/b/weights.txt", "reports/metrics.csv"):
        assert (root / out).is_file()

    run_id = state.state_details.flow_run_id
    arts = artifacts(run_id)
    with open(root / "reports/metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    table = arts["experiment-dag-metrics"]
    assert len(table) == len(rows) == 9
    assert {(r["model"], r["variant"]) for r in table} == {(r["model"], r["variant"]) for r in rows}
    greedy_a = next(r for r in table if r["model"] == "a" and r["variant"] == "greedy_soup")
    assert greedy_a["val_acc"] == pytest.approx(1 / 11 + 0.02)
    assert greedy_a["extra_col"] == "x"  # extra columns ride along
    assert greedy_a["epochs"] == "2;3"  # text stays text
    md = arts["experiment-dag-summary"]
    assert "| a | greedy_soup | 2;3 | 0.1109 | 0.0609 |" in md  # best variant per model
    assert "| b | uniform_soup | 0.1767 | +0.0100 | 0.1267 | +0.0100 |" in md  # soup vs best
    assert "`reports/figures/a/` (2 PNG): positions/ (1), attention_rollout_best_epoch.png" in md
    assert "| captioner | greedy | 0.5000 |" in md  # rows without accuracies, their scores
    runs = task_runs(run_id)
    assert set(TINY_STAGES) <= set(runs)
    assert all(runs[s].state.is_completed() for s in TINY_STAGES)
    # each stage's output: in its own log file, and line by line in the run's Prefect log
    log = root / ".dvc/tmp/vitlab-logs/train@a.log"
    assert "hello from train@a" in log.read_text()
    logs = run_logs(run_id)
    assert "hello from train@b" in logs and "Running stage 'evaluate@a'" in logs

    again = experiment_dag(root=str(root), max_parallel=2, return_state=True)
    assert again.is_completed(), again.message
    assert again.result()["stages"] == {s: "skipped" for s in TINY_STAGES}
    stages = artifacts(again.state_details.flow_run_id)["experiment-dag-stages"]
    assert {r["stage"]: r["status"] for r in stages} == {s: "skipped" for s in TINY_STAGES}
    assert {r["worker"] for r in stages} == {socket.gethostname()}  # the thread pool, here


def test_failing_stage_fails_the_run_with_its_name_and_log(prefect_api, tmp_path):
    from flows.dag import experiment_dag

    root = make_tiny(tmp_path / "p", fail="train@b")
    state = experiment_dag(root=str(root), max_parallel=1, return_state=True)
    assert state.is_failed()
    stored = flow_run(state.state_details.flow_run_id).state
    assert stored.is_failed()
    for text in (
        "stage 'train@b' failed (log: ",
        "boom: train@b was told to fail",
        "exited with 3",  # DVC's own line, from the log's tail
    ):
        assert text in state.message and text in stored.message
    # train@a ran before train@b failed; nothing started afterwards, evaluate@a included
    assert "not run: evaluate@a, evaluate@b, summarize" in stored.message
    runs = task_runs(state.state_details.flow_run_id)
    assert runs["train@b"].state.is_failed() and runs["train@a"].state.is_completed()
    assert not any(runs[s].state.is_completed() for s in ("evaluate@a", "evaluate@b"))
    assert ("start", "evaluate@a") not in trace(root)
    assert not (root / "reports/metrics.csv").exists()


def test_fetch_stages_are_retried_and_others_are_not(prefect_api, tmp_path):
    from flows.dag import experiment_dag

    root = make_tiny(tmp_path / "p", fail_once="fetch")
    state = experiment_dag(root=str(root), retries=1, retry_delay_seconds=0, return_state=True)
    assert state.is_completed(), state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert runs["fetch"].run_count == 2 and runs["prepare"].run_count == 1

    root = make_tiny(tmp_path / "q", fail_once="prepare")
    state = experiment_dag(root=str(root), retries=1, retry_delay_seconds=0, return_state=True)
    assert state.is_failed() and "flaky: prepare fails its first attempt" in state.message


def test_models_subset_runs_only_that_models_stages(prefect_api, tmp_path):
    from flows.dag import experiment_dag

    root = make_tiny(tmp_path / "p")
    state = experiment_dag(root=str(root), models=["b"], return_state=True)
    assert state.is_completed(), state.message
    stages = state.result()["stages"]
    assert stages == {
        "fetch": "ran",
        "prepare": "ran",
        "train@a": "left out",
        "train@b": "ran",
        "evaluate@a": "left out",
        "evaluate@b": "ran",
        "summarize": "left out",
    }
    assert not (root / "models/a").exists() and (root / "models/b/weights.txt").is_file()
    bad = experiment_dag(root=str(root), models=["zz"], return_state=True)
    assert bad.is_failed() and "models: zz not in params.yaml models; known: a, b" in bad.message


@pytest.mark.faults
def test_second_writer_on_a_checkout_refuses_naming_the_holder(prefect_api, tmp_path):
    from flows.dag import experiment_dag, workspace_lock

    root = make_tiny(tmp_path / "p")
    with workspace_lock(root, "a test holding the checkout"):
        state = experiment_dag(root=str(root), return_state=True)
        assert state.is_failed()
        line = f"is busy with another flow run (pid {os.getpid()}, a test holding the checkout)"
        assert line in state.message and "\n" not in state.message
        assert not (root / "data/raw.txt").exists()  # refused before any stage
    assert experiment_dag(root=str(root), models=["a"], return_state=True).is_completed()


@pytest.mark.faults
def test_cancelling_an_in_process_run_ends_it_cancelled_naming_the_stage(prefect_api, tmp_path):
    """No runner to signal the flow: the stage task sees the Cancelling state itself."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.states import Cancelling

    from flows.dag import experiment_dag

    root = make_tiny(tmp_path / "p", sleep="train@b")
    done: list[Any] = []
    name = f"cancel-{tmp_path.name}"
    run = experiment_dag.with_options(flow_run_name=name)
    worker = threading.Thread(target=lambda: done.append(run(root=str(root), return_state=True)))
    worker.start()
    pgid_file = root / "sleeping.pgid"
    pgid = int(wait_until("the long stage", pgid_file.is_file, 120) and pgid_file.read_text())
    with get_client(sync_client=True) as client:
        (ours,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
        client.set_flow_run_state(ours.id, Cancelling(), force=True)
    worker.join(timeout=60)
    assert done and not group_alive(pgid)
    state = done[0]
    assert state.is_cancelled(), state
    assert (
        state.message
        == "cancelled: stopped stage 'train@b'; not run: evaluate@a, evaluate@b, summarize"
    )
    assert flow_run(ours.id).state.is_cancelled()
    assert (root / "models/a/weights.txt").is_file() and not (
        root / "models/b/weights.txt"
    ).exists()
    assert (root / "models/a/state.txt").is_file()


def test_overrides_make_a_dvc_experiment_listed_by_exp_show(prefect_api, tmp_path):
    from flows.dag import experiment_dag

    root = make_tiny(tmp_path / "p")
    state = experiment_dag(
        root=str(root), overrides=["scale=3"], experiment_name="scale-3", return_state=True
    )
    assert state.is_completed(), state.message
    assert state.result()["experiment"] == "scale-3"
    exps = exp_show(root)
    assert exps["scale-3"]["params"]["params.yaml"]["data"]["scale"] == 3
    headline = exps["scale-3"]["metrics"]["reports/metrics.json"]["data"]
    assert headline["a"]["best_epoch"]["val_acc"] == pytest.approx(3 / 13)
    # the experiment commit holds the uncached outputs, as `dvc exp run` would
    # (by name: DVC's refs/exps/exec/* refs sort first when the baseline's hash starts late)
    refs = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], root).stdout.split()
    (ref,) = [r for r in refs if r.endswith("/scale-3")]
    tree = sh(["git", "ls-tree", "-r", "--name-only", ref], root).stdout.split()
    wanted = {"reports/metrics.csv", "reports/eval/a.json", "dvc.lock", "models/a/.gitignore"}
    assert wanted <= set(tree)
    md = artifacts(state.state_details.flow_run_id)["experiment-dag-summary"]
    assert "DVC experiment **scale-3**" in md and "`scale=3`" in md

    again = experiment_dag(root=str(root), experiment_name="scale-3", return_state=True)
    assert again.is_failed() and "experiment scale-3 already exists" in again.message


def test_sweep_queues_runs_and_compares_experiments(prefect_api, tmp_path):
    from flows.sweep import experiment_sweep

    root = make_tiny(tmp_path / "p")
    state = experiment_sweep(
        root=str(root), points=[["scale=2"], ["scale=4"]], name_prefix="sw", return_state=True
    )
    assert state.is_completed(), state.message
    assert state.result()["statuses"] == {"sw-1": "Success", "sw-2": "Success"}
    exps = exp_show(root)
    for name, scale in (("sw-1", 2), ("sw-2", 4)):
        assert exps[name]["params"]["params.yaml"]["data"]["scale"] == scale
    arts = artifacts(state.state_details.flow_run_id)
    rows = {r["experiment"]: r for r in arts["experiment-sweep-comparison"]}
    assert rows["baseline"]["scale"] == 1
    assert rows["sw-1"]["scale"] == 2 and rows["sw-2"]["scale"] == 4
    assert rows["sw-2"]["b.greedy_soup.val_acc"] == pytest.approx(8 / 18 + 0.02)
    md = arts["experiment-sweep-summary"]
    assert "| sw-2 | scale=4 | 0.3751 | 0.3251 | 0.2857 |" in md  # means, then per-model val_acc
    assert "Best by mean val accuracy: **sw-2**" in md
    status = sh([sys.executable, "-m", "dvc", "queue", "status"], root).stdout
    assert "Worker status: 0 active, 0 idle" in status  # no DVC worker left behind
    assert yaml.safe_load((root / "params.yaml").read_text())["scale"] == 1  # workspace untouched


# --------------------------------------------------------------------------- Dask


@pytest.mark.slow
def test_dask_cluster_spreads_gpu_stages_over_its_gpu_workers(prefect_api, tmp_path):
    """A real LocalCluster: the models' stages land on different workers (each task says
    which), wait_for holds across workers, and a worker with GPU=1 runs one device stage at a
    time however many threads it has."""
    from distributed import LocalCluster

    from flows.dag import experiment_dag

    root = make_tiny(tmp_path / "p", barrier=True)  # the trains must run at once
    with LocalCluster(
        n_workers=2, threads_per_worker=1, resources={"GPU": 1}, dashboard_address=None
    ) as cluster:
        names = {str(w.name) for w in cluster.workers.values()}
        state = experiment_dag(
            root=str(root), dask_address=cluster.scheduler_address, return_state=True
        )
    assert state.is_completed(), state.message
    result = state.result()
    assert result["stages"] == {s: "ran" for s in TINY_STAGES}
    where = result["workers"]
    assert set(where.values()) <= names and where["train@a"] != where["train@b"]
    t = trace(root)
    assert t[("end", "train@a")] < t[("start", "evaluate@a")]  # wait_for held on Dask too
    stages = artifacts(state.state_details.flow_run_id)["experiment-dag-stages"]
    assert {r["stage"]: r["worker"] for r in stages} == where

    # one worker, two threads, GPU=1: the trains could share it, their GPU request forbids it
    root = make_tiny(tmp_path / "q", pause=2)
    with LocalCluster(
        n_workers=1, threads_per_worker=2, resources={"GPU": 1}, processes=False,
        dashboard_address=None,
    ) as cluster:  # fmt: skip
        state = experiment_dag(
            root=str(root), dask_address=cluster.scheduler_address, return_state=True
        )
    assert state.is_completed(), state.message
    t = trace(root)
    first, second = sorted(("train@a", "train@b"), key=lambda s: t[("start", s)])
    assert t[("end", first)] < t[("start", second)]


# --------------------------------------------------------------------------- deployments


@contextlib.contextmanager
def serving(
    env: dict[str, str], root: Path, log: Path, name: str = "default", background: bool = False
) -> Iterator[None]:
    """`python -m flows.serve --root <root>` run from `root` (a fresh clone), as a subprocess;
    with `background`, as `cmd &` in a script starts it: SIGINT ignored (else its default)."""
    disposition = signal.SIG_IGN if background else signal.SIG_DFL
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "--root", str(root), "--name", name],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, disposition),
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, f"serve exited early:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"no deployment:\n{log.read_text()}"
                inspect = [sys.executable, "-m", "prefect", "deployment", "inspect"]
                r = subprocess.run(
                    [*inspect, f"experiment-dag/{name}"], env=env, capture_output=True
                )
                if r.returncode == 0:
                    break
                time.sleep(1)
            yield
        finally:
            proc.send_signal(signal.SIGTERM if background else signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def deployment_run(env: dict[str, str], name: str, *params: str) -> tuple[int, str, UUID]:
    """`prefect deployment run 'experiment-dag/<name>' --watch`: (exit code, output, run id)."""
    cmd = [sys.executable, "-m", "prefect", "deployment", "run", f"experiment-dag/{name}"]
    for p in params:
        cmd += ["--param", p]
    r = subprocess.run([*cmd, "--watch"], env=env, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    line = next(x for x in out.splitlines() if "UUID:" in x)
    return r.returncode, out, UUID(line.split("UUID:")[1].strip())


@pytest.mark.slow
def test_served_deployment_on_the_micro_profile(prefect_api, micro_project, tmp_path):
    """Serve, then `prefect deployment run ... --watch` three times, as a user would.

    1: every real stage runs (two at a time) and gives the metrics `dvc repro` gave;
    2: DVC reports every stage up to date and the flow skips them all;
    3: a stage that fails leaves the run Failed with its name and error in the state message.
    """
    from flows.dag import read_params, read_stage_graph

    if not MICRO.is_file():
        pytest.skip("profiles/micro.yaml is not in this checkout")
    root = make_project(tmp_path / "micro")
    env = dict(tiny_env(), PREFECT_API_URL=prefect_api, OMP_NUM_THREADS="1")
    stages = [n.name for n in read_stage_graph(root, read_params(root)["models"])]
    assert {"fetch", "train@M16", "evaluate@M32", "summarize"} <= set(stages)
    failing = make_tiny(tmp_path / "failing", fail="evaluate@a")

    with serving(env, root, tmp_path / "serve.log", "micro"):
        code, out, run_id = deployment_run(env, "micro", "max_parallel=2")
        assert code == 0, out + (tmp_path / "serve.log").read_text()[-5000:]
        assert "Flow run finished successfully in 'Completed'" in out
        assert "Running stage 'train@M32'" in out  # the stages' logs reach --watch
        assert flow_run(run_id).parameters["root"] == str(root)  # the served default
        arts = artifacts(run_id)
        assert {r["stage"]: r["status"] for r in arts["experiment-dag-stages"]} == {
            s: "ran" for s in stages
        }
        for m in ("M16", "M32"):
            for out_file in (f"models/{m}/greedy_soup.pt", f"reports/eval/{m}.json"):
                assert (root / out_file).is_file()
        # the same numbers as a plain `dvc repro` of the profile (the session's micro_project)
        ours = (root / "reports/metrics.csv").read_text()
        assert ours == (micro_project / "reports/metrics.csv").read_text()
        table = arts["experiment-dag-metrics"]
        assert {"M16", "M32"} <= {r["model"] for r in table}
        with open(root / "reports/metrics.csv", newline="") as f:
            first = next(csv.DictReader(f))
        assert table[0]["val_acc"] == pytest.approx(float(first["val_acc"]))
        md = arts["experiment-dag-summary"]
        assert "## Best variant per model" in md and "## Soups vs best single epoch" in md
        assert "| M16 | best_epoch |" in md and "| M32 | greedy_soup |" in md

        code, out, run_id = deployment_run(env, "micro")
        assert code == 0, out
        skipped = {r["stage"]: r["status"] for r in artifacts(run_id)["experiment-dag-stages"]}
        assert skipped == {s: "skipped" for s in stages}

        code, out, run_id = deployment_run(env, "micro", f"root={failing}")
        assert code == 1 and "Flow run finished in state 'Failed'" in out
        message = flow_run(run_id).state.message
        assert "stage 'evaluate@a' failed (log: " in message and "exited with 3" in message
        assert "boom: evaluate@a was told to fail" in message


@pytest.mark.slow
@pytest.mark.faults
def test_cancelling_a_served_run_stops_the_stage_and_leaves_no_lock(prefect_api, tmp_path):
    """`prefect flow-run cancel` on a served run that is inside a long stage: the stage's whole
    process group goes within seconds, DVC's locks are released, its partial output is
    removed, the run ends Cancelled and its log names the stage. While it ran, a second run on
    the same checkout refused in one line naming the first one's process. The server runs as
    a background job (SIGINT ignored), where DVC must still get the SIGINT that frees its locks."""
    from flows.dag import experiment_dag, workspace_lock

    root = make_tiny(tmp_path / "p", sleep="train@a")
    env = dict(tiny_env(), PREFECT_API_URL=prefect_api, PYTHONPATH=str(REPO))
    prefect = [sys.executable, "-m", "prefect"]
    with serving(env, root, tmp_path / "serve.log", "cancel", background=True):
        r = subprocess.run(
            [*prefect, "deployment", "run", "experiment-dag/cancel"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        run_id = UUID(next(x for x in r.stdout.splitlines() if "UUID:" in x).split(":")[1].strip())
        pgid_file = root / "sleeping.pgid"
        pgid = int(
            wait_until("the long stage", lambda: pgid_file.is_file(), 180) and pgid_file.read_text()
        )
        assert group_alive(pgid) and pgid != os.getpgid(0)

        second = experiment_dag(root=str(root), return_state=True)
        assert second.is_failed() and "\n" not in second.message
        holder = re.search(
            r"is busy with another flow run \(pid (\d+), experiment-dag", second.message
        )
        assert holder and int(holder.group(1)) != os.getpid(), second.message

        started = time.monotonic()
        subprocess.run(
            [*prefect, "flow-run", "cancel", str(run_id)], env=env, check=True, capture_output=True
        )
        wait_until("the stage's process group to go", lambda: not group_alive(pgid), 30)
        stopped_after = time.monotonic() - started
        final = wait_until(
            "a final state", lambda: (s := flow_run(run_id).state).is_final() and s, 90
        )
    assert final.is_cancelled(), final
    assert stopped_after < 15, stopped_after
    logs = wait_until(
        "the log line", lambda: "stopped stage 'train@a'" in (x := run_logs(run_id)) and x, 30
    )
    assert "its processes are gone, its partial outputs removed" in logs
    runs = task_runs(run_id)
    assert runs["train@a"].state.is_cancelled()
    assert "stopped stage 'train@a'" in runs["train@a"].state.message
    assert ("start", "train@b") not in trace(root)  # nothing started after the cancel
    assert not (root / "models/a/weights.txt").exists()  # no partial output left behind
    assert (root / "data/prepared.txt").is_file()  # what finished before stays
    rwlock = json.loads((root / ".dvc/tmp/rwlock").read_text())
    assert not rwlock.get("write") and not any(rwlock.get("read", {}).values()), rwlock
    status = sh([sys.executable, "-m", "dvc", "status"], root)
    assert "train@a" in status.stdout and "killed" not in status.stderr
    with workspace_lock(root, "a follow-up"):  # vitlab's own lock is free again
        pass


@pytest.mark.slow
def test_prefect_up_helper_starts_serves_and_watches(tmp_path):
    """scripts/prefect-up: its own server on 127.0.0.1, the served deployment, a watched run."""
    root = make_tiny(tmp_path / "p")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(tiny_env(), PREFECT_HOME=str(tmp_path / "home"), PREFECT_UP_PORT=str(port))
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.pop("PREFECT_API_URL", None)
    r = subprocess.run(
        [str(REPO / "scripts/prefect-up"), "--root", str(root), "--", "--param", 'models=["a"]'],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert f"http://127.0.0.1:{port}" in out
    assert "Flow run finished successfully in 'Completed'" in out
    assert (root / "models/a/weights.txt").is_file() and not (root / "models/b").exists()
    # everything it started is gone: no serving process, nothing listening on the port
    assert not [c for c in Path("/proc").glob("[0-9]*/cmdline") if _mentions(c, str(root))]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
