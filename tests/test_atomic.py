"""Atomic, byte-reproducible outputs."""

from __future__ import annotations

import pytest
import torch

from vitlab.core.atomic import atomic_path, save_torch


def test_the_same_weights_give_the_same_bytes(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    save_torch(tmp_path / "a.pt", state)
    save_torch(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], state["w"])


def test_a_crash_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
