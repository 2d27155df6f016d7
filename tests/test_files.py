"""The atomic-write helper: nothing half-written is ever left, and what is written follows the umask."""

import os
import stat

import pytest

from t5vae import files


def test_atomic_directory_and_file_leave_nothing_behind_on_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="crash"):
        with files.atomic_directory(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("crash")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with files.atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(FileExistsError, match="already exists"):
        with files.atomic_directory(out):
            pass
    with files.atomic_directory(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"] and list(tmp_path.iterdir()) == [out]
    f = tmp_path / "f.txt"
    f.write_text("old")
    with pytest.raises(OSError, match="disk full"):
        with files.atomic_file(f, "w") as fh:
            fh.write("new, cut short")
            raise OSError("disk full")
    assert f.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt", "out"]
    with files.atomic_file(f, "w") as fh:
        fh.write("new")
    assert f.read_text() == "new"


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_and_directories_get_the_umasks_permissions(tmp_path, mask):
    old = os.umask(mask)
    try:
        with files.atomic_file(tmp_path / "a.bin") as f:
            f.write(b"x")
        files.write_json(tmp_path / "b.json", {"k": 1})
        with files.atomic_directory(tmp_path / "d") as d:
            (d / "inner").write_text("y")
    finally:
        os.umask(old)
    for name, full in (("a.bin", 0o666), ("b.json", 0o666), ("d", 0o777)):
        got = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert got == full & ~mask, (name, oct(got), oct(full & ~mask))
    assert (tmp_path / "b.json").read_text() == '{\n  "k": 1\n}\n'


def test_umask_reads_the_process_umask_and_leaves_it_unchanged():
    old = os.umask(0o027)
    try:
        assert files.umask() == 0o027 and files.umask() == 0o027
    finally:
        os.umask(old)
