"""What every stage shares: its validated params and one line, not a traceback, on bad input.

Stages are thin: read params, call the library, write outputs atomically. A VitlabError becomes
`error: <message>` on stderr and exit status 2; SIGINT and SIGTERM end the stage with exit 130
and leave its previous outputs (writes are atomic). One process at a time runs a given stage
in a workspace.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vitlab.core import config, contract
from vitlab.core.errors import VitlabError


def load_params() -> config.Params:
    """params.yaml, validated against the schema."""
    return config.load(contract.PARAMS)


def model_argument(description: str | None, params: config.Params) -> str:
    """The one argument of a per-model stage (`train@B_16` runs `stages.train B_16`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("model", help="a key of the models mapping in params.yaml")
    model = parser.parse_args().model
    if model not in params.models:
        raise VitlabError(
            f"params.yaml: models.{model} is not defined; known models: {', '.join(params.models)}"
        )
    return model


LOCKS = Path(".dvc/tmp/vitlab-stages")


@contextlib.contextmanager
def one_writer(stage: str) -> Iterator[None]:
    """Refuse a second process running the same stage in this workspace (two `dvc repro`, or a
    flow beside a repro): both would write the same outputs. The lock dies with its process.
    Ranks that torchrun started run under the lock of the process that relaunched them."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        yield
        return
    LOCKS.mkdir(parents=True, exist_ok=True)
    with open(LOCKS / f"{stage}.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise VitlabError(
                f"stage {stage} is already running in this workspace ({holder}); wait for it "
                "to finish or stop it, then rerun"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield


def _stage_name() -> str:
    """`train@B_16` for `python -m stages.train B_16`, as DVC names it."""
    name = Path(sys.argv[0]).stem
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    return f"{name}@{args[0]}" if args else name


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def cli(main: Callable[..., None]) -> Callable[..., None]:
    """Run `main`, mapping user-fixable errors to one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            with one_writer(_stage_name()):
                main(*args, **kwargs)
        except VitlabError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted; rerun `dvc repro` to continue", file=sys.stderr)
            sys.exit(130)

    return wrapper
