"""Atomic writes: a failed block leaves the previous output (or nothing), never a half-written one."""

from __future__ import annotations

import pytest

from tscope.geo.writers import atomic_dir, atomic_path


def test_atomic_path_replaces_only_on_success(tmp_path):
    dst = tmp_path / "answer.json"
    dst.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(dst) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert dst.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["answer.json"]
    with atomic_path(dst) as tmp:
        tmp.write_text("new")
    assert dst.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["answer.json"]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    dst = tmp_path / "model"
    dst.mkdir()
    (dst / "weights.safetensors").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(dst) as tmp:
        (tmp / "weights.safetensors").write_text("half")
        raise RuntimeError("killed mid-write")
    assert (dst / "weights.safetensors").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no hidden staging folder left
    with atomic_dir(dst) as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in dst.iterdir()) == ["config.json"]  # replaced whole, not merged
    with atomic_dir(tmp_path / "new" / "nested") as tmp:
        (tmp / "a").write_text("a")
    assert (tmp_path / "new" / "nested" / "a").read_text() == "a"
