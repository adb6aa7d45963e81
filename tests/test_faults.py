"""Fault injection: every kill, interrupt, divergence, full disk and concurrent run ends in one
clear line and a correct rerun.

One copy of the finished micro run is faulted stage by stage: a real `dvc repro -f -s <stage>`
is signalled at a chosen write (tests/faults/sitecustomize.py, Python's audit hook), then a
plain `dvc repro` must complete with every output equal to the uninterrupted run's (the
metrics table and every hash in dvc.lock). Each fault adds a row to reports/bench/faults.md.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, project_env

pytestmark = [pytest.mark.faults, pytest.mark.slow]
INJECT = ROOT / "tests" / "faults"
OUTPUT_ROOTS = ("data", "models", "reports")
INTERRUPTED = "error: interrupted; rerun `dvc repro` to continue"


@pytest.fixture(scope="module")
def project(micro_project, tmp_path_factory) -> Path:
    """A private copy of the finished micro run (outputs, cache, dvc.lock, git)."""
    root = tmp_path_factory.mktemp("faults") / "p"
    shutil.copytree(micro_project, root, symlinks=True)
    return root


def _dvc(root: Path, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    full = {**project_env(), **(env or {})}
    # SIGINT at its default, as in a terminal: pytest started in the background ignores it
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=full,
                          capture_output=True, text=True, preexec_fn=_default_sigint,
                          **kw)  # fmt: skip


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _temporaries(root: Path) -> list[Path]:
    return [p for d in OUTPUT_ROOTS for p in (root / d).rglob(".*.tmp")]


RESUME_STATES = ("models/M16/last.pt", "models/M32/last.pt", "models/captioner_last.pt")


def _tracked_temporaries(root: Path) -> list[Path]:
    """Leftover temporaries that DVC does not ignore (it would hash, cache and push them)."""
    return [p for p in _temporaries(root)
            if _dvc(root, "check-ignore", str(p.relative_to(root))).returncode != 0]  # fmt: skip


def _lock_hashes(root: Path) -> dict:
    """Every output's hash in dvc.lock, but the resume states': a resumed run's last.pt holds
    the same tensors and numbers, pickled with other object sharing (so other bytes)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {s: [(o["path"], o.get("md5")) for o in v.get("outs", [])
                if o["path"] not in RESUME_STATES] for s, v in lock.items()}  # fmt: skip


def _strict_json(root: Path) -> list[str]:
    """JSON outputs holding NaN or Infinity (which strict JSON forbids)."""
    bad = []
    for d in OUTPUT_ROOTS:
        for p in (root / d).rglob("*.json"):

            def refuse(token: str) -> None:
                raise ValueError(token)

            try:
                json.loads(p.read_text(), parse_constant=refuse)
            except ValueError:
                bad.append(str(p.relative_to(root)))
    return bad


def _record(rows: list, fault: str, stage: str, ok: bool, outcome: str) -> None:
    rows.append({"fault": fault, "stage": stage, "ok": ok, "outcome": outcome})


def _rerun_matches(root: Path, baseline: Path) -> tuple[bool, str, str]:
    rerun = _dvc(root, "repro")
    if rerun.returncode != 0:
        return False, f"rerun failed: {rerun.stderr.strip().splitlines()[-1:]}", rerun.stderr
    same_table = (root / "reports/metrics.csv").read_text() == (
        baseline / "reports/metrics.csv"
    ).read_text()
    same_hashes = _lock_hashes(root) == _lock_hashes(baseline)
    left = _tracked_temporaries(root)  # a run-cache restore may leave ignored ones behind
    ok = same_table and same_hashes and not left
    return (
        ok,
        (
            f"rerun: metrics {'equal' if same_table else 'DIFFER'}, dvc.lock hashes "
            f"{'equal' if same_hashes else 'DIFFER'}, temporaries DVC would track {len(left)}"
        ),
        rerun.stdout,
    )


