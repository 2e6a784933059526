"""Tests for probe.export: the lecture page, print figures, tables, and bundles in and out.

One real trace (the embedded Whisper base weights on a real speech clip) is made per session;
a copy of it with a hostile transcript checks escaping, and hand-built zip files check that
every kind of bad bundle is refused without touching the store.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
import types
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import probe
import probe.export
from probe.errors import OptionError, StoreError
from probe.export import chosen_windows, export_tables, export_trace, figure_names, import_bundle
from probe.plugins.token_probs.export import language_rows
from probe.store import Store, Trace
from tests.conftest import EXAMPLES, store_snapshot
from tests.dashboard_fixtures import dashboard_store  # noqa: F401  (session fixture)

HOSTILE = "<script>alert('pwned')</script>"
CHROMIUM = Path("/usr/bin/chromium")


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> Path:
    clip = EXAMPLES / "en_fox.flac"
    if clip.exists():
        return clip
    espeak = shutil.which("espeak-ng")
    assert espeak, "needs examples/en_fox.flac or espeak-ng to make speech"
    path = tmp_path_factory.mktemp("speech") / "fox.wav"
    subprocess.run([espeak, "-v", "en-us", "-w", str(path),
                    "The quick brown fox jumps over the lazy dog."], check=True)
    return path


@pytest.fixture(scope="session")
def fox(tmp_path_factory, base, speech) -> Trace:
    """A real trace with every built-in plugin."""
    return probe.run(speech, model=base, store=tmp_path_factory.mktemp("traces"), name="fox")


@pytest.fixture(scope="session")
def hostile(tmp_path_factory, fox) -> Trace:
    """A copy of ``fox`` whose name, transcript, a word and a token carry markup."""
    store = Store(tmp_path_factory.mktemp("hostile"))
    copy = store.path / fox.id
    shutil.copytree(fox.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(name=HOSTILE, transcript=f"The {HOSTILE} fox")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    words_file = copy / manifest["records"]["cross_attention.words"]["file"]
    words = json.loads(words_file.read_text())
    words[1]["word"] = HOSTILE
    words_file.write_text(json.dumps(words))
    tokens_file = copy / manifest["records"]["token_probs.tokens"]["file"]
    table = pq.read_table(tokens_file).to_pylist()
    table[1]["token"] = HOSTILE
    table[1]["top_k_tokens"][0] = HOSTILE
    pq.write_table(pa.Table.from_pylist(table), tokens_file)
    token_id = str(table[1]["token_id"])  # tokens are displayed from the bytes each window keeps
    for window in manifest["windows"]:
        if token_id in window.get("token_bytes", {}):
            window["token_bytes"][token_id] = HOSTILE.encode().hex()
    assert any(window.get("token_bytes", {}).get(token_id) == HOSTILE.encode().hex() for window in manifest["windows"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return store.open(fox.id)


@pytest.fixture(scope="session")
def page(tmp_path_factory, fox) -> tuple[Path, str]:
    path, = export_trace(fox, "html", out=tmp_path_factory.mktemp("html") / "fox.html")
    return path, path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def long_trace(dashboard_store) -> Trace:
    """31 s of noise then speech: two windows, the first skipped as no speech."""
    trace = dashboard_store.retried
    assert len(trace.manifest["windows"]) == 2
    return trace


@pytest.fixture(scope="session")
def long_page(tmp_path_factory, long_trace) -> str:
    path, = export_trace(long_trace, "html", out=tmp_path_factory.mktemp("long") / "long.html")
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, fox) -> Path:
    path, = export_trace(fox, "zip", out=tmp_path_factory.mktemp("bundle"))
    return path


# --- html --------------------------------------------------------------------------------------


def references(text: str) -> list[str]:
    """Every src/href/url()/@import target in a page."""
    attrs = re.findall(r"""\b(?:src|href|srcset|poster|action|data)\s*=\s*["']?([^"'\s>]*)""",
                       text, flags=re.IGNORECASE)
    urls = re.findall(r"""url\(\s*["']?([^"')]*)""", text, flags=re.IGNORECASE)
    imports = re.findall(r"""@import\s+["']?([^"';\s]*)""", text, flags=re.IGNORECASE)
    return attrs + urls + imports


def test_html_has_no_external_references(page):
    path, text = page
    refs = references(text)
    assert refs, "the page should at least embed audio and figures"
    external = [ref for ref in refs if not ref.startswith(("data:", "#"))]
    assert external == []
    assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.sub(r"data:[^\"']*", "", text),
                         flags=re.IGNORECASE)
    assert "<link" not in text and not re.search(r"<script[^>]*\bsrc", text)
    assert path.stat().st_size < 4 * 2**20


