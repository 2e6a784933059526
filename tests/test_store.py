"""Tests for probe.store: round trips, lazy reads, atomic writes, and refusing hostile traces."""

from __future__ import annotations

import errno
import json
import os
import pickle
import struct
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import probe.store
from probe.errors import PluginError, StoreError
from probe.store import SCHEMA_VERSION, Store, Trace, TraceInfo, WriteQueue, default_store_dir

FLAC = b"fLaC" + bytes(range(60))  # the store keeps bytes as given; decoding is probe.audio's


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture(params=["now", "queued"])
def queue(request):
    """No queue (files written by the calling thread) or a background WriteQueue."""
    if request.param == "now":
        yield None
    else:
        with WriteQueue() as background:
            yield background


def write_trace(store: Store, name: str = "lecture", transcript: str = "hello world") -> Trace:
    with store.writer(name=name) as writer:
        writer.update_manifest(model={"id": "openai/whisper-tiny"}, transcript=transcript,
                               audio={"source": "clip.wav"})
        writer.add_tensor("token_probs.top_k_ids", np.arange(12).reshape(3, 4), "token_probs")
        writer.add_json("token_probs.prompt", [50258, 50259], "token_probs")
    return store.open(writer.id)


def rewrite_manifest(trace: Trace, **changes) -> None:
    manifest = json.loads((trace.path / "manifest.json").read_text())
    manifest.update(changes)
    (trace.path / "manifest.json").write_text(json.dumps(manifest))


def leftovers(store: Store) -> list[str]:
    """Everything in the store that is not a committed trace (temp dirs, partial files)."""
    tmp = store.path / ".tmp"
    return sorted(os.listdir(tmp)) if tmp.exists() else []


# --- round trips -------------------------------------------------------------------------------


def test_every_record_kind_round_trips(store):
    arrays = {
        "a.fp16": np.linspace(-2, 2, 24, dtype=np.float16).reshape(2, 3, 4),
        "a.fp32": np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32),
        "a.int64": np.arange(-3, 3, dtype=np.int64),
        "a.bool": np.array([[True, False], [False, True]]),
        "a.scalar": np.array(3.5, dtype=np.float32),
        "a.fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
    }
    grad = torch.randn(3, 2, requires_grad=True)
    rows = [{"word": "hello", "start": 0.0, "end": 0.4}, {"word": "world", "start": 0.5,
                                                          "end": 0.9}]
    with store.writer(name="Round trip") as writer:
        for name, array in arrays.items():
            writer.add_tensor(name, array, "activations", meta={"layer": 0})
        writer.add_tensor("t.fp16", torch.ones(2, 2, dtype=torch.float16), "activations")
        writer.add_tensor("t.grad", grad, "activations")
        writer.add_tensor("t.bf16", torch.tensor([1.5, -2.0], dtype=torch.bfloat16), "x")
        writer.add_table("cross_attention.words", rows, "cross_attention")
        writer.add_table("cols", {"step": [0, 1, 2], "p": [0.5, 0.25, 0.125]}, "token_probs")
        writer.add_json("lang", {"en": 0.9, "de": 0.1}, "token_probs", meta={"top": "en"})
        writer.add_audio(FLAC, 16000, source="clip.wav", duration=1.5)
        writer.update_manifest(model={"id": "tiny"}, transcript="hello world", language="en",
                               plugins={"activations": "1.0"}, decode={"beams": 1})
        assert writer.has("a.fp16") and not writer.has("missing")
    trace = store.open(writer.id)

    for name, array in arrays.items():
        got = trace.record(name)
        assert got.dtype == array.dtype and got.shape == array.shape
        np.testing.assert_array_equal(got, array)
        assert trace.records[name]["shape"] == list(array.shape)
        assert trace.records[name]["dtype"] == array.dtype.name
        assert trace.records[name]["meta"] == {"layer": 0}
    assert trace.tensor("t.fp16").dtype == np.float16
    np.testing.assert_array_equal(trace.tensor("t.grad"), grad.detach().numpy())
    np.testing.assert_array_equal(trace.tensor("t.bf16"), np.array([1.5, -2.0], np.float32))
    assert trace.table("cross_attention.words") == rows
    assert trace.words() == rows
    assert trace.record("cols") == [{"step": 0, "p": 0.5}, {"step": 1, "p": 0.25},
                                    {"step": 2, "p": 0.125}]
    assert list(trace.table_frame("cols").columns) == ["step", "p"]
    assert trace.json("lang") == {"en": 0.9, "de": 0.1}
    assert trace.records["lang"]["meta"] == {"top": "en"}
    assert trace.audio_bytes() == FLAC
    assert trace.manifest["audio"] == {"source": "clip.wav", "duration": 1.5,
                                       "sample_rate": 16000, "file": "audio.flac"}
    assert (trace.path / "audio.flac").read_bytes() == FLAC
    assert trace.manifest["schema_version"] == SCHEMA_VERSION
    assert trace.manifest["id"] == trace.id == writer.id
    assert trace.manifest["decode"] == {"beams": 1}
    assert (trace.name, trace.transcript, trace.language) == ("Round trip", "hello world", "en")
    assert set(trace.records_of("token_probs")) == {"cols", "lang"}
    assert trace.records["cols"]["kind"] == "table" and trace.records["lang"]["kind"] == "json"


