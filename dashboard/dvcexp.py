"""What DVC knows about experiments: `dvc exp show --json` rows and curves at any revision.

Why a subprocess for `exp show`: it can be slow on a big history and DVC holds repo state, so it
runs with a timeout and its answer is cached on git HEAD, the refs and .dvc/tmp/exps. Curves of
another revision are read through `dvc.api.DVCFileSystem`, which serves both git-tracked and
DVC-cached files exactly as that revision has them.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dashboard.data import (
    METRICS_JSON,
    TRAIN_DIR,
    DataError,
    Problem,
    flatten,
    malformed,
    parse_tsv,
    stamp,
)


def git_dir(root: Path) -> Path | None:
    """The repository's .git directory (a `gitdir:` file is followed), or None."""
    dot = root / ".git"
    if dot.is_dir():
        return dot
    if dot.is_file():
        text = dot.read_text(encoding="utf-8", errors="replace").strip()
        if text.startswith("gitdir:"):
            target = Path(text.split(":", 1)[1].strip())
            return target if target.is_absolute() else (root / target).resolve()
    return None


def git_head(root: Path) -> str:
    """The commit HEAD points at, read from .git without running git ('' when unknown)."""
    gd = git_dir(root)
    if gd is None:
        return ""
    try:
        head = (gd / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        if (gd / ref).is_file():
            return f"{ref}@{(gd / ref).read_text(encoding='utf-8').strip()}"
        packed = gd / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(encoding="utf-8").splitlines():
                if line.endswith(" " + ref):
                    return f"{ref}@{line.split()[0]}"
        return f"{ref}@unborn"
    except OSError:
        return ""


def experiments_state(root: Path) -> tuple:
    """Cache key of everything `dvc exp show` reads: HEAD, refs (branches and refs/exps),
    DVC's experiment queue/run state (.dvc/tmp/exps) and the workspace's params and metrics."""
    gd = git_dir(root)
    git_files: tuple = ()
    if gd is not None:
        git_files = stamp(gd, ["HEAD", "packed-refs", "refs/**/*"])
    work = stamp(
        root, [".dvc/tmp/exps/**/*", "dvc.yaml", "dvc.lock", "params.yaml", "*.yaml", METRICS_JSON]
    )
    return (git_head(root), git_files, work)


def run_dvc(root: Path, args: Sequence[str], timeout: float = 60.0) -> str:
    """Run `python -m dvc <args>` in root; stdout, or a DataError saying what DVC answered."""
    cmd = [sys.executable, "-m", "dvc", *args]
    env = dict(os.environ, DVC_NO_ANALYTICS="1", DVC_NO_PAGER="1", PAGER="cat")
    shown = "dvc " + " ".join(args)
    try:
        proc = subprocess.run(
            cmd,
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise DataError(
            Problem("unavailable", f"`{shown}`", f"no answer within {timeout:.0f} s", "")
        ) from None
    except OSError as e:
        raise DataError(
            Problem("unavailable", f"`{shown}`", f"could not start DVC ({e})", "")
        ) from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        err = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else "")
        raise DataError(
            Problem("unavailable", f"`{shown}`", f"DVC failed in {root}: {err[:300]}", "")
        )
    return proc.stdout


@dataclass(frozen=True)
class ExpRow:
    """One row of `dvc exp show`: the workspace, a branch/commit baseline, or an experiment."""

    label: str
    rev: str
    kind: str  # workspace | baseline | experiment
    baseline: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    timestamp: str = ""
    error: str = ""


def _flat_files(files: dict | None) -> dict[str, Any]:
    """{file: {"data": {...}}} -> flat keys; the file name prefixes keys only when needed."""
    files = files or {}
    out: dict[str, Any] = {}
    several = len(files) > 1
    for name, entry in files.items():
        data = entry.get("data") if isinstance(entry, dict) else None
        if not isinstance(data, dict):
            continue
        for k, v in flatten(data).items():
            out[f"{name}:{k}" if several else k] = v
    return out


def _row(entry: dict, label: str, kind: str, baseline: str) -> ExpRow:
    data = entry.get("data") or {}
    err = entry.get("error") or data.get("error") or ""
    if isinstance(err, dict):
        err = err.get("msg") or err.get("type") or str(err)
    return ExpRow(
        label=label,
        rev=str(entry.get("rev") or data.get("rev") or label),
        kind=kind,
        baseline=baseline,
        params=_flat_files(data.get("params")),
        metrics=_flat_files(data.get("metrics")),
        timestamp=str(data.get("timestamp") or ""),
        error=str(err or ""),
    )


def parse_exp_show(payload: Any) -> list[ExpRow]:
    """`dvc exp show --json` (DVC 3.x) -> rows with unique labels (workspace, branch names,
    experiment names; a short commit id where there is no name)."""
    if not isinstance(payload, list):
        raise malformed("`dvc exp show --json`", "expected a JSON list", "")
    rows: list[ExpRow] = []
    used: set[str] = set()

    def unique(label: str) -> str:
        base, n = label, 2
        while label in used:
            label, n = f"{base} ({n})", n + 1
        used.add(label)
        return label

    for entry in payload:
        if not isinstance(entry, dict):
            continue
        rev = str(entry.get("rev") or "")
        if rev == "workspace":
            base_label = unique("workspace")
            rows.append(_row(entry, base_label, "workspace", ""))
        else:
            base_label = unique(str(entry.get("name") or rev[:7]))
            rows.append(_row(entry, base_label, "baseline", ""))
        for exp in entry.get("experiments") or []:
            revs = exp.get("revs") or []
            for r in revs[:1]:
                name = str(r.get("name") or exp.get("name") or str(r.get("rev", ""))[:7])
                rows.append(_row(r, unique(name), "experiment", base_label))
    return rows


def experiments_table(rows: Sequence[ExpRow], only_changed: bool = False) -> pd.DataFrame:
    """One row per experiment: label, kind, baseline, then params and metrics as columns."""
    records = []
    for r in rows:
        rec: dict[str, Any] = {
            "experiment": r.label,
            "type": r.kind,
            "baseline": r.baseline,
            "rev": r.rev[:7] if r.rev != "workspace" else "workspace",
            "created": r.timestamp,
        }
        rec.update({f"param {k}": _cell(v) for k, v in r.params.items()})
        rec.update({f"metric {k}": v for k, v in r.metrics.items()})
        if r.error:
            rec["error"] = r.error
        records.append(rec)
    df = pd.DataFrame(records)
    if only_changed and len(df) > 1:
        keep = [
            c
            for c in df.columns
            if not c.startswith(("param ", "metric ")) or df[c].astype(str).nunique() > 1
        ]
        df = df[keep]
    return df


def _cell(v: Any) -> Any:
    return ", ".join(map(str, v)) if isinstance(v, list) else v


def _same(values: Sequence[Any]) -> bool:
    return len({json.dumps(v, sort_keys=True, default=str) for v in values}) <= 1


def param_diff(rows: Sequence[ExpRow], labels: Sequence[str]) -> pd.DataFrame:
    """Parameters side by side (one column per chosen experiment) and a `differs` flag."""
    chosen = [r for lab in labels for r in rows if r.label == lab]
    keys = sorted({k for r in chosen for k in r.params})
    records = []
    for k in keys:
        values = [r.params.get(k) for r in chosen]
        rec = {"parameter": k, **{r.label: _show(v) for r, v in zip(chosen, values, strict=True)}}
        rec["differs"] = not _same(values)
        records.append(rec)
    return pd.DataFrame(records, columns=["parameter", *[r.label for r in chosen], "differs"])


def _show(v: Any) -> str:
    if v is None:
        return "—"
    return ", ".join(map(str, v)) if isinstance(v, list) else str(v)


def metric_deltas(rows: Sequence[ExpRow], labels: Sequence[str]) -> pd.DataFrame:
    """Metrics side by side; `Δ <label>` columns are each experiment minus the first chosen."""
    chosen = [r for lab in labels for r in rows if r.label == lab]
    if not chosen:
        return pd.DataFrame()
    base = chosen[0]
    keys = sorted({k for r in chosen for k in r.metrics})
    records = []
    for k in keys:
        rec: dict[str, Any] = {"metric": k}
        for r in chosen:
            value = _num(r.metrics.get(k))
            rec[r.label] = math.nan if value is None else value
        for r in chosen[1:]:
            a, b = _num(rec[r.label]), _num(rec[base.label])
            rec[f"Δ {r.label}"] = a - b if a is not None and b is not None else math.nan
        records.append(rec)
    return pd.DataFrame(records)


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


_CURVE_FILE = re.compile(rf"^{TRAIN_DIR}/(?P<model>[^/]+)/plots/metrics/(?P<metric>[^/]+)\.tsv$")


def read_rev_curves(root: Path, rev: str, label: str, models: Sequence[str] = ()) -> pd.DataFrame:
    """The training curves (reports/train/<M>/plots/metrics/*.tsv) as they are at one git
    revision ("workspace" = the files on disk), read through DVC's file system so tracked and
    cached outputs both work. Long table: experiment (= label), model, metric, epoch, value.
    """
    from dvc.api import DVCFileSystem  # lazily: only the Experiments page reads other revisions

    columns = ["experiment", "model", "metric", "epoch", "value"]
    frames = []
    try:
        fs = DVCFileSystem(str(root), rev=None if rev == "workspace" else rev)
    except Exception as e:  # DVC raises many types (SCM, revision, repo): all mean "cannot read"
        raise DataError(
            Problem(
                "unavailable",
                f"revision `{label}`",
                f"DVC cannot open it ({e.__class__.__name__}: {e})",
                "",
            )
        ) from None
    try:
        for path in sorted(fs.glob(f"{TRAIN_DIR}/*/plots/metrics/*.tsv")):
            m = _CURVE_FILE.match(str(path).lstrip("/"))
            if not m or (models and m["model"] not in models):
                continue
            try:
                df = parse_tsv(fs.read_text(path), m["metric"], str(path), "")
            except DataError:
                continue  # a damaged file in an old revision: skip its curve
            frames.append(
                df.rename(columns={"step": "epoch"}).assign(
                    experiment=label, model=m["model"], metric=m["metric"]
                )
            )
    except Exception as e:
        raise DataError(
            Problem(
                "unavailable",
                f"revision `{label}`",
                f"DVC cannot read its curves ({e.__class__.__name__}: {e})",
                "",
            )
        ) from None
    finally:
        fs.close()
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]
