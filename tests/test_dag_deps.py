"""The DAG's bookkeeping is honest: every stage lists as deps each project file its command
imports (transitively) and each project file it reads, so `dvc repro` never serves a stale
result; and stages share code through the library, never through another stage's script."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest
from dvc.repo import Repo

from tests.conftest import ROOT

IGNORED_READS = (".dvc/", ".git/", ".gitignore", ".dvcignore", "params.yaml")  # DVC's own


def _module_file(root: Path, dotted: str) -> Path | None:
    base = root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(root: Path, path: Path) -> set[str]:
    """Dotted names a module imports anywhere in its body (function-level imports included)."""
    names: set[str] = set()
    package = ".".join(path.relative_to(root).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0] if "." in package else ""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


def import_closure(root: Path, module: str) -> set[Path]:
    """Project files loaded by `python -m module`: the modules and their packages' __init__."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        dotted = todo.pop()
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):  # the packages on the way are imported too
            f = _module_file(root, ".".join(parts[:i]))
            if f is None or f in seen:
                continue
            seen.add(f)
            todo += sorted(_imported(root, f))
    return seen


def _is_marker(path: Path) -> bool:
    """An __init__.py holding nothing but a docstring cannot change what a stage computes."""
    if path.name != "__init__.py":
        return False
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def _covered(rel: str, deps: list[str]) -> bool:
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


def stage_table(root: Path) -> dict[str, dict]:
    """{stage: {module, deps, outs}} from DVC's own reading of dvc.yaml (foreach expanded)."""
    table = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            m = re.match(r"python -m ([\w.]+)", stage.cmd or "")
            rel = lambda p: Path(p).resolve().relative_to(root.resolve()).as_posix()  # noqa: E731
            table[stage.name] = {
                "module": m.group(1) if m else None,
                "deps": [rel(d.fs_path) for d in stage.deps],
                "outs": [rel(o.fs_path) for o in stage.outs],
            }
    return table


def missing_imports(root: Path) -> dict[str, list[str]]:
    """{stage: project files its command imports that its deps do not cover}."""
    out = {}
    for name, s in stage_table(root).items():
        files = import_closure(root, s["module"])
        rels = sorted(f.relative_to(root).as_posix() for f in files if not _is_marker(f))
        missing = [r for r in rels if not _covered(r, s["deps"])]
        if missing:
            out[name] = missing
    return out


def test_every_stage_lists_every_file_it_imports():
    missing = missing_imports(ROOT)
    assert not missing, "\n".join(f"{s}: imports {', '.join(f)}, not in its deps"
                                  for s, f in missing.items())  # fmt: skip


def test_the_check_catches_an_unlisted_import(tmp_path):
    # the same tree with one stage importing a module its deps do not cover must fail
    for rel in ("dvc.yaml", "params.yaml"):
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    for folder in ("stages", "vitlab"):
        for f in (ROOT / folder).rglob("*.py"):
            dest = tmp_path / f.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(f.read_text())
    (tmp_path / ".dvc").mkdir()
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    select = tmp_path / "stages" / "select.py"
    select.write_text(select.read_text().replace(
        "from vitlab.selection import", "import vitlab.maps.figures  # noqa: F401\n"
        "from vitlab.selection import"))  # fmt: skip
    missing = missing_imports(tmp_path)
    assert set(missing) == {f"select@{m}" for m in ("B_16", "B_32", "L_16")}
    assert "vitlab/maps/figures.py" in missing["select@B_16"]
    assert "vitlab/maps/rollout.py" in missing["select@B_16"]  # transitively


def test_no_stage_imports_another_stage_script():
    for script in (ROOT / "stages").glob("*.py"):
        for name in _imported(ROOT, script):
            if name.startswith("stages."):
                assert name.split(".")[1] == "_common", (
                    f"{script.name} imports {name}: shared code belongs in vitlab/"
                )


def test_a_figure_module_is_no_dependency_of_training():
    # changing a colour map re-renders figures but never retrains
    table = stage_table(ROOT)
    heavy = {"train@B_16", "select@B_16", "average@B_16", "evaluate@B_16", "prepare"}
    for name in heavy:
        assert not _covered("vitlab/maps/figures.py", table[name]["deps"]), name
    assert _covered("vitlab/maps/figures.py", table["render_attention@B_16"]["deps"])


@pytest.mark.slow
def test_every_stage_lists_every_file_it_reads(micro_project):
    """What each stage process opened for reading in the shared micro run (an audit hook)."""
    root = micro_project.resolve()
    table = stage_table(root)
    logs = [json.loads(p.read_text()) for p in (root.parent / "reads").glob("*.json")]
    assert logs, "no stage recorded its reads: is tests/audit on PYTHONPATH?"
    seen, problems = set(), []
    for log in logs:
        script = Path(log["argv"][0]).stem
        name = script if len(log["argv"]) == 1 else f"{script}@{log['argv'][1]}"
        seen.add(name)
        s = table[name]
        for path in log["reads"]:
            p = Path(path)
            try:
                rel = p.relative_to(root).as_posix()
            except ValueError:
                continue  # outside the project: the interpreter, site-packages
            temporary = any(part.startswith(".") and part.endswith(".tmp") for part in p.parts)
            if (temporary or p.is_dir() or rel.endswith((".py", ".pyc"))
                    or rel.startswith(IGNORED_READS) or _covered(rel, s["outs"])):  # fmt: skip
                continue
            if not _covered(rel, s["deps"]):
                problems.append(f"{name}: reads {rel}, not in its deps")
    assert seen == set(table), f"stages that recorded nothing: {set(table) - seen}"
    assert not problems, "\n".join(sorted(set(problems)))
