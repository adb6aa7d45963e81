"""Records the files a stage process opens for reading, when $VITLAB_READS names a folder.

tests/conftest.py puts this folder on PYTHONPATH for the shared micro run, and
tests/test_dag_deps.py compares what each stage read with the deps dvc.yaml lists. Python's
audit hooks see every open() (numpy, torch and PIL included), so nothing is guessed.
"""

import atexit
import json
import os
import sys

_LOG = os.environ.get("VITLAB_READS")

if _LOG:
    _reads: set[str] = set()

    def _hook(event: str, args: tuple) -> None:
        if event != "open" or not args:
            return
        path, mode = args[0], args[1] if len(args) > 1 else "r"
        if isinstance(path, int) or path is None:
            return
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and flags & (os.O_WRONLY | os.O_RDWR)
        )
        if not writing:
            _reads.add(os.path.abspath(os.fsdecode(path)))

    def _flush() -> None:
        argv = getattr(sys, "argv", None) or [""]
        if "/stages/" in argv[0].replace(os.sep, "/"):
            with open(os.path.join(_LOG, f"{os.getpid()}.json"), "w") as f:
                json.dump({"argv": argv, "cwd": os.getcwd(), "reads": sorted(_reads)}, f)

    sys.addaudithook(_hook)
    atexit.register(_flush)