def test_trace_id_layout(store):
    trace = write_trace(store, name="My Lecture: Week 1!")
    stamp, time, *slug, tail = trace.id.split("-")
    assert len(stamp) == 8 and len(time) == 6 and (stamp + time).isdigit()
    assert "-".join(slug) == "my-lecture-week-1"
    assert len(tail) == 6 and int(tail, 16) >= 0
    assert trace.manifest["created"].endswith("+00:00")
    with store.writer() as unnamed:
        pass
    assert len(unnamed.id.split("-")) == 3


def test_record_names_become_safe_unique_files(store):
    names = ["activations.encoder.blocks.0.hook_resid_post", "a/b", "../up", "..", "A", "a",
             "x" * 300, "ünï cödé"]
    with store.writer() as writer:
        for i, name in enumerate(names):
            writer.add_tensor(name, np.full(2, i), "p")
    trace = store.open(writer.id)
    files = [trace.records[name]["file"] for name in names]
    assert len({file.casefold() for file in files}) == len(names)
    assert trace.records[names[0]]["file"] == f"tensors/{names[0]}.safetensors"
    for i, (name, file) in enumerate(zip(names, files)):
        assert (trace.path / file).resolve().parent == (trace.path / "tensors").resolve()
        np.testing.assert_array_equal(trace.record(name), np.full(2, i))


def test_writer_rejects_misuse(store):
    with store.writer() as writer:
        writer.add_json("x", 1, "p")
        with pytest.raises(ValueError, match="already added"):
            writer.add_tensor("x", np.zeros(1), "p")
        with pytest.raises(ValueError, match="owns"):
            writer.update_manifest(records={})
        with pytest.raises(ValueError, match="cannot store"):
            writer.add_tensor("c", np.zeros(2, dtype=np.complex64), "p")
        with pytest.raises(ValueError, match="cannot store"):
            writer.add_tensor("o", np.array([object()]), "p")
        with pytest.raises(TypeError):
            writer.add_json("bad", {1, 2}, "p")
        with pytest.raises(ValueError, match="FLAC"):
            writer.add_audio(b"RIFF....WAVE")
        with pytest.raises(ValueError, match="plugin"):
            writer.add_json("y", 1, "")
    with pytest.raises(ValueError, match="already committed"):
        writer.add_json("late", 1, "p")
    assert list(store.open(writer.id).records) == ["x"]


def test_trace_without_audio_or_words(store):
    trace = write_trace(store)
    assert trace.audio_bytes() is None and trace.audio() is None
    assert trace.words() == []


def test_unknown_record_suggests_close_names(store):
    trace = write_trace(store)
    with pytest.raises(StoreError, match="did you mean token_probs.top_k_ids"):
        trace.record("token_probs.top_k_id")
    with pytest.raises(StoreError, match="is a json, not a tensor"):
        trace.tensor("token_probs.prompt")


def test_repr_is_readable(store):
    trace = write_trace(store, transcript="<b>bold</b> " * 20)
    text = repr(trace)
    assert trace.id in text and "openai/whisper-tiny" in text and "records=2" in text
    assert "<b>" not in trace._repr_html_()
    assert repr(store).startswith("Store(") and "traces=1" in repr(store)


# --- lazy reads --------------------------------------------------------------------------------


