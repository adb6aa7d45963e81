"""Apply a profile: `python -m vitlab.profile oxford-pet` merges profiles/oxford-pet.yaml into
params.yaml.

Why overlays: a profile holds only what differs from the default, so it cannot drift from the
sections it does not touch. Mappings merge key by key, anything else is replaced, and a key set
to null is removed (how a profile drops the default's models). The result is validated before
params.yaml is replaced (atomically, comments kept); `git checkout params.yaml` undoes it.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from vitlab.core import config, contract
from vitlab.core.atomic import write_text
from vitlab.core.errors import VitlabError

PROFILES = Path("profiles")


def _merge(base: Any, changes: dict) -> None:
    """config.overlay, in place on ruamel's commented mappings (so comments survive)."""
    for key, value in changes.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def profile_path(name: str) -> Path:
    """A profile by name (`oxford-pet`) or by path."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml"))) or "(none)"
        raise VitlabError(f"profile {name!r}: {path} does not exist; known profiles: {known}")
    return path


def apply(params_path: Path, profile: Path) -> config.Params:
    """Merge `profile` into `params_path`, validate, and replace the file."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # long URLs stay on one line
    base = yaml.load(params_path.read_text())
    changes = yaml.load(profile.read_text()) or {}
    if not isinstance(changes, dict):
        raise VitlabError(f"{profile}: a profile is a mapping of the sections it changes")
    _merge(base, changes)
    out = io.StringIO()
    yaml.dump(base, out)
    text = out.getvalue()
    params = config.validate(YAML(typ="safe").load(text), f"{params_path} + {profile}")
    write_text(params_path, text)
    return params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vitlab.profile", description=__doc__)
    parser.add_argument("profile", help="a name in profiles/ (oxford-pet) or a path")
    parser.add_argument("--params", type=Path, default=contract.PARAMS)
    args = parser.parse_args(argv)
    try:
        path = profile_path(args.profile)
        params = apply(args.params, path)
    except VitlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{args.params}: applied {path} (models: {', '.join(params.models)})")


if __name__ == "__main__":
    main()
