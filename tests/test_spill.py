"""Spilling long runs' per-window arrays to disk, and records streamed from parts into the store."""

from __future__ import annotations

import numpy as np
import torch

import probe
from probe.audio import audio_from_array
from probe.spill import Concatenated, Spill


def test_concatenated_parts_stream_into_one_record_equal_to_the_joined_array(store):
    rng = np.random.default_rng(0)
    spill = Spill()
    parts = [rng.standard_normal((2, 3, n, f)).astype(np.float16) for n, f in ((4, 7), (1, 5), (6, 7))]
    handles = [spill.put(parts[0]), torch.from_numpy(parts[1]), parts[2]]  # spilled, torch, numpy
    expected = np.concatenate([np.pad(p, ((0, 0), (0, 0), (0, 0), (0, 7 - p.shape[-1]))) for p in parts], axis=2)
    with store.writer(name="parts") as writer:
        writer.add_tensor("x.joined", Concatenated(handles, axis=2, last=7), plugin="x")
    trace = writer.wait()
    assert trace.records["x.joined"]["shape"] == [2, 3, 11, 7] and trace.records["x.joined"]["dtype"] == "float16"
    np.testing.assert_array_equal(trace.tensor("x.joined"), expected)
    np.testing.assert_array_equal(np.asarray(trace.tensor("x.joined", lazy=True)[1]), expected[1])
    folder = spill.folder
    assert folder.is_dir() and len(list(folder.iterdir())) == 1
    spill.remove()
    assert not folder.exists()


def test_a_long_run_spills_cross_attention_and_removes_its_spill(tiny, store, monkeypatch):
    made = []
    original = Spill.put
    monkeypatch.setattr(Spill, "put", lambda self, array: made.append(self) or original(self, array))
    t = np.arange(16000 * 125) / 16000
    clip = audio_from_array((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, source="tone-125s")
    trace = probe.run(clip, model=tiny, store=store, max_new_tokens=3, disable=["attention", "logit_lens"])
    windows = trace.manifest["windows"]
    assert len(windows) >= 5 and made  # every window's weights went to disk while decoding
    weights = trace.tensor("cross_attention.weights")
    assert weights.shape[2] == sum(len(w["tokens"]) for w in windows)
    assert made[0].folder is None  # removed once the trace was written
