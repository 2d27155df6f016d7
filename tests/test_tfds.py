"""TFDS builders and readers (t5vae.tfds_data): array_record written and read back with as_data_source, the
same splits as the plain-Python corpora, exact text round trips, catalog datasets prepared here under their
registered name (nothing is downloaded), clear errors, and no TensorFlow on the path."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import require

from t5vae import corpus, data

tfds = require("tensorflow_datasets")
require("array_record")
from t5vae import tfds_data  # noqa: E402  (after the skip above)


def _stdlib_root(tmp_path) -> Path:
    """A tiny stand-in for the standard library: statements, non-statements, and a skipped test package."""
    root = tmp_path / "stdlib"
    (root / "pkg").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "mod.py").write_text(
        "\n".join(f"value_{i} = {i} * {i + 1}" for i in range(60)) + "\n"
        "# a comment line here\nx = 1  # trailing comment\n'''a docstring'''\n"
    )
    (root / "pkg" / "sub.py").write_text(
        "def f(a, b):\n    return a + b\nimport os.path\nprint('hi')\n"
        "if x:\n" + "\n".join(f"    call_{i}(arg)" for i in range(30)) + "\n"
    )
    (root / "test" / "skipped.py").write_text("never_seen = 12345\n")
    return root


def _files(builder) -> list[str]:
    return sorted(p.name for p in Path(builder.data_dir).iterdir())


def test_python_statements_splits_equal_the_plain_corpus(tmp_path):
    root, dd = _stdlib_root(tmp_path), tmp_path / "tfds"
    lines = corpus.stdlib_lines(10, 40, root=str(root))
    assert "never_seen = 12345" not in lines and "return a + b" in lines and len(lines) > 90
    names = set()
    for vp in (2.0, 20.0):  # 2%: the tiny-corpus fallback holds out 2 lines; 20%: the hash split
        b = tfds_data.python_statements_builder(dd, root=root, validation_percent=vp)
        c = tfds_data.load_tfds_corpus(b)
        want = corpus.Corpus.from_lines(lines, "stdlib", vp)
        assert c.train == want.train and c.validation == want.validation
        assert len(c.validation) >= 2 and not set(c.train) & set(c.validation)
        assert b.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
        assert "python_statements-train.array_record-00000-of-00001" in _files(b)
        names.add(b.builder_config.name)
    assert len(names) == 2  # different settings never share a directory
    short = tfds_data.load_tfds_corpus(tfds_data.python_statements_builder(dd, root=root, max_chars=16))
    assert max(map(len, short.train + short.validation)) <= 16 < max(map(len, lines))


def test_text_lines_round_trip_exactly(tmp_path):
    want = [
        "a\tb\tc",
        "é ü — 日本語 ✓",
        "@decorator",
        "  two leading spaces",
        "trailing  ",
        "x = 1",
        "y = [2]",
    ]
    f = tmp_path / "corpus.txt"
    f.write_bytes(("\r\n".join(want[:3]) + "\n\n   \n" + "\n".join(want[3:]) + "\nx = 1\n").encode("utf-8"))
    dd = tmp_path / "tfds"
    b = tfds_data.text_lines_builder([f], dd)
    c = tfds_data.load_tfds_corpus(b)
    plain = data.load_corpus(str(f))
    assert c.train == plain.train and c.validation == plain.validation
    assert sorted(c.train + c.validation) == sorted(want) and len(c.validation) >= 2
    other = tmp_path / "other.txt"
    other.write_text("\n".join(want[::-1]) + "\n", encoding="utf-8")
    assert tfds_data.text_lines_config([other]).name != b.builder_config.name  # content hash in the name
    copy = tmp_path / "sub" / "corpus.txt"
    copy.parent.mkdir()
    copy.write_bytes(f.read_bytes())
    assert tfds_data.text_lines_config([copy]).name == b.builder_config.name
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        tfds_data.text_lines_builder([tmp_path / "missing.txt"], dd)
    with pytest.raises(ValueError, match="text_lines_builder"):
        data.load_corpus("tfds:text_lines")


def test_load_corpus_tfds_python_statements_equals_stdlib(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    c = data.load_corpus("tfds:python_statements", 2.0, 10, 16)  # the real stdlib, short lines: quick
    plain = data.load_corpus(None, 2.0, 10, 16)
    assert len(plain.train) > 1000 and c.train == plain.train and c.validation == plain.validation
    assert c.source.startswith("tfds:python_statements/c10-16_v2_")
    assert any(p.name.startswith("c10-16_v2_") for p in (tmp_path / "python_statements").iterdir())


def _prepare_catalog(dd, train, test):
    """Write ``imdb_reviews`` (the catalog's own class, features and version) from local lines into ``dd``."""
    imdb = tfds.builder_cls("imdb_reviews")

    class LocalImdb(imdb, skip_registration=True):
        name = "imdb_reviews"
        pkg_dir_path = imdb._get_pkg_dir_path()

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(train),
                "test": self._generate_examples(test),
                "unsupervised": self._generate_examples(["unlabelled one"]),
            }

        def _generate_examples(self, lines):
            for i, s in enumerate(lines):
                yield i, {"text": s, "label": i % 2}

    LocalImdb(data_dir=dd, file_format="array_record").download_and_prepare()


