"""Fault injection for tests/test_faults.py: signal a stage process at a chosen write.

$VITLAB_FAULT = "<SIGNAL>:<path substring>:<nth>:<delay s>" and $VITLAB_FAULT_STAGE = the
stage's argv tail (e.g. "train.py M16"). In that process only, the nth time a file or folder
whose path holds the substring is opened for writing or created, the process sends itself
SIGNAL (KILL, INT, TERM) after the delay (0: at once, inside the write). A delay written
"<function>#<k>" signals at the kth call of that Python function after the write instead
(e.g. "optimizer_step#2": inside the next epoch's second step, however fast the epochs are).
SLEEP holds the process for the delay instead (a slow stage, for concurrency tests). Python's
audit hooks see every open, so the point of the fault is chosen by what the stage does, not by
timing.
$VITLAB_FSIZE = bytes: that stage runs under RLIMIT_FSIZE (a full disk: writes past it fail
with EFBIG, Python ignoring SIGXFSZ).
"""

import os
import resource
import signal
import sys
import threading
import time

_SPEC = os.environ.get("VITLAB_FAULT", "")
_FSIZE = os.environ.get("VITLAB_FSIZE")
_STAGE = os.environ.get("VITLAB_FAULT_STAGE", "")


def _in_stage() -> bool:
    args = getattr(sys, "argv", None) or [""]  # not set yet while the interpreter starts
    argv = " ".join(a.rsplit("/", 1)[-1] for a in args)
    return "/stages/" in args[0] and argv.endswith(_STAGE)


if _FSIZE:

    def _limit(event: str, args: tuple) -> None:
        if not _limited and _in_stage():
            _limited.append(True)  # first: setrlimit raises an audit event of its own
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(_FSIZE), int(_FSIZE)))

    _limited: list = []
    sys.addaudithook(_limit)

if _SPEC:
    _sig, _needle, _nth, _delay = _SPEC.split(":")
    _state = {"seen": 0, "fired": False}

    def _fire() -> None:
        if _sig == "SLEEP":
            time.sleep(float(_delay))
            return
        if float(_delay) > 0:
            time.sleep(float(_delay))
        os.kill(os.getpid(), getattr(signal, f"SIG{_sig}"))

    def _hook(event: str, args: tuple) -> None:
        if _state["fired"] or event not in ("open", "os.mkdir") or not _in_stage():
            return
        path = args[0]
        if isinstance(path, int) or path is None:
            return
        if event == "open":  # io.open: (path, mode, flags); os.open: (path, None, flags)
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            if not writing:
                return
        if _needle not in os.fsdecode(path):
            return
        _state["seen"] += 1
        if _state["seen"] < int(_nth):
            return
        _state["fired"] = True
        if "#" in _delay:
            _fire_at_call(*_delay.split("#"))
        elif _sig == "SLEEP" or float(_delay) == 0:
            _fire()
        else:
            threading.Thread(target=_fire, daemon=True).start()

    def _fire_at_call(function: str, k: str) -> None:
        calls = {"n": 0}

        def profile(frame, event: str, arg) -> None:
            if event == "call" and frame.f_code.co_name == function:
                calls["n"] += 1
                if calls["n"] == int(k):
                    os.kill(os.getpid(), getattr(signal, f"SIG{_sig}"))

        sys.setprofile(profile)

    sys.addaudithook(_hook)