TRAIN = "train@M16"
FRESH = {TRAIN: ("models/M16/last.pt", "models/M16/epochs"),
         "train_captioner": ("models/captioner_last.pt",)}  # fmt: skip
SIGNAL_FAULTS = [
    # (stage, signal, written path holding, nth such write, delay s or function#call, the point)
    (TRAIN, "KILL", ".last.pt.", 3, "optimizer_step#2", "mid-epoch"),  # of epoch 4 of 5
    (TRAIN, "KILL", ".epoch_", 4, 0, "during a checkpoint write"),
    (TRAIN, "KILL", ".history.json.", 1, 0, "after the last epoch"),
    (TRAIN, "INT", ".last.pt.", 3, "optimizer_step#2", "mid-epoch"),
    (TRAIN, "TERM", ".epoch_", 4, 0, "during a checkpoint write"),
    ("fetch", "KILL", "test/00003.png", 1, 0, "writing images"),
    ("fetch", "INT", "val/00005.png", 1, 0, "writing images"),
    ("prepare", "KILL", "masks.npy", 1, 0, "writing the arrays"),
    ("prepare", "TERM", "labels.npy", 1, 0, "writing the arrays"),
    ("select@M16", "KILL", ".selection.json.", 2, 0, "writing"),
    ("select@M16", "INT", ".selection.json.", 2, 0, "writing"),
    ("average@M16", "KILL", ".greedy_soup.pt.", 2, 0, "writing a soup"),
    ("average@M16", "INT", ".uniform_soup.pt.", 2, 0, "writing a soup"),
    ("evaluate@M16", "KILL", ".M16.json.", 2, 0, "writing the report"),
    ("evaluate@M16", "TERM", ".M16.json.", 1, 0, "writing the report"),
    ("render_positions@M16", "KILL", "positions_uniform_soup.png", 1, 0, "drawing"),
    ("render_positions@M16", "INT", "positions_best_epoch.npy", 1, 0, "drawing"),
    ("render_attention@M16", "KILL", "attention_rollout_greedy_soup.png", 1, 0, "drawing"),
    ("render_attention@M16", "INT", "attention_last_layer_best_epoch.npy", 1, 0, "drawing"),
    ("fetch_captions", "KILL", "captions.json", 1, 0, "writing the set"),
    ("fetch_captions", "INT", "captions.json", 1, 0, "writing the set"),
    ("train_captioner", "KILL", ".captioner_last.pt.", 2, "optimizer_step#2", "mid-epoch"),  # of 3
    ("train_captioner", "KILL", "config.json", 1, 0, "saving the model"),
    ("train_captioner", "INT", "vocab.json", 1, 0, "saving the model"),
    ("render_captions", "KILL", "test_00003.png", 1, 0, "drawing"),
    ("render_captions", "TERM", ".test_captions.json.", 2, 0, "writing"),
    ("summarize", "KILL", ".metrics.csv.", 2, 0, "writing the table"),
    ("summarize", "INT", ".metrics.json.", 2, 0, "writing the table"),
]


def _stage_argv(stage: str) -> str:
    name, _, model = stage.partition("@")
    return f"{name}.py {model}".strip()


