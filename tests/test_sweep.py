"""Sweeps: one intervention family over many components on a clip set (probe.sweep).

- the cells a family makes on real configs, and one-line errors for what is out of range;
- faithful on the real base weights: each cell decodes exactly what ``probe.run`` with that
  intervention decodes (the encoder output reused across cells changes nothing), the clean cell's
  Δ log-prob is exactly 0, and a cell's Δ log-prob agrees with the effect the intervened trace
  records (:mod:`probe.effect`, another code path);
- resumable: a rerun skips the cells done, a line cut short by a crash is run again, a second
  process on the same sweep is refused; the store lists no sweep as a trace;
- the table, the heatmap, the export (html, csv, json, png), the CLI and the dashboard's Sweeps view.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import probe
from probe import sweep
from probe.errors import OptionError, StoreError
from probe.runner import as_clip
from probe.store import Store
from probe.tracer import decode_options
from tests.conftest import EXAMPLES

APP = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"
OPTIONS = dict(language="en", max_new_tokens=24)
SPEC = sweep.SweepSpec("heads", "decoder.self_attn", layers=(5,), heads=(0, 3))


def test_cells_of_each_family_on_the_base_config(base):
    config = base.model.config
    heads = sweep.cells(sweep.SweepSpec("heads", "decoder.self_attn"), config)
    assert [c.key for c in heads[:3]] == ["clean", "L0.H0", "L0.H1"] and len(heads) == 1 + 6 * 8
    assert heads[-1].interventions == ({"kind": "ablate", "attention": "decoder.self_attn", "layer": 5, "heads": [7]},)
    layers = sweep.cells(sweep.SweepSpec("layers", "encoder.self_attn", mean_of=("ref",)), config)
    assert [c.key for c in layers] == ["clean", "L0", "L1", "L2", "L3", "L4", "L5"]
    assert layers[1].interventions[0]["heads"] == list(range(8)) and layers[1].interventions[0]["mean_of"] == ["ref"]
    local = sweep.cells(sweep.SweepSpec("local", k=(5, 20), per_layer=True), config)
    assert [c.key for c in local] == ["clean", "k5.all", *[f"k5.L{i}" for i in range(6)],
                                      "k20.all", *[f"k20.L{i}" for i in range(6)]]
    assert local[1].interventions == ({"kind": "local", "k": 5, "layers": None},)


@pytest.mark.parametrize("spec, message", [
    (sweep.SweepSpec("heads", "decoder.self_attn", layers=(6,)), "layer 6 is out of range; this model has 6"),
    (sweep.SweepSpec("heads", "decoder.self_attn", heads=(8,)), "head 8 is out of range"),
    (sweep.SweepSpec("heads", "decoder.mlp"), "is not an attention kind"),
    (sweep.SweepSpec("local", k=(-1,)), "k as whole numbers"),
    (sweep.SweepSpec("rows"), "use one of heads, layers, local"),
])
def test_bad_sweeps_are_one_line_errors(base, spec, message):
    with pytest.raises(OptionError, match=message) as err:
        sweep.cells(spec, base.model.config)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def two_clips():
    items = json.loads((EXAMPLES / "clips.json").read_text())[:2]  # the two English clips, with their texts
    return [sweep.SweepClip(as_clip(EXAMPLES / item["file"]), item["text"], "speech", "en")
            for item in items]


@pytest.fixture(scope="module")
def done(base, two_clips, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("sweep") / "store")
    return sweep.run_sweep(base, SPEC, two_clips, store, decode_options(False, **OPTIONS), batch_size=2), store


def test_each_cell_decodes_what_probe_run_with_its_intervention_decodes(base, two_clips, done):
    found, store = done
    rows = {(row["cell"], row["clip"]): row for row in found.rows()}
    assert len(rows) == 3 * 2
    for number, clip in enumerate(two_clips):
        clean = probe.run(clip.clip, model=base, store=store, **OPTIONS)
        assert rows[("clean", number)]["transcript"] == clean.transcript
        assert rows[("clean", number)]["delta_logprob"] == 0.0 and rows[("clean", number)]["wer"] == 0.0
        for head in (0, 3):
            ablate = {"kind": "ablate", "attention": "decoder.self_attn", "layer": 5, "heads": [head]}
            intervened = probe.run(clip.clip, model=base, store=store, interventions=[ablate], **OPTIONS)
            row = rows[(f"L5.H{head}", number)]
            assert row["transcript"] == intervened.transcript
            # the same change of the clean transcript's log-prob, measured by the effect's own code path
            assert row["delta_logprob"] == pytest.approx(intervened.manifest["effect"]["delta_logprob_total"], abs=2e-2)
            assert row["clean_tokens"] == intervened.manifest["effect"]["tokens"]
    assert any(row["delta_logprob"] < -0.05 for row in rows.values())  # a real change shows
    assert found.manifest["runs"][0]["encoder_reused"] > 0  # decoder cells did not run the encoder again


def test_table_matrix_and_store_listing(done):
    found, store = done
    table = {row["cell"]: row for row in found.table()}
    assert set(table) == {"clean", "L5.H0", "L5.H3"}
    assert table["clean"]["ref_wer_change"] == 0.0 and table["clean"]["clips"] == 2
    for key in ("L5.H0", "L5.H3"):
        rows = [row for row in found.rows() if row["cell"] == key]
        assert table[key]["delta_logprob"] == pytest.approx(
            sum(r["delta_logprob"] for r in rows) / sum(r["clean_tokens"] for r in rows), abs=1e-6)
        assert table[key]["tokens"] == pytest.approx(np.mean([r["tokens"] for r in rows]))
    labels, columns, values = found.matrix("delta_logprob")
    assert labels == ["5"] and columns == ["0", "3"]
    assert values[0, 1] == pytest.approx(table["L5.H3"]["delta_logprob"])
    assert found.id not in store and all(info.id != "sweeps" for info in store.list())
    assert sweep.open_sweep(store, found.id[:12]).id == found.id
    with pytest.raises(OptionError, match="no clips in group 'nonspeech'"):
        found.table("nonspeech")


def test_a_rerun_resumes_where_the_last_one_stopped(base, two_clips, done, monkeypatch):
    found, store = done
    rows_file = found.path / "rows.jsonl"
    lines = rows_file.read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["cell"] != "L5.H3"]
    rows_file.write_text("\n".join(kept) + '\n{"cell": "L5.H3", "clip": 0, "transcr')  # a crash mid-line
    ran = []
    original = sweep._CellRunner.run
    monkeypatch.setattr(sweep._CellRunner, "run", lambda self, cell, *a: ran.append(cell.key) or original(self, cell, *a))
    messages = []
    again = sweep.run_sweep(base, SPEC, two_clips, store, decode_options(False, **OPTIONS), batch_size=2,
                            log=messages.append)
    assert ran == ["L5.H3"] and again.id == found.id
    assert messages[0].startswith(f"resuming sweep {found.id}: 2 of 3 cells done")
    assert {(r["cell"], r["clip"]) for r in again.rows()} == {(c, n) for c in ("clean", "L5.H0", "L5.H3") for n in (0, 1)}


def test_one_sweep_is_run_by_one_process_at_a_time(base, two_clips, done):
    import fcntl

    found, store = done
    with open(found.path / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(StoreError, match="is being run by another process"):
            sweep.run_sweep(base, SPEC, two_clips, store, decode_options(False, **OPTIONS), batch_size=2)


def test_encoder_cache_gives_the_encoder_output_and_restores_forward(base):
    import torch

    encoder = base.model.model.encoder
    cache = sweep.EncoderCache()
    features = torch.randn(1, 80, 3000)
    with torch.inference_mode():
        plain = encoder(features).last_hidden_state
        with cache.reused(encoder):
            first, second = encoder(features), encoder(features)
    assert cache.hits == 1 and second.last_hidden_state is first.last_hidden_state
    torch.testing.assert_close(first.last_hidden_state, plain, rtol=0, atol=0)
    assert "forward" not in encoder.__dict__  # the class's forward again
    batch = torch.randn(2, 80, 3000)
    with torch.inference_mode(), cache.reused(encoder):
        both = encoder(batch).last_hidden_state  # [2, frame, d_model]
        row = encoder(batch[1:2]).last_hidden_state  # a batch's row is kept on its own too
    assert cache.hits == 2
    torch.testing.assert_close(row, both[1:2], rtol=0, atol=0)


def test_a_clips_features_alone_are_its_rows_of_the_batch(base, two_clips):
    """What lets the teacher-forced passes reuse the batch's encoder outputs: one clip's log-Mel is
    byte-equal to its row of the batch's."""
    from probe.effect import window_segment
    from probe.tracer import Tracer
    from probe.plugin_manager import get_plugin_manager

    tracer = Tracer(base, get_plugin_manager(disabled=sweep._all_plugins()), decode_options(False, **OPTIONS))
    batch, _ = tracer.features([c.clip for c in two_clips])  # [2, n_mels, 3000]
    for row, clip in enumerate(two_clips):
        alone = window_segment(base.model, *tracer.features([clip.clip]), 0)
        assert sweep.EncoderCache.key(alone) == sweep.EncoderCache.key(batch[row:row + 1])


