"""What every stage shares: reading its params section and turning input errors into one line.

Stages are thin: read params, call the library, write outputs atomically. A VitlabError (or a
missing file) becomes `error: <message>` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vitlab.errors import VitlabError

PARAMS_FILE = Path("params.yaml")


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """The whole params.yaml as a dict."""
    if not path.is_file():
        raise VitlabError(f"{path} is missing; run stages from the repository root")
    return yaml.safe_load(path.read_text()) or {}


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """One params section, or a clear error naming it."""
    if name not in params:
        raise VitlabError(f"params.yaml: section '{name}' is missing; see params.yaml in the repo")
    return params[name]


def model_params(params: dict[str, Any], model: str) -> dict[str, Any]:
    """The `models.<model>` entry, or a clear error listing the known keys."""
    models = section(params, "models")
    if model not in models:
        raise VitlabError(
            f"params.yaml: models.{model} is not defined; known models: {', '.join(models)}"
        )
    return models[model]


def model_argument(description: str | None) -> str:
    """The one argument of a per-model stage (`train@B_16` runs `stages.train B_16`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("model", help="a key of the models mapping in params.yaml")
    return parser.parse_args().model


def cli(main: Callable[..., None]) -> Callable[..., None]:
    """Run `main`, mapping user-fixable errors to one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            main(*args, **kwargs)
        except VitlabError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted; rerun `dvc repro` to resume", file=sys.stderr)
            sys.exit(130)

    return wrapper
