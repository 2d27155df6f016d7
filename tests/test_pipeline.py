"""The grain input pipeline (t5vae.pipeline): bucketed batches equal to the tokenizer's, disjoint covering shards,
an exactly resumable state, its checkpointing next to the train state (old checkpoints still restore), errors."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TEXT_LINES, random_params, require

import t5vae as tv
from t5vae import checkpoint, data, rundir, train

grain = require("grain")
from t5vae import pipeline, sources  # noqa: E402  (pipeline imports grain)

# 600 distinct lines of 3 to ~30 tokens, so that several length buckets fill
LINES = [f"v{i} = f({i}, " + ", ".join(f"a{j}" for j in range(i % 6)) + ")" for i in range(600)]
BUCKETS = data.buckets_for(32)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline") / "lines.array_record"
    assert sources.write_lines(path, LINES) == len(LINES)
    return path


@pytest.fixture(scope="module")
def tok():
    return data.train_tokenizer(LINES + TEXT_LINES, 400)


def shard(i=0, n=1, drop_remainder=True):
    return grain.sharding.ShardOptions(shard_index=i, shard_count=n, drop_remainder=drop_remainder)


def stream(
    corpus_file, tok, batch_size=8, seed=0, workers=0, sh=None, long_lines="truncate", buckets=BUCKETS
):
    src, _ = sources.open_source(str(corpus_file))
    return pipeline.GrainBatches(src, tok, buckets, batch_size, seed, workers, sh or shard(), long_lines)


def rows_as_text(batch, tok):
    return [tok.decode(r) for r in batch["input_ids"]]


def test_held_out_head_and_training_lines(corpus_file):
    train_src, held = sources.open_source(str(corpus_file), validation_percent=2.0)
    assert sources.held_lines(held) == LINES[:12]  # 2 % of 600 held out from the head
    assert len(train_src) == 588 and train_src.texts([0, 587]) == [LINES[12], LINES[-1]]
    sample = sources.sample_lines(train_src, 10)
    assert len(sample) == 10 and sample[0] == LINES[12] and sample[-1] == LINES[-1]


def test_batches_are_bucketed_padded_and_equal_the_tokenizers(corpus_file, tok):
    assert max(len(tok.encode(t)) for t in LINES) <= BUCKETS[-1]  # none cut: each row is a whole line
    s = stream(corpus_file, tok)
    train_lines = set(LINES[12:])
    seen, lengths = [], set()
    for i in range(40):
        b = s(i)
        assert set(b) == {"input_ids", "attention_mask"} and b["input_ids"].dtype == np.int32
        ids, mask = b["input_ids"], b["attention_mask"]
        assert ids.shape[0] == 8 and ids.shape[1] in BUCKETS
        np.testing.assert_array_equal(mask, ids != data.PAD)
        for row, text in zip(ids, rows_as_text(b, tok)):
            want = np.asarray(tok.encode(text), np.int32)
            np.testing.assert_array_equal(row[: len(want)], want)  # the line's tokens, EOS, then padding
            assert not row[len(want) :].any()
            assert data.bucket_of(len(want), BUCKETS) == ids.shape[1]  # padded to the line's own bucket
            assert text in train_lines
            seen.append(text)
        lengths.add(ids.shape[1])
    assert len(seen) == len(set(seen))  # 320 of 588 lines: still the first epoch, no line twice
    assert len(lengths) >= 3
    assert [s2 for s2 in rows_as_text(stream(corpus_file, tok, seed=1)(0), tok)] != rows_as_text(
        stream(corpus_file, tok, seed=0)(0), tok
    )  # the seed shuffles


def test_two_processes_shards_are_disjoint_and_cover_the_data(corpus_file, tok):
    for m in (588, 589, 590):
        for count in (2, 3):
            kept = [pipeline.shard_bounds(m, i, count, drop_remainder=False) for i in range(count)]
            assert [r for lo, hi in kept for r in range(lo, hi)] == list(range(m))  # contiguous, all of them
            even = [pipeline.shard_bounds(m, i, count) for i in range(count)]
            assert {hi - lo for lo, hi in even} == {m // count} and even[0][0] == 0
    n = len(LINES) - 12
    # batch size 1: every line leaves at once, so one epoch of a shard is exactly its lines, shuffled
    got = []
    for i in (0, 1):
        s = stream(corpus_file, tok, batch_size=1, sh=shard(i, 2))
        got.append([rows_as_text(s(k), tok)[0] for k in range(n // 2)])
    assert set(got[0]).isdisjoint(got[1])
    assert sorted(got[0] + got[1]) == sorted(LINES[12:])
    assert got[0] != LINES[12 : 12 + n // 2]  # shuffled, not file order


def test_larger_batches_of_two_shards_are_disjoint(corpus_file, tok):
    seen = []
    for i in (0, 1):
        s = stream(corpus_file, tok, sh=shard(i, 2))
        seen.append({t for k in range(15) for t in rows_as_text(s(k), tok)})
    assert len(seen[0]) == len(seen[1]) == 120 and seen[0].isdisjoint(seen[1])


@pytest.mark.parametrize("workers", [0, 2])  # 2: grain worker processes, each its slice (spawned: seconds)
def test_saved_state_continues_exactly(corpus_file, tok, workers):
    s = stream(corpus_file, tok, workers=workers)
    first = [s(i) for i in range(30)]  # past lines waiting in several buckets
    state = json.loads(json.dumps(s.get_state()))  # as the checkpoint stores it
    assert state["batches"] == 30
    rest = [s(i) for i in range(30, 110)]  # into the second epoch
    s.close()
    r = stream(corpus_file, tok, workers=workers)
    r.set_state(state)
    again = [r(i) for i in range(30, 110)]
    r.close()
    for a, b in zip(rest, again):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    assert rows_as_text(again[0], tok) != rows_as_text(first[0], tok)  # it continued, it did not start over
    with pytest.raises(ValueError, match="worker"):
        stream(corpus_file, tok, workers=2 - workers).set_state(state)
    with pytest.raises(ValueError, match="batch 0, asked for batch 5"):
        stream(corpus_file, tok)(5)


def test_long_lines_are_cut_like_encode_lines_or_refused(tmp_path, tok):
    long = " + ".join(f"name{i}" for i in range(40))
    path = tmp_path / "long.array_record"
    sources.write_lines(path, [long] * 40)
    buckets = data.buckets_for(16)
    b = stream(path, tok, batch_size=4, buckets=buckets)(0)
    want = data.encode_lines(tok, [long], 16).ids[0]
    assert b["input_ids"].shape == (4, 16)
    np.testing.assert_array_equal(b["input_ids"][0], want)
    with pytest.raises(ValueError, match=r"long\.array_record.* tokens .*largest bucket 16"):
        stream(path, tok, batch_size=4, buckets=buckets, long_lines="error")(0)


def test_bad_input_is_named(tmp_path, corpus_file, tok):
    with pytest.raises(FileNotFoundError, match="nope.array_record"):
        sources.open_source(str(tmp_path / "nope.array_record"))
    with pytest.raises(ValueError, match=r"no text feature 'text' \(it has \['title'\]\)"):
        pipeline.record_text({"title": b"x"}, "text", "tfds:demo[train]")
    with pytest.raises(ValueError, match=r"batch of 400 is larger .*shard 1 of 2: 294 lines"):
        stream(corpus_file, tok, batch_size=400, sh=shard(1, 2))
    with pytest.raises(ValueError, match="names no package"):
        sources.open_source("py:")
    tc = tv.TrainConfig(corpus=str(corpus_file), pipeline="grain", batch_size=1000)
    with pytest.raises(ValueError, match="588 lines.*one batch of 1000"):
        pipeline.load_corpus(tc)
    with pytest.raises(ValueError, match="pipeline must be one of"):
        tv.TrainConfig(pipeline="tfdata")


def test_the_default_run_does_not_import_grain():
    import subprocess

    code = "import sys, t5vae.train, t5vae.cli; sys.exit('grain' in sys.modules or 't5vae.pipeline' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- checkpoints -----------------------------------------------------------------------------------


def _state(x=1.0):
    return {"step": jnp.asarray(3, jnp.int32), "params": {"w": jnp.full((2, 3), x, jnp.float32)}}


def test_old_checkpoints_still_restore_and_the_data_item_rides_along(tmp_path):
    abstract = jax.eval_shape(_state)
    old = checkpoint.checkpoint_manager(tmp_path)  # what every run wrote before the grain pipeline
    checkpoint.save_train_state(old, 3, _state())
    old.wait_until_finished()
    old.close()
    assert (tmp_path / "checkpoints" / "3" / "default").is_dir()
    assert not (tmp_path / "checkpoints" / "3" / checkpoint.DATA_ITEM).exists()
    m = checkpoint.checkpoint_manager(tmp_path)
    step, state = checkpoint.restore_train_state(m, abstract)
    assert step == 3 and float(state["params"]["w"][0, 0]) == 1.0
    m.close()
    new = checkpoint.checkpoint_manager(tmp_path, with_data=True)
    checkpoint.save_train_state(new, 5, _state(2.0), {"batches": 5, "grain": {"read": [1, 2]}})
    new.wait_until_finished()
    new.close()
    m = checkpoint.checkpoint_manager(tmp_path, with_data=True)
    step, state, data_state = checkpoint.restore_train_state(m, abstract, with_data=True)
    assert (
        step == 5
        and float(state["params"]["w"][0, 0]) == 2.0
        and data_state == {"batches": 5, "grain": {"read": [1, 2]}}
    )
    m.close()
    m = checkpoint.checkpoint_manager(tmp_path)  # a new checkpoint's state restores on the old path too
    step, state = checkpoint.restore_train_state(m, abstract)
    assert step == 5 and float(state["params"]["w"][0, 0]) == 2.0
    m.close()
    wrong = jax.eval_shape(lambda: {"step": jnp.zeros((), jnp.int32), "params": {"w": jnp.zeros((4, 3))}})
    with pytest.raises(ValueError, match="does not match"):
        checkpoint.restore_train_state(
            checkpoint.checkpoint_manager(tmp_path, with_data=True), wrong, with_data=True
        )


# -- one tiny fit, stopped and resumed -------------------------------------------------------------


def test_fit_resumes_the_grain_stream_where_it_stopped(tmp_path, corpus_file, tok, monkeypatch):
    cfg = tv.Config(
        t5=tv.preset("tiny").replace(vocab_size=tok.vocab_size),
        n_latent_tokens=2,
        latent_size=4,
        max_length=32,
    )
    seen = {}

    def fake_step(*_, **__):  # records the batches; no model is compiled
        def step(state, batch, key, lr):
            seen.setdefault("batches", []).append(np.asarray(batch["input_ids"]))
            return {**state, "step": state["step"] + 1}, {"loss": 0.5}

        return step

    monkeypatch.setattr(train, "make_train_step", fake_step)
    params = random_params(cfg)

    def run(out, steps):
        tc = tv.TrainConfig(
            corpus=str(corpus_file),
            pipeline="grain",
            batch_size=8,
            steps=steps,
            checkpoint_every=3,
            progress=False,
            rename_prob=0.0,
            max_minutes=None,
        )
        out.mkdir(exist_ok=True)
        cfg.save_json(out / checkpoint.CONFIG_FILE)
        tc.save_json(out / rundir.TRAIN_CONFIG_FILE)
        seen["batches"] = []
        train.fit(cfg, tc, out, None, params, log=lambda *a: None, tok=tok)
        return seen["batches"]

    whole = run(tmp_path / "a", 8)
    first = run(tmp_path / "b", 4)
    rest = run(tmp_path / "b", 8)
    assert len(whole) == 8 and len(first) == 4 and len(rest) == 4
    assert len({b.shape for b in whole}) > 1  # the resume crosses lines waiting in several buckets
    for a, b in zip(whole, first + rest):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "b" / "checkpoints" / "8" / checkpoint.DATA_ITEM).is_dir()


# -- a run on an array_record corpus, end to end ------------------------------------------------------


def test_a_grain_run_on_an_array_record_corpus_evaluates_interpolates_and_serves(tmp_path, corpus_file):
    """Every reader of a run's corpus finds the lines of a streamed array_record run: eval, the aggregate
    prior behind interpolate/sample, and the demo's map and neighbours; both pipelines read the spec alike."""
    from conftest import TINY_FLAGS, run_cli

    spec = f"array_record:{corpus_file}"
    memory, streamed = (
        data.load_corpus(spec),
        pipeline.load_corpus(tv.TrainConfig(corpus=spec, pipeline="grain"))[0],
    )
    assert memory.validation == streamed.validation and set(streamed.train) <= set(memory.train)
    assert len(memory.train) + len(memory.validation) == len(LINES)
    out = tmp_path / "run"
    rc, stdout, err = run_cli(
        [
            "train",
            "--out",
            str(out),
            "--corpus",
            spec,
            "--pipeline",
            "grain",
            "--steps",
            "4",
            "--checkpoint-every",
            "2",
            "--rename-prob",
            "0",
            *TINY_FLAGS,
        ]
    )
    assert rc == 0, err
    assert rundir.corpus(out).validation == memory.validation
    rc, stdout, err = run_cli(["eval", str(out), "--pairs", "2"])
    assert rc == 0 and f"Validation: {len(memory.validation)} lines" in stdout, err
    rc, stdout, err = run_cli(["interpolate", str(out), "v1 = f", "v2", "--steps", "3"])
    assert rc == 0 and "0.500" in stdout, err
    rc, stdout, err = run_cli(
        ["sample", str(out), "-n", "2"]
    )  # the aggregate prior: fitted to the run's lines
    assert rc == 0 and not (out / rundir.AGGREGATE_FILE).exists(), err  # fitted into the user's cache
    demo = pytest.importorskip("t5vae.demo.backend")
    b = demo.Backend.from_run(out, map_lines=20, pool_lines=50)
    assert (
        b.map_lines and set(b.map_lines) <= set(memory.validation) and set(b.pool_lines) <= set(memory.train)
    )