def test_export_writes_every_format(done, tmp_path):
    found, store = done
    from probe.export.sweep import export_sweep

    written = export_sweep(found, "html,csv,json,png", out=tmp_path / "out")
    names = {p.name for p in written}
    assert {"table.csv", "rows.csv", f"{found.id}.json", f"{found.id}.html", "heatmap-delta_logprob.png"} <= names
    page = (tmp_path / "out" / f"{found.id}.html").read_text()
    assert "data:image/png;base64," in page and "L5.H3" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing loads from the network
    data = json.loads((tmp_path / "out" / f"{found.id}.json").read_text())
    assert len(data["rows"]) == 6 and data["spec"]["family"] == "heads"
    header = (tmp_path / "out" / "table.csv").read_text().splitlines()[0]
    assert header.startswith("cell,") and "delta_logprob" in header
    with pytest.raises(OptionError, match="a sweep exports as"):
        export_sweep(found, "zip", out=tmp_path / "z")


def _probe(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "probe", *args], capture_output=True, text=True, cwd=cwd,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def test_cli_sweeps_prints_the_table_and_exports(done, tmp_path):
    found, store = done
    clips = tmp_path / "clips.json"
    clips.write_text(json.dumps([{"file": str(EXAMPLES / "en_fox.flac"), "text": "The quick brown fox jumps over "
                                  "the lazy dog.", "group": "speech", "language": "en"}]))
    result = _probe("sweep", "--clips", str(clips), "--store", str(store.path), "--family", "layers",
                    "--layers", "4-5", "--language", "en", "--max-new-tokens", "16", "--metric", "ref_wer")
    assert result.returncode == 0, result.stderr
    assert "[3/3] L5" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("sweep layers-decoder-self_attn-") and lines[2].startswith("clean")
    assert {line.split()[0] for line in lines[3:5]} == {"L4", "L5"}
    sweep_dir = Path(lines[0].split("(")[1].rstrip(")"))
    assert (sweep_dir / "heatmap-ref_wer.png").stat().st_size > 1000 and (sweep_dir / "table.csv").exists()
    exported = _probe("export", sweep_dir.name, "--store", str(store.path), "--format", "html", "--out", str(tmp_path / "e"))
    assert exported.returncode == 0, exported.stderr
    assert Path(exported.stdout.strip()).name == f"{sweep_dir.name}.html"