def test_html_embeds_the_trace_audio(page, fox):
    match = re.search(r'<audio[^>]*\bsrc="data:audio/flac;base64,([A-Za-z0-9+/=]+)"', page[1])
    assert match
    assert base64.b64decode(match.group(1)) == fox.audio_bytes()


def test_html_has_every_figure_as_an_image(page, fox):
    from PIL import Image

    text = page[1]
    drawable = [name for name in figure_names() if not name.startswith("effect_")]  # those need an intervention
    assert len(drawable) >= 12
    for name in drawable:
        match = re.search(rf'<figure id="figure-{name}">(?:(?!</figure>).)*?<img[^>]*'
                          r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
        assert match, f"figure {name} missing"
        image = Image.open(io.BytesIO(base64.b64decode(match.group(1))))
        assert image.size[0] > 200 and image.size[1] > 100


def test_html_shows_transcript_words_prompt_and_languages(page, fox):
    text = page[1]
    for word in fox.words():
        start = f'data-start="{word["start"]:.3f}"'
        assert start in text
    for token in fox.manifest["prompt"]:
        assert probe.export.markup.esc(token["token"]) in text
    assert f"{fox.manifest['no_speech_probability']:.3f}" in text
    assert ">en<" in text  # language table
    assert text.count("<script>") == 1  # only the page's own player script


def test_html_escapes_trace_text(hostile, tmp_path):
    path, = export_trace(hostile, "html", out=tmp_path / "hostile.html",
                         views=["language_probs"])
    text = path.read_text(encoding="utf-8")
    assert HOSTILE not in text
    assert "&lt;script&gt;" in text
    assert text.count("<script") == 1


def figure_png(page: str, anchor: str) -> bytes | None:
    match = re.search(rf'<figure id="figure-{anchor}">(?:(?!</figure>).)*?'
                      r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return base64.b64decode(match.group(1)) if match else None


def section(page: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">.*?</section>', page, flags=re.S)
    assert match, f"no section {name}"
    return match.group(0)


def test_html_of_long_audio_draws_each_windows_figures_and_prompt(long_page, long_trace):
    windows = long_trace.manifest["windows"]
    drawn = {}
    for number, window in enumerate(windows, start=1):
        part = section(long_page, f"window-{number}")
        assert f"Window {number} of 2: {window['start']:.2f}–{window['end']:.2f} s" in part
        for view in ("log_mel", "cross_attention", "language_probs"):
            drawn[view, number] = figure_png(part, f"{view}-window-{number}")
            assert drawn[view, number], f"{view} of window {number} missing"
        row = re.search(rf'<tr id="prompt-window-{number}">.*?</tr>', section(long_page, "task")).group(0)
        assert f"(p = {window['language_probability']:.3f})" in row
        assert f"{window['no_speech_probability']:.3f}" in row
        assert all(probe.export.markup.esc(token) in row for token in window["prompt_tokens"])
        assert f'<a href="#window-{number}">{number}</a>' in section(long_page, "windows")
    assert all(drawn[view, 1] != drawn[view, 2] for view in ("log_mel", "cross_attention", "language_probs"))
    assert "skipped: no speech" in section(long_page, "window-1") and "skipped" not in section(long_page, "window-2")
    # figures that do not depend on the window are drawn once, in "Inside the model"
    once = section(long_page, "figures")
    assert figure_png(once, "waveform") and figure_png(once, "windows") and figure_png(once, "token_probs")
    assert 'id="figure-log_mel"' not in long_page and long_page.count('id="figure-waveform') == 1
    assert "<th>window</th><th>step</th>" in section(long_page, "tokens")
    assert 'class="note">Per-window figures' not in long_page  # two windows: all of them, nothing to say


def test_windows_option_picks_the_windows_of_every_figure_format(long_trace, tmp_path):
    page = probe.export.render_html(long_trace, views=["waveform", "log_mel"], windows="2")
    assert 'id="window-2"' in page and 'id="window-1"' not in page
    assert figure_png(page, "log_mel-window-2") and figure_png(page, "waveform")
    assert '<a href="#window-2">2</a>' in page and '<a href="#window-1">' not in page
    assert 'id="prompt-window-1"' in page  # the prompt table still lists every window
    paths = export_trace(long_trace, "png", out=tmp_path / "png", views=["log_mel", "waveform"])
    assert [p.name for p in paths] == [f"{long_trace.id}-waveform.png", f"{long_trace.id}-log_mel-window-1.png",
                                       f"{long_trace.id}-log_mel-window-2.png"]
    paths = export_trace(long_trace, "svg", out=tmp_path / "svg", views=["language_probs"], windows=[2])
    assert [p.name for p in paths] == [f"{long_trace.id}-language_probs-window-2.svg"]
    pdf, = export_trace(long_trace, "pdf", out=tmp_path / "long.pdf", views=["log_mel", "language_probs"],
                        windows="1-2")
    subprocess.run(["pdftoppm", "-r", "20", "-png", str(pdf), str(tmp_path / "page")], check=True,
                   capture_output=True)
    assert len(list(tmp_path.glob("page*.png"))) == 1 + 2 * 2
    text = subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(pdf), "-"], capture_output=True, text=True).stdout
    if text:
        assert "pages 4–5: window 2 (log_mel, language_probs)" in text


def test_long_traces_draw_their_first_and_flagged_windows_by_default(long_trace, monkeypatch):
    def trace_of(n, retried=(), looping=(), skipped=()):
        return types.SimpleNamespace(id="fake", manifest={"windows": [
            {"index": i, "attempts": [{}, {}] if i in retried else [{}], "signals": {"looping": i in looping},
             "skipped": i in skipped} for i in range(n)]})

    assert chosen_windows(trace_of(8)) == (list(range(8)), True)
    assert chosen_windows(trace_of(40, retried={30}, looping={6}, skipped={2, 9})) == ([0, 1, 2, 3, 6, 9, 30], False)
    assert chosen_windows(trace_of(40, retried=set(range(40))))[0] == list(range(12))
    assert chosen_windows(trace_of(40), "all") == (list(range(40)), True)
    assert chosen_windows(trace_of(40), " 3,1-2 ,2") == ([0, 1, 2], False)
    # a trace longer than the limit says in the page what it left out and how to get it
    monkeypatch.setattr(probe.export.plan, "ALL_WINDOWS_UP_TO", 1)
    monkeypatch.setattr(probe.export.plan, "FIRST_WINDOWS", 1)
    page = probe.export.render_html(long_trace, views=["log_mel"])
    assert 'id="window-1"' in page and 'id="window-2"' not in page
    assert "windows 1 of 2" in page and f"probe export {long_trace.id} --windows all" in page
    assert 'id="window-2"' in probe.export.render_html(long_trace, views=["log_mel"], windows="all")


@pytest.mark.parametrize("value,message", [("0", "has windows 1–2"), ("3", "has windows 1–2"),
                                           ("1-x", "not a list of windows"), ("2-1", "runs backwards"),
                                           ("", "not a list of windows")])
def test_bad_windows_are_one_line_errors(long_trace, tmp_path, capsys, value, message):
    from probe.cli import main

    code = main(["export", long_trace.id, "--store", str(long_trace.path.parent), "--windows", value,
                 "-o", str(tmp_path / "x.html")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("probe: error:")
    assert list(tmp_path.iterdir()) == []


def test_windows_are_refused_for_table_formats(long_trace, tmp_path):
    with pytest.raises(OptionError, match="--windows applies to html"):
        export_trace(long_trace, "csv", out=tmp_path, windows="1")


# --- figure files ------------------------------------------------------------------------------

PRINT_VIEWS = ["log_mel", "cross_attention", "token_probs"]


def test_png_figures_are_print_resolution(fox, tmp_path):
    from PIL import Image

    paths = export_trace(fox, "png", out=tmp_path / "png", views=PRINT_VIEWS)
    assert [p.name for p in paths] == [f"{fox.id}-{view}.png" for view in PRINT_VIEWS]
    for path in paths:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert min(image.info["dpi"]) == pytest.approx(probe.export.PRINT_DPI, abs=0.5)
            assert image.size[0] >= 1000
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted(p.name for p in paths)


def test_svg_figures_parse_as_xml(fox, tmp_path):
    paths = export_trace(fox, "svg", out=tmp_path, views=["waveform", "language_probs"])
    assert [p.name for p in paths] == [f"{fox.id}-waveform.svg", f"{fox.id}-language_probs.svg"]
    for path in paths:
        assert ET.parse(path).getroot().tag.endswith("svg")


def test_pdf_handout_has_a_title_page_and_one_page_per_figure(fox, tmp_path):
    path, = export_trace(fox, "pdf", out=tmp_path / "deep" / "handout.pdf", views=PRINT_VIEWS)
    assert path == tmp_path / "deep" / "handout.pdf"
    subprocess.run(["pdftoppm", "-r", "20", "-png", str(path), str(tmp_path / "page")],
                   check=True, capture_output=True)
    assert len(list(tmp_path.glob("page*.png"))) == 1 + len(PRINT_VIEWS)
    text = subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(path), "-"],
                          capture_output=True, text=True).stdout
    if text:  # pdftotext ships with pdftoppm; check the title page says what it should
        assert "embedded:base" in text and "quick" in text


def test_unknown_view_lists_the_valid_ones(fox, tmp_path):
    with pytest.raises(OptionError, match="cross_attention") as info:
        export_trace(fox, "png", out=tmp_path, views=["cross_atention"])
    assert "'cross_atention'" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_views_are_refused_for_table_formats(fox, tmp_path):
    with pytest.raises(OptionError, match="--views"):
        export_trace(fox, "json", out=tmp_path / "x.json", views=["log_mel"])


def test_what_a_trace_lacks_is_left_out_or_refused(fox, tmp_path):
    store = Store(tmp_path / "store")
    shutil.copytree(fox.path, store.path / fox.id)
    manifest_path = store.path / fox.id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["records"] = {name: entry for name, entry in manifest["records"].items()
                           if not name.startswith("logit_lens.") and name != "token_probs.tokens"}
    manifest_path.write_text(json.dumps(manifest))
    partial = store.open(fox.id)
    path, = export_trace(partial, "html", out=tmp_path / "partial.html")
    text = path.read_text(encoding="utf-8")
    assert 'id="figure-language_probs"' in text and 'id="figure-cross_attention"' in text
    assert 'id="figure-logit_lens"' not in text and 'id="figure-token_probs"' not in text
    assert "Not drawn" not in text  # a figure whose plugin did not run is simply not there
    assert f'<div class="transcript">{fox.transcript}</div>' in text  # uncoloured, still there
    assert 'id="tokens"' not in text and "data-start" in text
    pdf, = export_trace(partial, "pdf", out=tmp_path / "partial.pdf")
    assert pdf.stat().st_size > 0
    with pytest.raises(StoreError, match="logit_lens"):
        export_trace(partial, "png", out=tmp_path / "png", views=["logit_lens"])


def test_unknown_format(fox):
    with pytest.raises(OptionError, match="html, png"):
        export_trace(fox, "docx")


def test_a_failed_export_leaves_no_file(fox, tmp_path, monkeypatch):
    from probe.export import writers

    def broken_write(path, data):
        Path(path).write_bytes(b"half a png")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers, "write_file", broken_write)
    with pytest.raises(OptionError, match="No space left"):
        export_trace(fox, "png", out=tmp_path, views=["waveform"])
    assert list(tmp_path.iterdir()) == []