def test_lazy_tensor_reads_a_slice(store):
    layers = np.random.default_rng(1).standard_normal((4, 3, 5)).astype(np.float16)
    with store.writer() as writer:
        writer.add_tensor("resid", layers, "activations")
    view = store.open(writer.id).tensor("resid", lazy=True)
    assert list(view.get_shape()) == [4, 3, 5]
    np.testing.assert_array_equal(view[2], layers[2])
    np.testing.assert_array_equal(view[1:3, :, 4], layers[1:3, :, 4])


def test_open_and_list_do_not_read_record_files(store, monkeypatch):
    trace = write_trace(store)
    file = trace.path / trace.records["token_probs.top_k_ids"]["file"]
    file.write_bytes(b"garbage, not a tensor")

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor file was opened")

    monkeypatch.setattr(probe.store.safety, "safe_open", refuse)
    reopened = store.open(trace.id)
    assert reopened.transcript == "hello world"
    assert store.list()[0].error is None
    monkeypatch.undo()
    with pytest.raises(StoreError, match="token_probs.top_k_ids of trace .* is corrupt"):
        reopened.record("token_probs.top_k_ids")
    assert reopened.json("token_probs.prompt") == [50258, 50259]  # the others still read


# --- atomic writes -----------------------------------------------------------------------------


def test_exception_inside_writer_leaves_nothing(store):
    with pytest.raises(RuntimeError, match="plugin blew up"):
        with store.writer(name="doomed") as writer:
            writer.add_tensor("x", np.zeros(3), "p")
            writer.add_audio(FLAC)
            raise RuntimeError("plugin blew up")
    assert len(store) == 0 and store.list() == [] and leftovers(store) == []
    assert writer.id not in store


def test_abort_and_explicit_commit(store, queue):
    writer = store.writer(queue=queue)
    writer.add_json("x", 1, "p")
    writer.add_tensor("t", np.zeros(1000), "p")
    writer.abort()
    if queue is not None:
        queue.submit(lambda: None).result()  # the removal is queued behind the writes
    assert len(store) == 0 and leftovers(store) == []
    writer = store.writer(queue=queue)
    writer.add_json("x", 1, "p")
    trace = writer.commit()
    assert trace.json("x") == 1 and leftovers(store) == []


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("target", ["save_file", "write_table", "write_text", "rename"])
def test_disk_full_gives_store_error_and_no_leftovers(store, monkeypatch, target, queue):
    where = {"save_file": (probe.store.writer, "save_file"),
             "write_table": (probe.store.writer.pq, "write_table"),
             "write_text": (Path, "write_text"),
             "rename": (os, "rename")}[target]
    with pytest.raises(StoreError, match="No space left on device; free space or use --store"):
        with store.writer(queue=queue) as writer:
            monkeypatch.setattr(*where, _disk_full)
            writer.add_tensor("t", np.zeros(4), "p")
            writer.add_table("rows", [{"a": 1}], "p")
            writer.add_json("j", {"a": 1}, "p")
        writer.wait()  # a queued writer reports the failure here (or at its next call)
    monkeypatch.undo()
    assert len(store) == 0 and leftovers(store) == []


def test_queued_writer_returns_before_the_files_are_written(store, monkeypatch):
    """add_* only register the record; the queue's thread writes, and the trace appears at the end."""
    release, writing_threads = threading.Event(), set()
    original = probe.store.writer.save_file

    def held_save_file(*args, **kwargs):
        writing_threads.add(threading.get_ident())
        assert release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(probe.store.writer, "save_file", held_save_file)
    with WriteQueue() as queue:
        with store.writer(name="queued", queue=queue) as writer:
            writer.add_tensor("t", torch.arange(6, dtype=torch.float16).reshape(2, 3), "p")
            writer.add_json("j", {"a": 1}, "p")
            writer.update_manifest(transcript="queued")
        assert not writer.written() and len(store) == 0  # the commit waits behind the held write
        release.set()
        trace = writer.wait()
    assert writing_threads and threading.get_ident() not in writing_threads
    assert trace.name == "queued" and trace.transcript == "queued" and trace.json("j") == {"a": 1}
    assert trace.tensor("t").dtype == np.float16 and trace.tensor("t").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert leftovers(store) == []


