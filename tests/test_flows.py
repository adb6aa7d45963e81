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
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from tests.conftest import MICRO, make_project
from vitlab.errors import VitlabError

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
      outs:
        - models/${key}/weights.txt
  evaluate:
    foreach: ${models}
    do:
      cmd: python step.py evaluate ${key}
      deps:
        - models/${key}/weights.txt
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
import json, sys, time
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
    print("progress 10%\\rprogress 50%\\rprogress 90%", file=sys.stderr)
    print(f"boom: {STAGE} was told to fail", file=sys.stderr)
    sys.exit(3)
if P.get("fail_once") == STAGE and not Path(".failed_once").exists():
    Path(".failed_once").touch()
    sys.exit(f"flaky: {STAGE} fails its first attempt")
step, model = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
if step == "fetch":
    write("data/raw.txt", "raw\\n")
elif step == "prepare":
    write("data/prepared.txt", Path("data/raw.txt").read_text() + f"scale={P['scale']}\\n")
elif step == "train":
    if P.get("barrier"):
        barrier(model)
    write(f"models/{model}/weights.txt", f"{P['models'][model]['n'] * P['scale']}\\n")
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

TINY_STAGES = ["fetch", "prepare", "train@a", "evaluate@a", "train@b", "evaluate@b", "summarize"]


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
    p = {"scale": 1, "fail": "", "fail_once": "", "barrier": False}
    p.update(params)
    p["models"] = {"a": {"n": 1}, "b": {"n": 2}}
    (dest / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (dest / "dvc.yaml").write_text(TINY_DVC_YAML)
    (dest / "step.py").write_text(TINY_STEP)
    (dest / ".gitignore").write_text("trace.log\nbarrier/\n.failed_once\n")
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

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name: r for r in runs}


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


# --------------------------------------------------------------------------- the graph


def test_stage_graph_is_dvcs_own_with_foreach_expanded(tmp_path):
    from flows.dag import plan_stages, read_model_keys, read_stage_graph

    root = make_tiny(tmp_path / "p")
    nodes = read_stage_graph(root, read_model_keys(root))
    assert [n.name for n in nodes] == TINY_STAGES
    by = {n.name: n for n in nodes}
    assert by["train@b"].upstream == ("prepare",) and by["train@b"].model == "b"
    assert by["summarize"].upstream == ("evaluate@a", "evaluate@b")
    assert by["summarize"].model is None
    assert set(by["evaluate@a"].outs) == {"reports/eval/a.json", "reports/figures/a"}

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


