"""keep_freed_memory: a step's freed blocks are reused, not faulted in afresh every step."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc only",
)

# A "step" holds blocks of 1-4 MiB at once and frees them, as a training step's activations.
# The probe first puts malloc in its worst case for this (every block over 128 KiB mapped and
# unmapped), so that a keep_freed_memory() that changed nothing would show.
PROBE = textwrap.dedent(
    """
    import ctypes, resource, sys
    import numpy as np
    from vitlab.core import allocator
    ctypes.CDLL("libc.so.6").mallopt(allocator.M_MMAP_THRESHOLD, 128 << 10)
    if sys.argv[1] == "keep":
        assert allocator.keep_freed_memory()
    def step():
        held = [np.ones(n << 18, np.float32) for n in (1, 2, 3, 4)]
        return sum(float(a[-1]) for a in held)
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)
STEP_PAGES = (1 + 2 + 3 + 4) * 256  # 4 KiB pages the blocks of one step span


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@glibc
def test_freed_blocks_are_reused_without_page_faults():
    handed_back, kept = _faults("hand-back"), _faults("keep")
    assert handed_back >= 0.5 * 20 * STEP_PAGES  # the probe sees memory given back
    assert kept < 0.05 * 20 * STEP_PAGES, (kept, handed_back)