def test_queued_writer_checks_dtypes_when_handed_over(store):
    with WriteQueue() as queue, pytest.raises(ValueError, match="cannot store a complex128"):
        with store.writer(queue=queue) as writer:
            writer.add_tensor("z", np.zeros(3, dtype=np.complex128), "p")
    assert len(store) == 0 and leftovers(store) == []


def test_records_made_by_functions_where_the_files_are_written(store, queue):
    """add_* given a function: it is called where the files are written (the queue's thread when
    queued), once, and the manifest lists the shape and dtype of what it made."""
    calls = []

    def made(value):
        def make():
            calls.append(threading.get_ident())
            return value
        return make

    with store.writer(name="made", queue=queue) as writer:
        writer.add_tensor("t", made(torch.arange(6, dtype=torch.float16).reshape(2, 3)), "p", meta={"axes": ["a", "b"]})
        writer.add_tensor("n", made(np.arange(4, dtype=np.int32)), "p")
        writer.add_table("rows", made([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]), "p")
        writer.add_json("j", made({"words": [1, 2]}), "p")
        assert writer.has("t") and writer.has("j")
    trace = writer.wait()
    assert len(calls) == 4
    if queue is None:
        assert set(calls) == {threading.get_ident()}
    else:
        assert threading.get_ident() not in calls
    assert trace.records["t"]["shape"] == [2, 3] and trace.records["t"]["dtype"] == "float16"
    assert trace.records["t"]["meta"] == {"axes": ["a", "b"]}
    assert trace.records["n"]["shape"] == [4] and trace.records["n"]["dtype"] == "int32"
    assert trace.records["rows"]["shape"] == [2, 2]
    assert trace.tensor("t").tolist() == [[0, 1, 2], [3, 4, 5]] and trace.tensor("n").tolist() == [0, 1, 2, 3]
    assert trace.table("rows") == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert trace.json("j") == {"words": [1, 2]}
    assert leftovers(store) == []


@pytest.mark.parametrize("kind", ["raises", "unstorable"])
def test_a_record_function_that_fails_names_the_plugin_and_leaves_nothing(store, queue, kind):
    def broken():
        if kind == "raises":
            raise ZeroDivisionError("division by zero")
        return np.zeros(3, dtype=np.complex128)

    message = "raised making record 'words'" if kind == "raises" else "made record 'words' as something it cannot store"
    with pytest.raises(PluginError, match=f"plugin 'aligner' {message}"):
        with store.writer(name="doomed", queue=queue) as writer:
            writer.add_json("ok", {"a": 1}, "aligner")
            if kind == "raises":
                writer.add_json("words", broken, "aligner")
            else:
                writer.add_tensor("words", broken, "aligner")
        writer.wait()
    assert len(store) == 0 and leftovers(store) == []


def test_concurrent_writers_all_land(store):
    def run(i):
        with store.writer(name="same name") as writer:
            writer.add_tensor("x", np.full(100, i), "p")
            writer.update_manifest(transcript=str(i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    infos = store.list()
    assert len(infos) == 8 and len({info.id for info in infos}) == 8
    assert sorted(int(info.transcript) for info in infos) == list(range(8))
    assert leftovers(store) == []


def test_reader_sees_only_complete_traces(store):
    half_written, release = threading.Event(), threading.Event()

    def run():
        with store.writer() as writer:
            writer.add_tensor("x", np.zeros(10), "p")
            half_written.set()
            release.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    assert half_written.wait(10)
    assert store.list() == [] and len(store) == 0
    release.set()
    thread.join()
    assert len(store.list()) == 1 and store.list()[0].error is None


# --- hostile and broken traces -----------------------------------------------------------------


@pytest.mark.parametrize("trace_id", ["../x", "..", ".", "", "/etc", "a/b", "a\\b", "x\0y",
                                      ".tmp", "C:evil"])
def test_path_like_ids_are_refused(store, trace_id):
    write_trace(store)
    with pytest.raises(StoreError, match="no trace .* `probe ls` lists them"):
        store.open(trace_id)
    with pytest.raises(StoreError, match="no trace"):
        store.delete(trace_id)
    assert trace_id not in store


def test_symlink_out_of_the_store_is_refused(store, tmp_path):
    elsewhere = write_trace(Store(tmp_path / "other"))
    (store.path / "escape").symlink_to(elsewhere.path, target_is_directory=True)
    with pytest.raises(StoreError, match="no trace"):
        store.open("escape")
    with pytest.raises(StoreError, match="no trace"):
        store.delete("escape")
    assert elsewhere.path.exists() and store.list() == []


@pytest.mark.parametrize("file", ["../../outside.safetensors", "/etc/passwd", "tensors\\x",
                                  "", None, 7])
def test_record_paths_outside_the_trace_are_refused(store, file):
    trace = write_trace(store)
    records = dict(trace.records)
    records["token_probs.top_k_ids"] = {**records["token_probs.top_k_ids"], "file": file}
    rewrite_manifest(trace, records=records)
    with pytest.raises(StoreError, match="is corrupt"):
        store.open(trace.id)


def test_symlinked_record_file_pointing_out_is_refused(store, tmp_path):
    trace = write_trace(store)
    secret = tmp_path / "secret.safetensors"
    file = trace.path / trace.records["token_probs.top_k_ids"]["file"]
    secret.write_bytes(file.read_bytes())
    file.unlink()
    file.symlink_to(secret)
    with pytest.raises(StoreError, match="points outside the trace"):
        store.open(trace.id).record("token_probs.top_k_ids")


def test_future_schema_is_refused(store):
    trace = write_trace(store)
    rewrite_manifest(trace, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match=r"newer whisper-probe \(schema 2 > 1\); upgrade"):
        store.open(trace.id)
    assert "newer whisper-probe" in store.list()[0].error


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"records": {}}',
                                     b'{"schema_version": "1", "records": {}}',
                                     b'{"schema_version": true, "records": {}}',
                                     b'{"schema_version": 1}', b'{"schema_version": 1, '
                                     b'"records": {"x": {"kind": "pickle", "file": "x"}}}',
                                     b"\xff\xfe", b"[" * 100000])