def test_parallelism_follows_the_hardware_and_splits_gpus_between_slots(monkeypatch):
    from flows.dag import default_parallelism, slot_env, visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert visible_gpus() == ["0", "1", "2", "3"]
    assert default_parallelism() == 4
    assert default_parallelism(procs=2) == 2  # a DDP stage takes nproc_per_node GPUs
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    gpus = visible_gpus()
    assert slot_env(0, 2, gpus, 16) == {"CUDA_VISIBLE_DEVICES": "0,2", "OMP_NUM_THREADS": "8"}
    assert slot_env(1, 2, gpus, 16)["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert slot_env(0, 1, gpus, 16) == {}  # one slot: the stage sees everything
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert slot_env(1, 8, gpus, 16) == {}  # more slots than GPUs: no pinning; user's threads
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []
    assert default_parallelism(cpus=2) == 1 and default_parallelism(cpus=16) == 4


def test_stream_command_hands_over_lines_and_thins_progress_bars(tmp_path):
    from flows.dag import stream_command

    child = textwrap.dedent(
        """
        import sys
        print("out 1"); sys.stdout.flush()
        sys.stderr.write("bar 1\\rbar 2\\rbar 3\\rbar done\\n"); sys.stderr.flush()
        print("out 2")
        sys.stderr.write("error: last words\\n")
        sys.exit(5)
        """
    )
    seen: list[tuple[str, str]] = []
    result = stream_command(
        [sys.executable, "-c", child], tmp_path, None, lambda s, line: seen.append((s, line))
    )
    assert result.returncode == 5
    assert result.stdout == ["out 1", "out 2"]
    assert [line for s, line in seen if s == "stderr"] == ["bar 1", "bar done", "error: last words"]
    assert result.stderr_tail[-1] == "error: last words"


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
    md = arts["experiment-dag-summary"]
    assert "| a | greedy_soup | 2;3 | 0.1109 | 0.0609 |" in md  # best variant per model
    assert "| b | uniform_soup | 0.1767 | +0.0100 | 0.1267 | +0.0100 |" in md  # soup vs best
    assert "`reports/figures/a/` (2 PNG): positions/ (1), attention_rollout_best_epoch.png" in md
    assert "| captioner | greedy | 0.5000 |" in md  # rows without accuracies, their scores
    runs = task_runs(run_id)
    assert set(TINY_STAGES) <= set(runs)
    assert all(runs[s].state.is_completed() for s in TINY_STAGES)

    again = experiment_dag(root=str(root), max_parallel=2, return_state=True)
    assert again.is_completed(), again.message
    assert again.result()["stages"] == {s: "skipped" for s in TINY_STAGES}
    stages = artifacts(again.state_details.flow_run_id)["experiment-dag-stages"]
    assert {r["stage"]: r["status"] for r in stages} == {s: "skipped" for s in TINY_STAGES}


def test_failing_stage_fails_the_run_with_its_name_and_stderr(prefect_api, tmp_path):
    from flows.dag import experiment_dag

    root = make_tiny(tmp_path / "p", fail="train@b")
    state = experiment_dag(root=str(root), max_parallel=1, return_state=True)
    assert state.is_failed()
    stored = flow_run(state.state_details.flow_run_id).state
    assert stored.is_failed()
    for text in ("stage 'train@b' failed (exit 3)", "boom: train@b was told to fail"):
        assert text in state.message and text in stored.message
    assert "not run: evaluate@b, summarize" in stored.message
    runs = task_runs(state.state_details.flow_run_id)
    assert runs["train@b"].state.is_failed() and runs["train@a"].state.is_completed()
    assert "evaluate@b" not in runs
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
        "evaluate@a": "left out",
        "train@b": "ran",
        "evaluate@b": "ran",
        "summarize": "left out",
    }
    assert not (root / "models/a").exists() and (root / "models/b/weights.txt").is_file()
    bad = experiment_dag(root=str(root), models=["zz"], return_state=True)
    assert bad.is_failed() and "models: zz not in params.yaml models; known: a, b" in bad.message


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
    ref = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], root).stdout.split()
    tree = sh(["git", "ls-tree", "-r", "--name-only", ref[0]], root).stdout.split()
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
    assert rows["sw-1"]["scale"] == 2 and rows["sw-2"]["scale"] == 4
    assert rows["sw-2"]["b.greedy_soup.val_acc"] == pytest.approx(8 / 18 + 0.02)
    md = arts["experiment-sweep-summary"]
    assert "| sw-2 | scale=4 | 0.3751 | 0.3251 | 0.2857 |" in md  # means, then per-model val_acc
    assert "Best by mean val accuracy: **sw-2**" in md
    status = sh([sys.executable, "-m", "dvc", "queue", "status"], root).stdout
    assert "Worker status: 0 active, 0 idle" in status  # no DVC worker left behind
    assert yaml.safe_load((root / "params.yaml").read_text())["scale"] == 1  # workspace untouched


# --------------------------------------------------------------------------- deployments


@contextlib.contextmanager
def serving(env: dict[str, str], root: Path, log: Path, name: str = "default") -> Iterator[None]:
    """`python -m flows.serve --root <root>` run from `root` (a fresh clone), as a subprocess."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "--root", str(root), "--name", name],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
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
            proc.send_signal(signal.SIGINT)
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
    from flows.dag import read_model_keys, read_stage_graph

    if not MICRO.is_file():
        pytest.skip("profiles/micro.yaml is not in this checkout")
    root = make_project(tmp_path / "micro")
    env = dict(tiny_env(), PREFECT_API_URL=prefect_api, OMP_NUM_THREADS="1")
    stages = [n.name for n in read_stage_graph(root, read_model_keys(root))]
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
        assert "stage 'evaluate@a' failed (exit 3)" in message
        assert "boom: evaluate@a was told to fail" in message


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