def test_prepared_catalog_dataset_reads_by_name(tmp_path, monkeypatch):
    dd = tmp_path / "tfds"
    train, test = ["great film\twith tabs", "très bien @ 10/10", "bad"], ["ok", "meh"]
    _prepare_catalog(dd, train, test)
    monkeypatch.setenv("TFDS_DATA_DIR", str(dd))
    for spec in ("tfds:imdb_reviews", "tfds:imdb_reviews/plain_text:1.0.0:text"):
        c = data.load_corpus(spec)
        assert sorted(c.train) == sorted(train) and sorted(c.validation) == sorted(
            test
        )  # test: no validation
    assert tfds_data.tfds_lines("imdb_reviews", "unsupervised") == ["unlabelled one"]
    with pytest.raises(ValueError, match=r"no text feature 'label'.*'text': 'Text'"):
        data.load_corpus("tfds:imdb_reviews:label")
    with pytest.raises(ValueError, match="no split 'validation'.*'test'"):
        tfds_data.tfds_lines("imdb_reviews", "validation")
    info = Path(tfds.builder("imdb_reviews", data_dir=dd).data_dir) / "dataset_info.json"
    meta = json.loads(info.read_text())
    assert meta["fileFormat"] == "array_record"
    info.write_text(json.dumps({**meta, "fileFormat": "tfrecord"}))  # as `tfds build` writes by default
    with pytest.raises(ValueError, match="stored as tfrecord.*--file_format=array_record"):
        data.load_corpus("tfds:imdb_reviews")


def test_missing_datasets_give_clear_errors(tmp_path, monkeypatch):
    dd = tmp_path / "empty"
    monkeypatch.setenv("TFDS_DATA_DIR", str(dd))
    with pytest.raises(
        FileNotFoundError,
        match=rf"'imdb_reviews/plain_text/1.0.0' is not prepared in data_dir "
        rf"{dd}.*never downloads.*tfds build imdb_reviews",
    ):
        data.load_corpus("tfds:imdb_reviews")
    assert not (dd / "downloads").exists() and not (dd / "imdb_reviews").exists()
    with pytest.raises(ValueError, match=f"no TFDS dataset named 'no_such_corpus_x'.*{dd}"):
        tfds_data.load_tfds_corpus("no_such_corpus_x", data_dir=dd)
    with pytest.raises(ValueError, match="bad TFDS corpus spec"):
        data.load_corpus("tfds:imdb_reviews:text:extra")


def test_missing_tensorflow_datasets_names_the_install(monkeypatch):
    import t5vae

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "t5vae.tfds_data")
    monkeypatch.delattr(t5vae, "tfds_data")
    with pytest.raises(ImportError, match=r"pip install tensorflow-datasets array_record"):
        data.load_corpus("tfds:python_statements")


_SCRIPT = """
import importlib.machinery, importlib.util, json, sys
class NoTF:  # wraps the path finder: tensorflow is not found, exactly as when it is not installed
    def __init__(self, f): self.f = f
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."): return None
        return self.f.find_spec(name, path, target)
    def invalidate_caches(self): self.f.invalidate_caches()
if sys.argv[1] == "block":
    sys.meta_path[:] = [NoTF(f) if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    assert importlib.util.find_spec("tensorflow") is None
else:
    assert importlib.util.find_spec("tensorflow") is not None
from t5vae import tfds_data
a = tfds_data.load_tfds_corpus(tfds_data.python_statements_builder(sys.argv[2], root=sys.argv[3]))
b = tfds_data.load_tfds_corpus(tfds_data.text_lines_builder([sys.argv[4]], sys.argv[2]))
tf = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
print(json.dumps({"tf": tf, "a": [a.train, a.validation], "b": [b.train, b.validation]}))
"""


@pytest.mark.parametrize("mode", ["block", "installed"])
def test_no_tensorflow_on_the_build_and_read_path(tmp_path, mode):
    root, f = _stdlib_root(tmp_path), tmp_path / "lines.txt"
    f.write_text("x = 1\ny = 'é'\n@deco\nz\t= 3\nprint(x)\n", encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT), mode, str(tmp_path / "tfds"), str(root), str(f)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["tf"] == []  # not imported even when installed
    a = corpus.Corpus.from_lines(corpus.stdlib_lines(root=str(root)), "stdlib")
    b = data.load_corpus(str(f))
    assert got["a"] == [a.train, a.validation] and got["b"] == [b.train, b.validation]