@pytest.mark.parametrize(
    ("stage", "sig", "needle", "nth", "delay", "point"),
    SIGNAL_FAULTS,
    ids=[f"{s}-{g}-{p}" for s, g, _, _, _, p in SIGNAL_FAULTS],
)
def test_a_signalled_stage_leaves_no_trusted_partial_output(
    project, micro_project, fault_rows, stage, sig, needle, nth, delay, point
):
    root = project
    for rel in FRESH.get(stage, ()):  # a fresh training, so the fault lands where it is aimed
        path = root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    env = {"PYTHONPATH": str(INJECT), "VITLAB_FAULT": f"{sig}:{needle}:{nth}:{delay}",
           "VITLAB_FAULT_STAGE": _stage_argv(stage)}  # fmt: skip
    faulted = _dvc(root, "repro", "-f", "-s", stage, env=env, timeout=600)
    problems = []
    if faulted.returncode == 0:
        problems.append("the faulted run reported success")
    if sig in ("INT", "TERM") and INTERRUPTED not in faulted.stderr + faulted.stdout:
        problems.append("no one-line interruption message")
    tracked = _tracked_temporaries(root)
    if tracked:
        problems.append(f"temporaries DVC would track: {tracked}")
    ok, outcome, rerun_out = _rerun_matches(root, micro_project)
    if point == "after the last epoch":
        epochs = re.findall(r"^epoch +\d+ +train_loss .*val_acc", rerun_out, re.M)  # train@M
        if epochs:  # the requirement: a kill after the last epoch does not retrain
            ok, outcome = False, outcome + f"; it retrained: {epochs}"
    ok = ok and not problems
    _record(fault_rows, f"SIG{sig} {point}", stage,
            ok, "; ".join([*problems, outcome]) if problems else f"exit {faulted.returncode}, "
            f"{outcome}")  # fmt: skip
    assert ok, (problems, outcome, faulted.stderr[-1500:], rerun_out[-3000:])


def test_a_diverging_run_stops_with_one_line_and_keeps_nothing(project, micro_project, fault_rows):
    root = project
    params_path = root / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["models"]["M16"]["train"] = {"lr": 1.0e6}
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        run = _dvc(root, "repro", "-s", TRAIN)
    finally:
        params_path.write_text(original)
    lines = [x for x in run.stderr.splitlines() if x.startswith("error: ")]
    problems = []
    if run.returncode == 0:
        problems.append("the diverged run reported success")
    if not (lines and "train@M16, epoch 1" in lines[0] and "not finite" in lines[0]
            and "train.lr" in lines[0]):  # fmt: skip
        problems.append(f"no one line naming model, epoch and lr: {lines}")
    if (root / "models/M16/history.json").exists():
        problems.append("history.json written")
    bad = _strict_json(root)
    if bad:
        problems.append(f"non-strict JSON: {bad}")
    ok, outcome, _ = _rerun_matches(root, micro_project)
    ok = ok and not problems
    _record(fault_rows, "divergence (lr 1e6)", TRAIN, ok, "; ".join([lines[0] if lines else "",
            *problems, outcome]))  # fmt: skip
    assert ok, (problems, outcome, run.stderr[-2000:])


@pytest.mark.parametrize(("stage", "limit_kib"), [("evaluate@M16", 4), ("prepare", 64)])
def test_a_full_disk_is_one_line_and_keeps_the_previous_output(
    project, micro_project, fault_rows, stage, limit_kib
):
    """The stage command itself under RLIMIT_FSIZE (writes past the limit fail with EFBIG)."""
    root = project
    name, _, model = stage.partition("@")
    out = root / ("reports/eval/M16.json" if model else "data/prepared/train/images.npy")
    before = out.read_bytes()
    env = {"PYTHONPATH": str(INJECT), "VITLAB_FSIZE": str(limit_kib * 1024),
           "VITLAB_FAULT_STAGE": _stage_argv(stage)}  # fmt: skip
    cmd = [sys.executable, "-m", f"stages.{name}", *([model] if model else [])]
    run = subprocess.run(cmd, cwd=root, env={**project_env(), **env}, capture_output=True,
                         text=True)  # fmt: skip
    lines = run.stderr.strip().splitlines()
    problems = []
    if (
        run.returncode != 2
        or len(lines) != 1
        or "File too large: it needs more than" not in lines[0]
    ):
        problems.append(f"exit {run.returncode}, stderr {lines[-3:]}")
    if out.read_bytes() != before:
        problems.append("the previous output changed")
    ok, outcome, _ = _rerun_matches(root, micro_project)
    ok = ok and not problems
    _record(fault_rows, f"full disk ({limit_kib} KiB file limit)", stage, ok,
            "; ".join([lines[0] if lines else "", *problems, outcome]))  # fmt: skip
    assert ok, (problems, outcome, run.stderr[-2000:])