def test_default_output_names(fox, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert export_trace(fox, "json") == [tmp_path / f"{fox.id}.json"]
    folder = tmp_path / f"{fox.id}-export"
    assert export_trace(fox, "csv") == [folder / f"{fox.id}-{t}.csv"
                                        for t in ("words", "languages", "tokens")]
    (tmp_path / "existing").mkdir()
    assert export_trace(fox, "json", out="existing") == [tmp_path / "existing" / f"{fox.id}.json"]
    assert not list(tmp_path.rglob(".*part*"))


# --- tables ------------------------------------------------------------------------------------


def expected_tables(trace: Trace) -> dict[str, list[dict]]:
    multitask = trace.json("token_probs.multitask")["windows"][0]["language_probs"]
    return {"words": trace.words(),
            "languages": [{"window": 0, "language": code, "probability": p}
                          for code, p in sorted(multitask.items(), key=lambda kv: -kv[1])],
            "tokens": trace.table("token_probs.tokens")}


def test_json_holds_tokens_words_and_languages(fox, tmp_path):
    path, = export_trace(fox, "json", out=tmp_path / "fox.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert {key: data[key] for key in ("tokens", "words", "languages")} == expected_tables(fox)
    assert data["trace"]["transcript"] == fox.transcript
    assert data["trace"]["prompt"][0] == "<|startoftranscript|>"
    assert data["languages"][0]["language"] == "en"


def parse_cell(cell: str, like):
    if isinstance(like, (list, dict)):
        return json.loads(cell)
    if isinstance(like, bool):
        return cell == "True"
    if isinstance(like, int):
        return int(cell)
    if isinstance(like, float):
        return float(cell)
    return cell


def test_csv_round_trips(fox, tmp_path):
    paths = export_trace(fox, "csv", out=tmp_path)
    assert [p.name for p in paths] == [f"{fox.id}-{t}.csv" for t in ("words", "languages", "tokens")]
    for (name, rows), path in zip(expected_tables(fox).items(), paths):
        with open(path, newline="", encoding="utf-8") as file:
            read = list(csv.DictReader(file))
        assert len(read) == len(rows), name
        assert [{k: parse_cell(row[k], orig[k]) for k in orig} for row, orig in zip(read, rows)] == rows
    assert export_tables(fox)["languages"] == language_rows(fox)


# --- bundles -----------------------------------------------------------------------------------


def test_bundle_imports_into_another_store_identically(fox, bundle, tmp_path):
    store = Store(tmp_path / "other")
    imported = import_bundle(bundle, store)
    assert imported.id == fox.id and imported.path.parent == store.path
    assert imported.manifest == fox.manifest
    for name, entry in fox.records.items():
        if entry["kind"] == "tensor":
            mine, theirs = imported.tensor(name), fox.tensor(name)
            assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs), name
        else:
            assert imported.record(name) == fox.record(name), name
    assert imported.audio_bytes() == fox.audio_bytes()
    assert not (store.path / ".tmp").exists()  # the staging area is cleaned up
    with pytest.raises(StoreError, match="already in store"):
        import_bundle(bundle, store)


def bundle_entries(good: Path) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(good) as archive:
        return [(info, archive.read(info)) for info in archive.infolist()]


def write_zip(path: Path, entries) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return path


def add(name: str, data: bytes = b"{}", mode: int = stat.S_IFREG | 0o644):
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    info.create_system = 3
    info.compress_type = zipfile.ZIP_DEFLATED
    return info, data


def with_manifest(entries, **changes):
    out = []
    for info, data in entries:
        if info.filename.endswith("/manifest.json"):
            manifest = json.loads(data)
            manifest.update(changes)
            data = json.dumps(manifest).encode()
        out.append((info, data))
    return out


def renamed(entries, root: str):
    return [(add(root + "/" + info.filename.split("/", 1)[1])[0], data) for info, data in entries]


def set_declared_size(path: Path, member: str, size: int) -> None:
    """Rewrite a member's uncompressed size in the central directory (what zipfile trusts)."""
    raw = bytearray(path.read_bytes())
    name = member.encode()
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46:at + 46 + name_len] == name:
            struct.pack_into("<I", raw, at + 24, size)
        at = raw.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(raw))