def test_a_mean_ablation_cell_measures_the_mean_ablation(base, two_clips, done):
    """The teacher-forced Δ log-prob of a --mean-of cell is that of the heads held at their mean
    (as probe.run's effect measures it), not of the heads zeroed."""
    found, store = done
    probe.run(two_clips[0].clip, model=base, store=store, name="reference", **OPTIONS)
    spec = sweep.SweepSpec("layers", "decoder.self_attn", layers=(5,), mean_of=("reference",))
    mean = sweep.run_sweep(base, spec, two_clips[1:], store, decode_options(False, **OPTIONS), batch_size=1)
    row = next(r for r in mean.rows() if r["cell"] == "L5")
    ablate = {"kind": "ablate", "attention": "decoder.self_attn", "layer": 5, "heads": list(range(8)),
              "mean_of": ["reference"]}
    intervened = probe.run(two_clips[1].clip, model=base, store=store, interventions=[ablate], **OPTIONS)
    assert row["transcript"] == intervened.transcript
    assert row["delta_logprob"] == pytest.approx(intervened.manifest["effect"]["delta_logprob_total"], abs=2e-2)
    zeroed = next(r for r in sweep.run_sweep(base, sweep.SweepSpec("layers", "decoder.self_attn", layers=(5,)),
                                             two_clips[1:], store, decode_options(False, **OPTIONS)).rows()
                  if r["cell"] == "L5")
    assert abs(zeroed["delta_logprob"] - row["delta_logprob"]) > 1.0  # zero is far from the mean


@pytest.mark.parametrize("args, message", [
    (["--layers", "9"], "layer 9 is out of range"),
    (["--group", "speech"], "--group speech: the clips have no groups"),
    (["--metric", "ref_wer"], "--metric ref_wer needs reference texts"),
    (["--k", "5"], "--k does not apply to --family heads"),
    (["--top", "0"], "must be a whole number ≥ 1"),
    (["--metric", "speed"], "--metric 'speed': use one of"),
    (["--layers", "x"], "expected whole numbers such as 0,2-4"),
    (["--clips", "/nonexistent.json"], "no such file"),
])
def test_cli_bad_sweeps_exit_2_with_one_line(tmp_path, args, message):
    audio = [] if "--clips" in args else [str(EXAMPLES / "en_fox.flac")]
    result = _probe("sweep", *audio, "--store", str(tmp_path / "s"), *args)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "s" / "sweeps").exists() or not any((tmp_path / "s" / "sweeps").iterdir())


def test_dashboard_sweeps_view_shows_heatmap_table_and_transcripts(done, monkeypatch):
    found, store = done
    st.cache_data.clear()
    monkeypatch.setattr(sys, "argv", ["app.py", "--store", str(store.path)])
    app = AppTest.from_file(str(APP), default_timeout=120)
    app.query_params["sweep"] = found.id
    app.switch_page("views/sweeps.py").run()
    assert not app.exception
    assert [t.value for t in app.title] == ["Sweeps"] and len(app.image) == 1
    picker = app.selectbox(key="sweep_pick")
    assert picker.options[picker.value].endswith(found.id)  # the sweep the URL names
    metric = app.selectbox(key=f"sweep_metric:{found.id}")
    assert "delta_logprob" in metric.options or "Δ log-prob of the clean transcript per token" in metric.options
    app.selectbox(key=f"sweep_cell:{found.id}").select("L5.H3").run()
    shown = " ".join(m.value for m in app.markdown)
    rows = [r for r in found.rows() if r["cell"] == "L5.H3"]
    assert all(row["transcript"] in shown for row in rows)
    assert not app.exception
