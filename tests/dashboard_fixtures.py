"""A real trace store for the figure, dashboard and browser tests, built once per session.

Real decoding with the embedded Whisper base weights on the example clips: an English trace that
also carries a third-party plugin's records; a transcribe + translate pair of the Mandarin clip,
recorded with fewer plugins to keep the session short (the transcribe one lacks the attention,
logit-lens and activations records, so views that need them must show an error); and a copy of
the English trace with one record file deleted (a damaged trace); the English clip once more for
each built-in plugin, traced with ``-p no:NAME``; and 35.7 s of the English clips one after
another (two windows, speech in both; without the attention and logit-lens plugins); the Mandarin
clip once more with every built-in plugin.  Two
third-party plugins are installed as entry points in ``plugin_dir`` (put that folder on
``sys.path`` / ``PYTHONPATH`` for the dashboard to find them) and load themselves for the English trace: a small module that stores a 1-D series and
a table and registers a page, and the worked example ``examples/plugins/encoder_change``,
installed with pip; the README's own ``conv_energy`` example is passed as a file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from probe.plugin_manager import DEFAULT_PLUGINS
from tests.conftest import EXAMPLES
from tests.test_readme import plugin_example

PLUGIN_MODULE = "loudness_plugin"
PLUGIN_SOURCE = textwrap.dedent('''
    """Loudness: a third-party whisper-probe plugin, as a user would write one."""
    import numpy as np

    from probe import hookimpl

    name = "loudness"
    __version__ = "0.1"


    @hookimpl
    def probe_run_end(run, writer):
        samples = np.asarray(run.clip.samples, dtype=np.float32)
        frames = samples[: len(samples) // 320 * 320].reshape(-1, 320)  # [frame, sample]: 20 ms
        rms = np.sqrt((frames ** 2).mean(axis=1))  # [frame]
        writer.add_tensor("loudness.rms", rms, plugin=name, meta={"axes": ["frame"]})
        writer.add_table("loudness.summary", [{"statistic": "peak", "value": float(rms.max())},
                                              {"statistic": "mean", "value": float(rms.mean())}], plugin=name)


    @hookimpl
    def probe_dashboard_views(register):
        def render(trace, st):
            peak = trace.table("loudness.summary")[0]["value"]
            st.metric("Peak RMS loudness", f"{peak:.4f}")

        register("Loudness", render, requires="loudness.summary", icon=":material/volume_up:")
''')
DAMAGED_RECORD = "cross_attention.weights"


@dataclasses.dataclass(frozen=True)
class DashboardStore:
    path: Path
    english: object  # probe.store.Trace: transcribe, every built-in plugin + loudness
    translate: object  # Mandarin clip, task translate, without attention / activations
    transcribe: object  # Mandarin clip, transcribe, without attention / logit_lens / activations
    retried: object  # 31 s of faint noise then speech, openai-whisper's settings: 2 windows, the first skipped
    damaged_id: str  # a copy of `english` whose cross_attention.weights file is gone
    plugin_dir: Path  # holds the loudness plugin module and the example plugin, installed, with their entry points
    without: dict  # built-in plugin name → the English clip traced with -p no:NAME
    two_windows: object  # 35.7 s of the English clips: 2 windows with speech (activations, cross_attention, token_probs)
    mandarin: object  # the Mandarin clip transcribed with every built-in plugin (characters split over tokens)


_BUILT: dict[Path, DashboardStore] = {}


def _speech(folder: Path, clip: str, voice: str, text: str) -> Path:
    """An example clip, or the same sentence synthesised with espeak-ng if examples/ lacks it."""
    if (EXAMPLES / clip).exists():
        return EXAMPLES / clip
    assert shutil.which("espeak-ng"), f"needs examples/{clip} or espeak-ng to make speech"
    path = folder / f"{Path(clip).stem}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    return path


def _install_plugin(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    dist = folder / "loudness_plugin-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: loudness-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[whisper_probe]\nloudness = {PLUGIN_MODULE}\n")
    return folder


def install_example_plugin(target: Path) -> Path:
    """``pip install`` examples/plugins/encoder_change into ``target`` (a copy of it is built, so
    the repository stays clean): its module and its ``whisper_probe`` entry point."""
    source = target.parent / "encoder_change-source"
    shutil.copytree(EXAMPLES / "plugins" / "encoder_change", source, dirs_exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True)
    return target


def build_dashboard_store(base, folder: Path) -> DashboardStore:
    """Trace the example clips into ``folder/store`` (once per folder and process)."""
    if folder in _BUILT:
        return _BUILT[folder]
    import probe
    from probe.store import Store

    store = Store(folder / "store")
    plugin_dir = _install_plugin(folder / "plugins")
    english_clip = _speech(folder, "en_fox.flac", "en-us", "The quick brown fox jumps over the lazy dog.")
    mandarin_clip = _speech(folder, "zh_hello.flac", "cmn-latn-pinyin",
                            "ni3 hao3, huan1 ying2 lai2 dao4 yu3 yin1 shi2 bie2 ke4 cheng2")
    install_example_plugin(plugin_dir)
    readme_plugin = plugin_dir / "conv_energy.py"  # the README's plugin, verbatim, passed as a file
    readme_plugin.write_text(plugin_example())
    sys.path.insert(0, str(plugin_dir))  # the entry points load themselves, as for a user who installed them
    try:
        english = probe.run(english_clip, model=base, store=store, name="en_fox", plugins=[str(readme_plugin)])
    finally:
        sys.path.remove(str(plugin_dir))
    without = {name: probe.run(english_clip, model=base, store=store, name=f"en_fox_without_{name}",
                               disable=[name]) for name in DEFAULT_PLUGINS}
    # before the transcribe + translate pair: Compare opens a trace beside the newest other trace of its audio
    mandarin = probe.run(mandarin_clip, model=base, store=store, name="zh_every_plugin", language="zh")
    translate = probe.run(mandarin_clip, model=base, store=store, name="zh_translate", task="translate",
                          disable=["attention", "activations"])
    transcribe = probe.run(mandarin_clip, model=base, store=store, name="zh_transcribe",
                           disable=["attention", "logit_lens", "activations"])
    import numpy as np

    noise = 0.01 * np.random.default_rng(0).standard_normal(31 * 16000).astype(np.float32)
    speech = probe.load_audio(EXAMPLES / "en_lecture.flac").samples
    retried = probe.run(np.concatenate([noise, speech]), model=base, store=store, name="noise_then_speech",
                        openai_defaults=True, seed=0, disable=["attention", "logit_lens", "activations"])
    lecture, fox = speech, probe.load_audio(english_clip).samples
    gap = np.zeros(16000, dtype=np.float32)
    two_windows = probe.run(np.concatenate([lecture, gap, fox, gap] * 3 + [lecture]), model=base, store=store,
                            name="two_windows", disable=["attention", "logit_lens"])
    damaged_id = f"{english.id}-damaged"
    damaged = store.path / damaged_id
    shutil.copytree(english.path, damaged)
    (damaged / english.records[DAMAGED_RECORD]["file"]).unlink()
    manifest = json.loads((damaged / "manifest.json").read_text())
    (damaged / "manifest.json").write_text(json.dumps({**manifest, "name": "en_fox_damaged"}))
    built = DashboardStore(store.path, english, translate, transcribe, retried, damaged_id, plugin_dir, without,
                           two_windows, mandarin)
    _BUILT[folder] = built
    return built


TRACES = ("english", "translate", "transcribe", "retried", "two_windows", "mandarin")


def _ids(built: DashboardStore) -> dict:
    return {**{name: getattr(built, name).id for name in TRACES}, "damaged_id": built.damaged_id,
            "without": {name: trace.id for name, trace in built.without.items()}}


def _reopen(folder: Path, ids: dict) -> DashboardStore:
    """The store built into ``folder`` (or copied there whole), its traces opened by id."""
    from probe.store import Store

    store = Store(folder / "store", create=False)
    return DashboardStore(path=store.path, damaged_id=ids["damaged_id"], plugin_dir=folder / "plugins",
                          without={name: store.open(trace_id) for name, trace_id in ids["without"].items()},
                          **{name: store.open(ids[name]) for name in TRACES})


@pytest.fixture(scope="session")
def dashboard_store(base, tmp_path_factory) -> DashboardStore:
    """Built once per session.  Under pytest-xdist the first worker to get here builds it into the
    run's shared temporary folder while the others wait, and every worker then works on its own
    copy, so tests that add or change traces see the store as they would in one process."""
    own = tmp_path_factory.getbasetemp() / "dashboard"
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build_dashboard_store(base, own)
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "dashboard-shared"
    done = shared / "built.json"
    with FileLock(f"{shared}.lock"):
        if not done.exists():
            shared.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(_ids(build_dashboard_store(base, shared))))
    if own not in _BUILT:
        shutil.copytree(shared, own, symlinks=True, dirs_exist_ok=True)
        _BUILT[own] = _reopen(own, json.loads(done.read_text()))
    return _BUILT[own]