BAD_BUNDLES = {
    "traversal": (lambda e, root: e + [add("../evil.json")], "unsafe path"),
    "nested traversal": (lambda e, root: e + [add(f"{root}/json/../../evil.json")], "unsafe path"),
    "absolute": (lambda e, root: e + [add("/tmp/evil.json")], "unsafe path"),
    "symlink": (lambda e, root: e + [add(f"{root}/json/link.json", b"/etc/passwd",
                                         stat.S_IFLNK | 0o777)], "link"),
    "pickle": (lambda e, root: e + [add(f"{root}/tensors/evil.pkl", b"\x80\x04N.")], "pickles"),
    "unlisted file": (lambda e, root: e + [add(f"{root}/json/extra.json")], "manifest names"),
    "future schema": (lambda e, root: with_manifest(e, schema_version=999), "newer whisper-probe"),
    "two traces": (lambda e, root: e + renamed(e, "20990101-000000-other-abcdef"),
                   "exactly one trace folder"),
    "loose file": (lambda e, root: e + [add("notes.json")], "exactly one trace folder"),
    "no manifest": (lambda e, root: [x for x in e if not x[0].filename.endswith("manifest.json")],
                    "no manifest.json"),
    "broken manifest": (lambda e, root: [(i, b"{nope" if i.filename.endswith("manifest.json")
                                          else d) for i, d in e], "not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_bad_bundles_are_refused_and_change_nothing(case, bundle, tmp_path):
    edit, message = BAD_BUNDLES[case]
    entries = bundle_entries(bundle)
    root = entries[0][0].filename.split("/")[0]
    bad = write_zip(tmp_path / "bad.zip", edit(entries, root))
    store = Store(tmp_path / "store")
    before = store_snapshot(store.path)
    with pytest.raises(StoreError, match=message) as info:
        import_bundle(bad, store)
    assert "\n" not in str(info.value)
    assert store_snapshot(store.path) == before == []


def test_zip_bomb_by_declared_size_is_refused(bundle, tmp_path):
    entries = bundle_entries(bundle)
    root = entries[0][0].filename.split("/")[0]
    bomb_name = f"{root}/json/bomb.json"
    bomb = write_zip(tmp_path / "bomb.zip", entries + [add(bomb_name, b"0" * 1000)])
    set_declared_size(bomb, bomb_name, 0xFFFF0000)
    store = Store(tmp_path / "store")
    with pytest.raises(StoreError, match="zip bomb"), \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr(probe.export.bundle, "MAX_BUNDLE_BYTES", 2**30)
        import_bundle(bomb, store)
    assert store_snapshot(store.path) == []


def test_zip_bomb_that_really_inflates_is_refused(bundle, tmp_path, monkeypatch):
    entries = bundle_entries(bundle)
    root = entries[0][0].filename.split("/")[0]
    bomb = write_zip(tmp_path / "bomb.zip", entries + [add(f"{root}/json/bomb.json",
                                                           bytes(64 * 2**20))])
    assert bomb.stat().st_size < bundle.stat().st_size + 2**20  # 64 MiB in well under 1 MiB
    monkeypatch.setattr(probe.export.bundle, "MAX_BUNDLE_BYTES", 32 * 2**20)
    store = Store(tmp_path / "store")
    with pytest.raises(StoreError, match="zip bomb"):
        import_bundle(bomb, store)
    assert store_snapshot(store.path) == []


def test_member_that_inflates_past_its_declared_size_is_refused(bundle, tmp_path):
    entries = bundle_entries(bundle)
    lying = write_zip(tmp_path / "lying.zip", entries)
    audio = next(i.filename for i, _ in entries if i.filename.endswith(".flac"))
    set_declared_size(lying, audio, 1000)
    store = Store(tmp_path / "store")
    with pytest.raises(StoreError, match="cannot be unpacked"):
        import_bundle(lying, store)
    assert store_snapshot(store.path) == []


def test_too_many_members_is_refused(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(probe.export.bundle, "MAX_BUNDLE_MEMBERS", 5)
    with pytest.raises(StoreError, match="members"):
        import_bundle(bundle, Store(tmp_path / "store"))


def test_not_a_bundle(tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(StoreError, match="no bundle at"):
        import_bundle(tmp_path / "missing.zip", store)
    (tmp_path / "fake.zip").write_bytes(b"not a zip at all")
    with pytest.raises(StoreError, match="not a readable zip"):
        import_bundle(tmp_path / "fake.zip", store)
    assert store_snapshot(store.path) == []


def test_cli_export_and_import(fox, tmp_path, capsys):
    from probe.cli import main

    out = tmp_path / "fox.zip"
    assert main(["export", fox.id, "--store", str(fox.path.parent), "-f", "zip", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert main(["import", str(out), "--store", str(tmp_path / "store")]) == 0
    assert capsys.readouterr().out.strip() == f"imported {fox.id}"
    assert main(["export", fox.id, "--store", str(fox.path.parent), "-f", "png",
                 "--views", "nope"]) == 2
    assert "valid views:" in capsys.readouterr().err


# --- in a real browser -------------------------------------------------------------------------


@pytest.mark.browser
def test_page_plays_in_a_browser_offline(page, fox):
    import playwright.sync_api as sync_api

    assert CHROMIUM.exists(), "needs Debian's chromium at /usr/bin/chromium (scripts/setup.sh installs it)"
    path, _ = page
    first = fox.words()[1]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--autoplay-policy=no-user-gesture-required"])
        try:
            tab = browser.new_page()
            requests = []
            tab.on("request", lambda request: requests.append(request.url))
            tab.goto(path.as_uri())
            tab.wait_for_function("document.getElementById('audio').readyState >= 1")
            duration = tab.evaluate("document.getElementById('audio').duration")
            assert duration == pytest.approx(fox.manifest["audio"]["duration"], abs=0.1)
            tab.locator(f'.words button[data-start="{first["start"]:.3f}"]').click()
            tab.wait_for_function("document.getElementById('audio').currentTime > 0")
            assert tab.evaluate("document.getElementById('audio').currentTime") >= first["start"]
            tab.wait_for_function("document.getElementById('audio').paused", timeout=5000)
            stopped = tab.evaluate("document.getElementById('audio').currentTime")
            assert stopped == pytest.approx(first["end"], abs=0.15)
            broken = tab.evaluate("[...document.images].filter(i => !i.naturalWidth).length")
            assert broken == 0
        finally:
            browser.close()
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []


# --- one drawing per figure, the time range, no stray warnings ------------------------------------


class Counted:
    """A plugin with two small figures that count their drawings: ``spanned`` takes a window and a
    time range, ``steady`` neither."""

    name = "counted"

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    @probe.hookimpl
    def probe_figures(self, register):
        from probe.figures import new_figure

        def spanned(trace, window=None, time_range=None):
            self.calls.append(("spanned", {"window": window, "time_range": time_range}))
            fig = new_figure(4, 2)
            fig.subplots().plot([0, 1], [0, 1])
            return fig

        def steady(trace):
            self.calls.append(("steady", {}))
            fig = new_figure(4, 2)
            fig.subplots().bar([0, 1], [1, 2])
            return fig

        register("spanned", spanned, caption="A span.")
        register("steady", steady, caption="Steady.")


@pytest.fixture
def counted():
    from probe import contributions

    plugin = Counted()
    contributions.configure([plugin])
    try:
        yield plugin
    finally:
        contributions.configure()


def test_each_figure_is_drawn_once_for_every_format_of_an_export(fox, tmp_path, counted):
    paths = export_trace(fox, "html,png,svg,pdf", out=tmp_path / "all", views=["spanned", "steady"])
    assert sorted(p.name for p in paths) == sorted(
        [f"{fox.id}.html", f"{fox.id}.pdf"] + [f"{fox.id}-{v}.{ext}" for v in ("spanned", "steady") for ext in ("png", "svg")])
    assert sorted(name for name, _ in counted.calls) == ["spanned", "steady"]
    # the page's inline PNG is screen resolution, the files print resolution, from the one drawing
    page_png = figure_png(paths[0].read_text(encoding="utf-8"), "steady")
    print_png = (tmp_path / "all" / f"{fox.id}-steady.png").read_bytes()
    width = lambda png: struct.unpack(">I", png[16:20])[0]  # noqa: E731
    assert width(page_png) == 4 * probe.export.PAGE_DPI and width(print_png) == 4 * probe.export.PRINT_DPI
    # a later export of the same trace in this process (the dashboard's) reuses the saved figures
    counted.calls.clear()
    export_trace(fox, ["png", "html"], out=tmp_path / "again", views=["steady"])
    assert counted.calls == []


def test_time_range_reaches_the_figures_that_take_it_and_keeps_the_windows_it_overlaps(long_trace, tmp_path,
                                                                                        counted):
    first, second = long_trace.manifest["windows"]
    start, end = second["start"] + 0.5, second["end"] - 0.5
    path, = export_trace(long_trace, "html", out=tmp_path / "span.html", views=["steady", "spanned"],
                         time_range=f"{start}:{end}")
    assert counted.calls == [("steady", {}), ("spanned", {"window": 1, "time_range": (start, end)})]
    page = path.read_text(encoding="utf-8")
    assert 'id="window-2"' in page and 'id="window-1"' not in page
    assert chosen_windows(long_trace, None, (0.0, first["end"] - 1)) == ([0], False)
    assert chosen_windows(long_trace, None, (0.0, second["end"]))[0] == [0, 1]
    with pytest.raises(OptionError, match="--windows 1 lies outside --time-range"):
        export_trace(long_trace, "png", out=tmp_path, views=["spanned"], windows="1", time_range=(start, end))


@pytest.mark.parametrize("value, message", [
    ("5", "is not START:END in seconds"), ("a:b", "is not START:END"), ("10:5", "the end must come after"),
    ("3:3", "the end must come after"), ("0:999", "runs past the end of the clip"),
    ("=-1:2", "must not be negative")])
def test_bad_time_ranges_are_one_line_errors(fox, tmp_path, capsys, value, message):
    from probe.cli import main

    option = ["--time-range" + value] if value.startswith("=") else ["--time-range", value]
    assert main(["export", fox.id, "--store", str(fox.path.parent), "-o", str(tmp_path), *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith("probe: error: --time-range") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_an_export_warns_nothing(fox, tmp_path, recwarn):
    export_trace(fox, "html,png,pdf,json", out=tmp_path, views=["waveform", "token_probs"])
    assert [str(w.message) for w in recwarn] == []
    run = subprocess.run([sys.executable, "-m", "probe", "export", fox.id, "--store", str(fox.path.parent),
                          "-f", "svg,csv", "--views", "language_probs", "-o", str(tmp_path / "cli")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stderr == ""
    assert sorted(p.suffix for p in (tmp_path / "cli").iterdir()) == [".csv"] * 3 + [".svg"]


def test_a_figure_export_loads_neither_torch_nor_pandas(fox, tmp_path):
    """What an export needs is the store and matplotlib: torch (a sweep's import) and pandas
    (pyarrow.dataset's) cost a figure export most of a second each."""
    script = ("import sys; from probe.cli import main; code = main(sys.argv[1:]); "
              "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules)); sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", script, "export", fox.id, "--store", str(fox.path.parent), "-f",
                          "png", "--views", "token_probs", "-o", str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "[]"
    assert [p.name for p in tmp_path.iterdir()] == [f"{fox.id}-token_probs.png"]


def test_several_formats_need_a_folder(fox, tmp_path):
    (tmp_path / "file.html").write_text("")
    with pytest.raises(OptionError, match="several formats are written into one folder"):
        export_trace(fox, "html,pdf", out=tmp_path / "file.html")
    with pytest.raises(OptionError, match="unknown export format 'docx'"):
        export_trace(fox, "html,docx")


def test_figures_drawn_in_worker_processes_equal_those_drawn_here(fox, tmp_path):
    """An export forks one drawing process per core (2 here): the figures it writes are the bytes
    this process draws alone, the parent draws none of them, and a figure that raises in a worker
    is the same one-line error naming its plugin."""
    script = tmp_path / "export_in_workers.py"
    script.write_text(textwrap.dedent('''
        import json, os, sys
        import probe
        from probe import contributions
        from probe.errors import PluginError
        from probe.export import export_trace, render

        store, trace_id, out, pids = sys.argv[1:5]
        trace = probe.Store(store).open(trace_id)

        class Spy:
            name = "spy"

            @probe.hookimpl
            def probe_figures(self, register):
                from probe.figures import new_figure

                def pid(trace):
                    with open(pids, "a") as handle:
                        handle.write(f"{os.getpid()}\\n")
                    fig = new_figure(4, 2)
                    fig.subplots().plot([0, 1], [1, 0])
                    return fig

                def broken(trace):
                    raise KeyError("no such head")

                register("pid", pid, caption="Who drew me.")
                register("broken", broken, caption="Raises.")

        contributions.configure([Spy()])
        views = ["pid", "waveform", "log_mel", "language_probs", "token_probs"]
        for workers in ("2", "1"):
            os.environ["PROBE_EXPORT_WORKERS"] = workers
            render.clear_cache()  # each export draws afresh
            export_trace(trace, "png,svg", out=f"{out}/{workers}", views=views)
        os.environ["PROBE_EXPORT_WORKERS"] = "2"
        render.clear_cache()
        try:
            export_trace(trace, "png", out=f"{out}/broken", views=["pid", "broken"])
            error = None
        except PluginError as err:
            error = str(err)
        print(json.dumps({"parent": os.getpid(), "error": error}))
    '''))
    pids = tmp_path / "pids.txt"
    run = subprocess.run([sys.executable, str(script), str(fox.path.parent), fox.id, str(tmp_path), str(pids)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    drawn_by = [int(line) for line in pids.read_text().split()]
    # each export drew "pid" once: the first and last in a worker, the serial one in the parent
    assert len(drawn_by) == 3 and drawn_by[1] == result["parent"]
    assert drawn_by[0] != result["parent"] and drawn_by[2] != result["parent"]
    parallel, serial = sorted((tmp_path / "2").glob("*.png")), sorted((tmp_path / "1").glob("*.png"))
    assert [p.name for p in parallel] == [p.name for p in serial] and len(parallel) == 5
    for one, other in zip(parallel, serial):
        assert one.read_bytes() == other.read_bytes(), one.name
    assert len(list((tmp_path / "2").glob("*.svg"))) == 5
    assert result["error"].startswith("plugin 'spy' raised drawing figure 'broken': KeyError: 'no such head'")
    assert not (tmp_path / "broken").exists() or not list((tmp_path / "broken").iterdir())


def test_the_handout_title_page_drawn_beside_the_workers_lists_what_they_drew(fox, tmp_path):
    """With worker processes, the pdf's title page is drawn while they draw the figures (for every
    planned one); it is drawn again when one could not be drawn, listing it as missing."""
    script = tmp_path / "handout_in_workers.py"
    script.write_text(textwrap.dedent('''
        import os, sys
        import probe
        from probe import contributions
        from probe.errors import StoreError
        from probe.export import export_trace, render

        from probe.export import handout

        store, trace_id, out = sys.argv[1:4]
        trace = probe.Store(store).open(trace_id)
        drawn = []
        title_pdf = handout._title_pdf
        handout._title_pdf = lambda *args: (drawn.append(args[2]), title_pdf(*args))[1]

        class Absent:
            name = "absent"

            @probe.hookimpl
            def probe_figures(self, register):
                def absent(trace):
                    raise StoreError("trace has no record absent.thing")

                register("absent", absent, caption="Never drawn.")

        for plugins, workers in (([], "2"), ([], "1"), ([Absent()], "2")):
            contributions.configure(plugins)
            os.environ["PROBE_EXPORT_WORKERS"] = workers
            render.clear_cache()
            before = len(drawn)
            export_trace(trace, "pdf", out=f"{out}/{len(plugins)}-{workers}.pdf")
            print(len(drawn) - before)
    '''))
    run = subprocess.run([sys.executable, str(script), str(fox.path.parent), fox.id, str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    # drawn once beside the workers and used; drawn here alone; drawn beside them, then again
    assert run.stdout.split() == ["1", "1", "2"]

    def title(name: str) -> str:
        return subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(tmp_path / name), "-"], capture_output=True,
                              text=True, check=True).stdout

    assert title("0-2.pdf") == title("0-1.pdf")  # the title drawn beside the workers is the one drawn after
    assert "could not be drawn" not in title("0-2.pdf")
    assert "could not be drawn from this trace's records: absent" in title("1-2.pdf")


def test_figures_are_drawn_here_where_forking_is_not_safe(monkeypatch):
    from probe.export import render

    monkeypatch.delenv(render.WORKERS_ENV, raising=False)
    monkeypatch.setattr(render.threading, "active_count", lambda: 1)
    assert render.workers(1) == 1 and render.workers(100) == min(len(os.sched_getaffinity(0)), render.MAX_WORKERS)
    monkeypatch.setenv(render.WORKERS_ENV, "1")
    assert render.workers(100) == 1
    monkeypatch.setenv(render.WORKERS_ENV, "3")
    assert render.workers(100) == 3
    monkeypatch.setattr(render.threading, "active_count", lambda: 2)  # a dashboard's, a kernel's threads
    assert render.workers(100) == 1
