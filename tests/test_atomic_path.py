"""negbench.atomic_path: the one way negbench writes a file a reader may look for while it is being
written (tokenizers, fetched text, image caches, reports, figures)."""

from __future__ import annotations

import os
import stat

import pytest

from negbench import atomic_path


def test_the_file_appears_only_when_the_block_ends(tmp_path):
    target = tmp_path / "new" / "report.md"  # its folder does not exist yet
    with atomic_path(target) as tmp:
        tmp.write_text("complete")
        assert tmp.parent == target.parent and tmp != target
        assert not target.exists()  # nobody sees it before the rename
    assert target.read_text() == "complete"
    assert os.listdir(target.parent) == ["report.md"]  # no temporary left behind
    mode = stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # created by the writer: the usual permissions


def test_an_error_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "cache.npz"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["cache.npz"]


def test_two_writers_of_one_file_get_their_own_temporaries(tmp_path):
    target = tmp_path / "tok.json"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # the outer block ends last: its file wins, whole
    assert os.listdir(tmp_path) == ["tok.json"]