def _held(lock: Path) -> bool:
    if not lock.exists():
        return False
    with open(lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def test_a_second_run_of_a_running_stage_is_refused(project, micro_project, fault_rows):
    root = project
    stage = "evaluate@M16"
    env = {"PYTHONPATH": str(INJECT), "VITLAB_FAULT": "SLEEP:.M16.json.:1:25",
           "VITLAB_FAULT_STAGE": _stage_argv(stage)}  # fmt: skip
    first = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-f", "-s", stage], cwd=root,
                             env={**project_env(), **env}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    lock = root / ".dvc/tmp/vitlab-stages" / f"{stage}.lock"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _held(lock):  # the first run is in its stage
        time.sleep(0.1)
    # the stage's own command beside it (a flow's task, a shell): vitlab's lock refuses it
    direct = subprocess.run([sys.executable, "-m", "stages.evaluate", "M16"], cwd=root,
                            env=project_env(), capture_output=True, text=True)  # fmt: skip
    second = _dvc(root, "repro", "-f", "-s", stage)  # a second dvc repro: DVC's lock refuses it
    out, err = first.communicate(timeout=300)
    text = second.stdout + second.stderr
    refused = second.returncode != 0 and ("is busy, it is being blocked by" in text
                                          or "Unable to acquire lock" in text)  # fmt: skip
    problems = [] if refused else [f"second dvc repro not refused: {text[-500:]}"]
    mine = direct.stderr.strip().splitlines()
    if direct.returncode != 2 or len(mine) != 1 or "is already running" not in mine[0]:
        problems.append(f"the stage command beside it was not refused: {mine[-3:]}")
    if first.returncode != 0:
        problems.append(f"the first run failed: {err[-500:]}")
    ok, outcome, _ = _rerun_matches(root, micro_project)
    ok = ok and not problems
    line = " / ".join(
        [next((x for x in text.splitlines() if "is busy" in x), "").strip(), *mine[:1]]
    )
    _record(fault_rows, "two concurrent dvc repro", stage, ok,
            "; ".join([line.strip(), *problems, outcome]))  # fmt: skip
    assert ok, (problems, outcome)


def test_a_corrupt_resume_state_is_said_and_moved_aside(project, micro_project, fault_rows):
    root = project
    last = root / "models/M16/last.pt"
    last.write_bytes(last.read_bytes()[:100])  # truncated
    shutil.rmtree(root / "models/M16/epochs", ignore_errors=True)
    run = _dvc(root, "repro", "-f", "-s", TRAIN)
    said = "unreadable resume state, moved aside to models/M16/last.pt.unreadable; training " \
           "restarts" in run.stderr  # fmt: skip
    problems = [] if said and run.returncode == 0 else [f"exit {run.returncode}, {said=}"]
    ok, outcome, _ = _rerun_matches(root, micro_project)
    ok = ok and not problems
    _record(fault_rows, "corrupt last.pt", TRAIN, ok, "; ".join([*problems, outcome]))
    assert ok, (problems, outcome, run.stderr[-1500:])


def test_a_missing_input_is_one_line(project, fault_rows):
    root = project
    soups = root / "models/M16/soups.json"
    saved = soups.read_bytes()
    soups.unlink()
    try:
        run = subprocess.run([sys.executable, "-m", "stages.evaluate", "M16"], cwd=root,
                             env=project_env(), capture_output=True, text=True)  # fmt: skip
    finally:
        soups.write_bytes(saved)
    lines = run.stderr.strip().splitlines()
    ok = run.returncode == 2 and lines == [
        "error: models/M16/soups.json is missing; run `dvc repro average@M16`"
    ]
    _record(fault_rows, "missing soups.json", "evaluate@M16", ok, lines[0] if lines else "")
    assert ok, lines
