"""runs.atomic_dir: a directory replaced in one rename, nothing beside it touched."""

from __future__ import annotations

import pytest

from mlxlora.runs import atomic_dir


def test_a_replaced_directory_leaves_its_siblings_alone(tmp_path):
    final, sibling = tmp_path / "out", tmp_path / ".out.old"
    sibling.mkdir()
    (sibling / "keep.txt").write_text("the user's")  # a name the old code used for its aside
    for text in ("first", "second"):
        with atomic_dir(final) as tmp:
            (tmp / "v.txt").write_text(text)
    assert (final / "v.txt").read_text() == "second"
    assert (sibling / "keep.txt").read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old", "out"]


def test_a_failed_write_keeps_the_old_directory(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "v.txt").write_text("good")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "v.txt").write_text("half")
        raise RuntimeError("killed")
    assert (final / "v.txt").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