def test_corrupt_manifest_is_refused(store, content):
    trace = write_trace(store)
    (trace.path / "manifest.json").write_bytes(content)
    with pytest.raises(StoreError, match="is corrupt"):
        store.open(trace.id)


def test_missing_or_oversized_manifest_is_refused(store, monkeypatch):
    trace = write_trace(store)
    monkeypatch.setattr(probe.store.trace, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(StoreError, match="larger than 16 MB"):
        store.open(trace.id)
    (trace.path / "manifest.json").unlink()
    with pytest.raises(StoreError, match="not a trace"):
        store.open(trace.id)


def _tensor_bytes(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize("damage", ["truncated", "empty", "huge header", "bad json",
                                    "shape mismatch", "lying header", "two tensors", "torch.save"])
def test_corrupt_safetensors_is_refused(store, damage, tmp_path):
    trace = write_trace(store)
    file = trace.path / trace.records["token_probs.top_k_ids"]["file"]
    good = file.read_bytes()
    entry = {"dtype": "I64", "shape": [3, 4], "data_offsets": [0, 96]}
    if damage == "torch.save":
        torch.save(torch.zeros(3, 4), tmp_path / "t.pt")
    file.write_bytes({
        "truncated": good[:-10],
        "empty": b"",
        "huge header": struct.pack("<Q", 2**40) + b"{}",
        "bad json": struct.pack("<Q", 5) + b"{abc}",
        "shape mismatch": _tensor_bytes({"data": {**entry, "shape": [4, 3]}}, bytes(96)),
        "lying header": _tensor_bytes({"data": {**entry, "shape": [30, 4]}}, bytes(96)),
        "two tensors": _tensor_bytes({"data": entry, "more": {**entry, "data_offsets": [96, 192]}},
                                     bytes(192)),
        "torch.save": (tmp_path / "t.pt").read_bytes() if damage == "torch.save" else b"",
    }[damage])
    with pytest.raises(StoreError, match=r"record token_probs.top_k_ids of trace .* is corrupt "
                                         r"\(.+\); re-run the trace"):
        store.open(trace.id).record("token_probs.top_k_ids")
    with pytest.raises(StoreError, match="is corrupt"):
        store.open(trace.id).tensor("token_probs.top_k_ids", lazy=True)


class _Exploit:
    """Unpickling this creates the marker file: proof that something unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_pickle_disguised_as_records_is_never_unpickled(store, tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Exploit(marker))
    trace = write_trace(store)
    with store.writer() as writer:
        writer.add_tensor("t", np.zeros(2), "p")
        writer.add_table("rows", [{"a": 1}], "p")
        writer.add_json("j", {"a": 1}, "p")
        writer.add_audio(FLAC)
    trace = store.open(writer.id)
    for name in ("t", "rows", "j"):
        (trace.path / trace.records[name]["file"]).write_bytes(payload)
        with pytest.raises(StoreError, match="is corrupt"):
            trace.record(name)
    (trace.path / "manifest.json").write_bytes(payload)
    with pytest.raises(StoreError):
        store.open(trace.id)
    assert not marker.exists()
    pickle.loads(payload).close()  # the payload is live: loading it creates the marker
    assert marker.exists()


def test_missing_record_file_is_refused(store):
    trace = write_trace(store)
    (trace.path / trace.records["token_probs.prompt"]["file"]).unlink()
    with pytest.raises(StoreError, match="missing its record token_probs.prompt file"):
        trace.record("token_probs.prompt")


def test_missing_audio_file_is_refused(store):
    with store.writer() as writer:
        writer.add_audio(FLAC)
    trace = store.open(writer.id)
    (trace.path / "audio.flac").unlink()
    with pytest.raises(StoreError, match="missing its audio file audio.flac"):
        trace.audio_bytes()


def test_store_source_never_unpickles():
    for module in Path(probe.store.__file__).parent.glob("*.py"):
        source = module.read_text()
        for banned in ("pickle", "torch.load", "allow_pickle=True"):
            assert banned not in source, module


# --- store operations --------------------------------------------------------------------------


def test_delete_removes_good_and_broken_traces(store):
    keep, gone, broken = write_trace(store), write_trace(store), write_trace(store)
    (broken.path / "manifest.json").write_text("{")
    store.delete(gone.id)
    store.delete(broken.id)
    assert list(store) == [keep.id] and leftovers(store) == []
    with pytest.raises(StoreError, match="no trace"):
        store.open(gone.id)
    with pytest.raises(StoreError, match="no trace"):
        store.delete(gone.id)


def test_resolve_by_id_prefix_name_and_path(store, tmp_path, monkeypatch):
    first = write_trace(store, name="alpha")
    second = write_trace(store, name="beta")
    newer_beta = write_trace(store, name="beta")
    assert store.resolve(first.id).id == first.id
    assert store.resolve(first.id[:-2]).id == first.id
    assert store.resolve("alpha").id == first.id
    assert store.resolve("beta").id == max(second.id, newer_beta.id, key=lambda i: (
        store.open(i).created, i))
    assert store.resolve(str(first.path)).id == first.id
    monkeypatch.chdir(store.path)
    assert store.resolve(f"./{second.id}").id == second.id
    with pytest.raises(StoreError, match="matches 3 traces"):
        store.resolve(first.id[:8])
    with pytest.raises(StoreError, match="no trace 'gamma'"):
        store.resolve("gamma")
    with pytest.raises(StoreError, match="no trace"):
        store.resolve("")
    outside = write_trace(Store(tmp_path / "other"))
    with pytest.raises(StoreError, match="not a trace folder in store .* pass --store"):
        store.resolve(str(outside.path))


def test_list_is_newest_first_and_survives_broken_traces(store):
    ids = [write_trace(store, transcript="x" * 100).id for _ in range(3)]
    broken = write_trace(store)
    (broken.path / "manifest.json").write_text("[")
    (store.path / "stray-file.txt").write_text("not a trace")
    (store.path / ".hidden").mkdir()
    (store.path / "empty-folder").mkdir()
    infos = store.list()
    assert all(isinstance(info, TraceInfo) for info in infos)
    good = [info for info in infos if info.error is None]
    expected = sorted(ids, key=lambda i: (store.open(i).created, i), reverse=True)
    assert [info.id for info in good] == expected
    assert good[0].transcript == "x" * 80
    assert (good[0].model_id, good[0].audio_source, good[0].name) == (
        "openai/whisper-tiny", "clip.wav", "lecture")
    errors = {info.id: info.error for info in infos if info.error}
    assert set(errors) == {broken.id, "empty-folder"}
    assert "is corrupt" in errors[broken.id] and "not a trace" in errors["empty-folder"]
    assert len(store) == 5 and broken.id in store and ".hidden" not in store


def test_import_dir_copies_a_checked_trace(store, tmp_path):
    source = write_trace(Store(tmp_path / "other"))
    (source.path / "junk").symlink_to("/etc/passwd")
    imported = store.import_dir(source.path)
    assert imported.id == source.id and imported.path.parent == store.path
    np.testing.assert_array_equal(imported.record("token_probs.top_k_ids"),
                                  source.record("token_probs.top_k_ids"))
    assert not (imported.path / "junk").exists()
    with pytest.raises(StoreError, match="already in store"):
        store.import_dir(source.path)
    assert leftovers(store) == []


def test_import_dir_refuses_a_bad_trace(store, tmp_path):
    source = write_trace(Store(tmp_path / "other"))
    file = source.path / source.records["token_probs.top_k_ids"]["file"]
    file.write_bytes(file.read_bytes()[:-1])
    with pytest.raises(StoreError, match="is corrupt"):
        store.import_dir(source.path)
    rewrite_manifest(source, id="../escape")
    with pytest.raises(StoreError, match="no usable id"):
        store.import_dir(source.path)
    assert len(store) == 0 and leftovers(store) == []
    assert not (tmp_path / "escape").exists()


def test_default_store_dir_and_missing_store(monkeypatch, tmp_path):
    monkeypatch.setenv("WHISPER_PROBE_STORE", str(tmp_path / "env-store"))
    assert default_store_dir() == tmp_path / "env-store"
    assert Store().path == (tmp_path / "env-store").resolve()
    monkeypatch.delenv("WHISPER_PROBE_STORE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_store_dir() == tmp_path / ".local/share/whisper-probe/store"
    with pytest.raises(StoreError, match="no store at"):
        Store(tmp_path / "nowhere", create=False)


# --- property: whatever goes in comes out ------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(
    arrays=st.lists(hnp.arrays(
        dtype=st.sampled_from([np.float16, np.float32, np.int32, np.int64, np.bool_]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)), max_size=3),
    obj=st.dictionaries(st.text(), _json_values, max_size=5),
)
def test_arrays_and_json_round_trip_exactly(arrays, obj):
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        with store.writer() as writer:
            for i, array in enumerate(arrays):
                writer.add_tensor(f"a.{i}", array, "p")
            writer.add_json("obj", obj, "p")
            writer.update_manifest(extra=obj)
        trace = store.open(writer.id)
        for i, array in enumerate(arrays):
            got = trace.record(f"a.{i}")
            assert got.dtype == array.dtype and got.shape == array.shape
            np.testing.assert_array_equal(got, array)
        assert trace.json("obj") == obj
        assert trace.manifest["extra"] == obj


def test_audio_decodes_without_torch(tmp_path):
    import io
    import subprocess
    import sys

    import soundfile

    samples = (0.5 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 220)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="FLAC")
    store = Store(tmp_path / "s")
    with store.writer(name="tone") as writer:
        writer.add_audio(buffer.getvalue(), 16000)
    trace = store.open(writer.id)
    decoded, rate = trace.audio()
    assert rate == 16000 and np.allclose(decoded, samples, atol=1e-4)
    code = ("import sys; from probe.store import Store; s = Store(sys.argv[1]); "
            "s.open(s.list()[0].id).audio(); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(store.path)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_a_span_of_the_audio_is_read_alone(tmp_path):
    """One window of a long trace: audio(start, end) seeks in the FLAC, sample for sample what the
    whole decode holds there; spans past either end are clipped."""
    import io

    import soundfile

    samples = np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 70).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="FLAC", subtype="PCM_16")
    store = Store(tmp_path / "s")
    with store.writer(name="long") as writer:
        writer.add_audio(buffer.getvalue(), 16000)
    trace = store.open(writer.id)
    whole, _ = trace.audio()
    span, rate = trace.audio(31.37, 61.37)
    assert rate == 16000 and np.array_equal(span, whole[round(31.37 * 16000): round(61.37 * 16000)])
    assert np.array_equal(trace.audio(65.0, 90.0)[0], whole[65 * 16000:])
    assert len(trace.audio(-1.0, 0.5)[0]) == 8000 and len(trace.audio(80.0, 90.0)[0]) == 0


def test_corrupt_audio_is_a_store_error(tmp_path):
    store = Store(tmp_path / "s")
    with store.writer(name="tone") as writer:
        writer.add_audio(b"fLaC" + b"\x00" * 64, 16000)
    with pytest.raises(StoreError, match="audio .* corrupt"):
        store.open(writer.id).audio()