def test_prose_reads_the_same_split_in_both_pipelines():
    from t5vae import data

    train, held = sources.open_source("prose", min_chars=20, max_chars=200)
    mem = data.load_corpus("prose", 2.0, 20, 200)
    assert len(train) == len(mem.train) and len(held) == len(mem.validation)
    assert held.texts(range(len(held))) == mem.validation and train.texts([0, 5]) == [
        mem.train[0],
        mem.train[5],
    ]


# -- damaged corpora ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """3,000 lines: several chunks of an array_record file, so a flipped byte lands inside one record's chunk."""
    path = tmp_path_factory.mktemp("damaged") / "big.array_record"
    sources.write_lines(path, [f"x{i} = f({i})" for i in range(3000)])
    return path


def _damage(good, path, how):
    from array_record.python.array_record_module import ArrayRecordWriter

    b = good.read_bytes()
    if how == "truncated":
        path.write_bytes(b[: len(b) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "text renamed":
        path.write_text("x = 1\ny = 2\n")
    elif how == "bit flipped":
        path.write_bytes(b[: len(b) // 3] + bytes([b[len(b) // 3] ^ 0xFF]) + b[len(b) // 3 + 1 :])
    else:  # a record that is not UTF-8
        w = ArrayRecordWriter(str(path), "group_size:1")
        for i in range(60):
            w.write(f"y{i} = {i}".encode())
        w.write(b"z = '\xff\xfe'")
        w.close()


@pytest.mark.parametrize(
    "how, says",
    [
        ("truncated", r"is not a readable array_record file \(RuntimeError: Corrupted"),
        (
            "empty",
            r"is not a readable array_record file \(RuntimeError: ArrayRecord file should be at least 64KB",
        ),
        ("text renamed", "is not a readable array_record file"),
        ("bit flipped", r": record \d+ cannot be read \(RuntimeError: Corrupted Riegeli"),
        ("not UTF-8", r": record 60 is not UTF-8 text \(invalid start byte at byte 5"),
    ],
)
def test_a_damaged_array_record_corpus_is_one_line_naming_the_file_and_record(tmp_path, big_file, how, says):
    import re

    from conftest import TINY_FLAGS, run_cli

    bad = tmp_path / "bad.array_record"
    _damage(big_file, bad, how)
    out = tmp_path / "run"
    rc, _, err = run_cli(
        [
            "train",
            "--out",
            str(out),
            "--corpus",
            f"array_record:{big_file},{bad}",
            "--pipeline",
            "grain",
            "--steps",
            "1",
            *TINY_FLAGS,
        ]
    )
    assert rc == 1 and err.startswith(f"error: {bad}") and err.count("\n") == 1 and re.search(says, err), err
    assert not out.exists()
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        data.load_corpus(f"array_record:{bad}")
