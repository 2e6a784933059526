"""The plugin system: hookspecs documented, built-ins removable, loading, and failing plugins named.

In datasette's manner, every hookspec must be documented and exercised by a test in this folder.
"""

import copy
import json
import inspect
import re
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import probe
import probe.audio
import probe.store
from probe import hookspecs
from probe.errors import PluginError
from probe.hooks import hooks_left
from probe.plugin_manager import DEFAULT_PLUGINS, describe, get_plugin_manager
from tests.conftest import HOOK_BODIES, ROOT, store_snapshot

HOOKSPECS = sorted(name for name in dir(hookspecs) if name.startswith("probe_"))


@pytest.mark.parametrize("name", HOOKSPECS)
def test_hookspec_is_documented(name):
    doc = inspect.getdoc(getattr(hookspecs, name))
    params = list(inspect.signature(getattr(hookspecs, name)).parameters)
    assert doc and len(doc.splitlines()[0]) > 10, name
    assert ".. versionadded::" in doc
    for param in params:
        assert f":param {param}:" in doc, (name, param)
    docs = (ROOT / "docs" / "plugins.md").read_text()
    assert f"`{name}" in docs, f"{name} missing from docs/plugins.md"


@pytest.mark.parametrize("name", HOOKSPECS)
def test_hookspec_has_a_test(name):
    tests = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    assert re.search(rf"def {name}\b", tests), f"no test implements {name}"


def test_defaults_registered_and_removable():
    names = {row["name"] for row in describe(get_plugin_manager(autoload=False))}
    assert set(DEFAULT_PLUGINS) <= names
    names = {row["name"] for row in describe(get_plugin_manager(plugins=["no:logit_lens"], autoload=False))}
    assert "logit_lens" not in names and "token_probs" in names


def test_disable_unknown_plugin_is_an_error():
    with pytest.raises(PluginError, match="unknown plugin"):
        get_plugin_manager(plugins=["no:nonexistent"], autoload=False)


def test_unknown_plugin_module():
    with pytest.raises(PluginError, match="unknown plugin 'no_such_module_xyz'"):
        get_plugin_manager(plugins=["no_such_module_xyz"], autoload=False)


def test_misspelt_hook_implementation_fails_loudly(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text("from probe import hookimpl\n\n@hookimpl\ndef probe_captur(run, point, tensor, ctx):\n    pass\n")
    with pytest.raises(PluginError, match="typo.*invalid"):
        get_plugin_manager(plugins=[str(path)], autoload=False)


def test_entry_point_plugins_load_and_autoload_can_be_disabled(tmp_path, monkeypatch):
    package = tmp_path / "ep_plugin.py"
    package.write_text("from probe import hookimpl\n__version__ = '9.9'\n\n@hookimpl\ndef probe_run_start(run):\n    pass\n")
    dist = tmp_path / "ep_plugin-9.9.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 9.9\n")
    (dist / "entry_points.txt").write_text("[whisper_probe]\nep_plugin = ep_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = {row["name"]: row for row in describe(get_plugin_manager())}
    assert rows["ep_plugin"]["version"] == "9.9" and rows["ep_plugin"]["hooks"] == ["probe_run_start"]
    monkeypatch.setenv("WHISPER_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "ep_plugin" not in {row["name"] for row in describe(get_plugin_manager())}


class Recorder:
    """A plugin implementing every run hook; it records what it saw."""

    name = "recorder"
    __version__ = "0.1"

    def __init__(self, decode=("encoder.hook_conv2", "decoder.blocks.0.hook_resid_post"),
                 replay=("decoder.blocks.*.cross_attn.hook_pattern",)):
        self.decode, self.replay, self.seen, self.windows, self.calls = decode, replay, [], [], []

    @probe.hookimpl
    def probe_run_start(self, run):
        self.calls.append("probe_run_start")

    @probe.hookimpl
    def probe_decode_points(self, run):
        return list(self.decode)

    @probe.hookimpl
    def probe_replay_points(self, run):
        return list(self.replay)

    @probe.hookimpl
    def probe_capture(self, run, point, tensor, ctx):
        self.seen.append((point.name, ctx.phase, ctx.window, ctx.step, tuple(tensor.shape)))

    @probe.hookimpl
    def probe_window_end(self, run, window):
        self.windows.append(window)

    @probe.hookimpl
    def probe_run_end(self, run, writer):
        self.calls.append("probe_run_end")
        writer.add_tensor("recorder.steps", np.array([s[3] for s in self.seen]), plugin=self.name)


def test_run_hooks_see_windows_steps_and_beams(tiny, tone, store):
    recorder = Recorder()
    trace = probe.run(tone, model=tiny, plugins=[recorder], store=store, num_beams=2, max_new_tokens=5,
                      disable=list(DEFAULT_PLUGINS))
    assert recorder.calls == ["probe_run_start", "probe_run_end"]
    encode = [s for s in recorder.seen if s[1] == "encode"]
    decode = [s for s in recorder.seen if s[1] == "decode"]
    replay = [s for s in recorder.seen if s[1] == "replay"]
    assert [s[0] for s in encode] == ["encoder.hook_conv2"]
    assert [s[3] for s in decode] == list(range(len(decode)))  # one capture per generation step
    assert all(s[4][0] == 2 for s in decode)  # beams on the batch axis
    assert len(replay) == tiny.model.config.decoder_layers
    assert replay[0][4][2] == len(recorder.windows[0].sequence)  # the replay covers the whole sequence
    assert trace.record("recorder.steps").tolist() == [s[3] for s in recorder.seen]
    assert trace.manifest["plugins"]["recorder"] == "0.1"
    assert hooks_left(tiny.model) == 0


class RejectedRecorder:
    """Asks for a decoder point on the replay of rejected attempts only."""

    name = "rejected_recorder"

    def __init__(self):
        self.seen, self.windows = [], []

    @probe.hookimpl
    def probe_rejected_points(self, run):
        return ["decoder.hook_ln_final"]

    @probe.hookimpl
    def probe_capture(self, run, point, tensor, ctx):
        self.seen.append((ctx.phase, ctx.window, ctx.attempt, ctx.temperature, len(ctx.tokens), ctx.prompt_length,
                          tuple(tensor.shape)))

    @probe.hookimpl
    def probe_window_end(self, run, window):
        self.windows.append(window)


def test_rejected_attempts_are_replayed_for_plugins_that_ask(tiny, tone, store):
    """The random model fails the log-probability check at every temperature: every attempt but
    the last is rejected, and each is replayed once, teacher-forced, for this plugin alone."""
    recorder, other = RejectedRecorder(), Recorder(decode=(), replay=("decoder.hook_ln_final",))
    probe.run(tone, model=tiny, plugins=[recorder, other], store=store, max_new_tokens=4, seed=0,
              temperature=(0.0, 0.5, 1.0), logprob_threshold=-0.01, disable=list(DEFAULT_PLUGINS))
    (window,) = recorder.windows
    rejected = [a for a in window.attempts if a["verdict"] == "rejected"]
    assert [a["attempt"] for a in rejected] == [0, 1] and window.attempts[-1]["verdict"] == "kept"
    assert [(s[0], s[1], s[2], s[3]) for s in recorder.seen] == [("rejected", 0, a["attempt"], a["temperature"])
                                                                 for a in rejected]
    for seen, attempt in zip(recorder.seen, rejected):
        assert seen[4] == len(window.prompt) + len(attempt["tokens"]) and seen[5] == len(window.prompt)
        assert seen[6] == (1, seen[4], tiny.model.config.d_model)  # [batch, query, d_model]
    assert {s[1] for s in other.seen} == {"replay"}  # a plugin that did not ask never sees them
    assert hooks_left(tiny.model) == 0


def test_long_audio_is_traced_window_by_window(tiny, store):
    samples = (0.1 * np.random.default_rng(0).standard_normal(16000 * 65)).astype(np.float32)
    recorder = Recorder(decode=("encoder.hook_embed",), replay=())
    trace = probe.run(samples, model=tiny, plugins=[recorder], store=store, max_new_tokens=3)
    assert [w.index for w in recorder.windows] == [0, 1, 2]
    assert [(w.start, w.end) for w in recorder.windows] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    assert [s[2] for s in recorder.seen] == [0, 1, 2]
    assert [w["start"] for w in trace.manifest["windows"]] == [0.0, 30.0, 60.0]
    assert trace.record("cross_attention.weights").shape[-1] == 1500  # frames padded to the longest window
    tokens = trace.record("cross_attention.tokens")
    assert sorted({row["window"] for row in tokens}) == [0, 1, 2]


def test_windows_of_one_clip_batched_together_trace_as_one_by_one(tiny, tmp_path):
    """A 65 s clip with --batch-size 3 decodes its three windows together; every plugin still sees
    them one after another, so every record equals the window-by-window run's."""
    samples = (0.1 * np.random.default_rng(0).standard_normal(16000 * 65)).astype(np.float32)
    one, three = (probe.run(samples, model=tiny, store=tmp_path / f"b{b}", max_new_tokens=3, batch_size=b)
                  for b in (1, 3))
    assert [w["tokens"] for w in one.manifest["windows"]] == [w["tokens"] for w in three.manifest["windows"]]
    assert one.records.keys() == three.records.keys()
    for name, meta in one.records.items():
        if meta["kind"] == "tensor":
            a, b = one.record(name), three.record(name)
            assert a.shape == b.shape, name
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3, rtol=1e-2,
                                       err_msg=name)
        elif meta["kind"] == "table":
            assert [{k: v for k, v in row.items() if not isinstance(v, float)} for row in one.table(name)] == \
                [{k: v for k, v in row.items() if not isinstance(v, float)} for row in three.table(name)], name
    assert hooks_left(tiny.model) == 0


def test_lecture_set_decoder_norms_come_from_the_replayed_sequence(tiny, tone, store):
    """Without --points, decoder residual norms are one replay capture per layer: every position of
    the chosen sequence, equal to a teacher-forced forward pass's hidden states."""
    import torch

    trace = probe.run(tone, model=tiny, store=store, max_new_tokens=5, language="en")
    window = trace.manifest["windows"][0]
    sequence = window["prompt"] + window["tokens"]
    features = tiny.processor.feature_extractor(tone, sampling_rate=16000, return_tensors="pt").input_features
    reference = copy.deepcopy(tiny.model)  # output_hidden_states leaves transformers' capture hooks behind
    with torch.inference_mode():
        hidden = reference(input_features=features, decoder_input_ids=torch.tensor([sequence]),
                           output_hidden_states=True).decoder_hidden_states  # embeddings, then each block
    for layer in range(tiny.model.config.decoder_layers):
        name = f"activations.decoder.blocks.{layer}.hook_resid_post.norm"
        assert trace.records[name]["meta"]["positions"] == [len(sequence)]
        expected = hidden[layer + 1][0].norm(dim=-1).numpy()
        if layer == tiny.model.config.decoder_layers - 1:
            continue  # transformers hands over the last block's output after the final layer norm
        np.testing.assert_allclose(trace.record(name)[0], expected, rtol=1e-4, atol=1e-5)
    assert "activations.steps" not in trace.records  # nothing per generation step in the lecture set


class RunEndThreads:
    """Writes one record per clip and notes the thread its probe_run_end ran on; fails on ``fail_on``."""

    name = "run_end_threads"

    def __init__(self, fail_on: str | None = None):
        self.fail_on, self.threads = fail_on, []

    @probe.hookimpl
    def probe_run_end(self, run, writer):
        self.threads.append(threading.get_ident())
        writer.add_tensor("run_end_threads.samples", run.clip.samples[:100], plugin=self.name)
        if run.clip.source == self.fail_on:
            raise RuntimeError("broken on purpose")


def _clips(count: int):
    rng = np.random.default_rng(3)
    return [probe.audio.audio_from_array(0.1 * rng.standard_normal(16000, dtype=np.float32), 16000,
                                         source=f"clip{i}") for i in range(count)]


def test_several_clips_plugins_on_this_thread_files_on_the_writer_thread(tiny, store, monkeypatch):
    writing_threads = set()
    original = probe.store.writer.save_file

    def noting_save_file(*args, **kwargs):
        writing_threads.add(threading.get_ident())
        return original(*args, **kwargs)

    monkeypatch.setattr(probe.store.writer, "save_file", noting_save_file)
    plugin, clips = RunEndThreads(), _clips(3)
    traces = probe.run(clips, model=tiny, plugins=[plugin], store=store, max_new_tokens=2, batch_size=2,
                       disable=list(DEFAULT_PLUGINS))
    assert [t.audio_source for t in traces] == ["clip0", "clip1", "clip2"]  # input order
    for trace, clip in zip(traces, clips):
        np.testing.assert_array_equal(trace.record("run_end_threads.samples"), clip.samples[:100])
    assert set(plugin.threads) == {threading.get_ident()}
    assert writing_threads and threading.get_ident() not in writing_threads
    assert len(store.list()) == 3 and not (store.path / ".tmp").exists()


def test_a_failing_clip_keeps_the_traces_handed_over_before_it(tiny, store):
    with pytest.raises(PluginError, match="'run_end_threads' raised in probe_run_end"):
        probe.run(_clips(3), model=tiny, plugins=[RunEndThreads(fail_on="clip1")], store=store,
                  max_new_tokens=2, batch_size=3, disable=list(DEFAULT_PLUGINS))
    assert [info.audio_source for info in store.list()] == ["clip0"]
    assert not (store.path / ".tmp").exists() and hooks_left(tiny.model) == 0


@pytest.mark.parametrize("hook", sorted(HOOK_BODIES))
def test_plugin_that_raises_is_named_and_leaves_nothing(tiny, tone, store, tmp_path, hook):
    path = tmp_path / "faulty.py"
    path.write_text("from probe import hookimpl\n\n@hookimpl\n" + HOOK_BODIES[hook] + "\n")
    before = store_snapshot(store.path)
    with pytest.raises(PluginError) as err:
        probe.run(tone, model=tiny, plugins=[str(path)], store=store, max_new_tokens=3)
    assert "'faulty'" in str(err.value) and hook in str(err.value) and "\n" not in str(err.value)
    assert hooks_left(tiny.model) == 0
    assert store_snapshot(store.path) == before
    assert store.list() == []


def test_plugin_returning_wrong_type_is_named(tiny, tone, store, tmp_path):
    path = tmp_path / "wrongtype.py"
    path.write_text("from probe import hookimpl\n\n@hookimpl\ndef probe_decode_points(run):\n    return 42\n")
    with pytest.raises(PluginError, match="'wrongtype' returned int from probe_decode_points"):
        probe.run(tone, model=tiny, plugins=[str(path)], store=store, max_new_tokens=3)
    assert store.list() == []


def test_plugin_asking_for_unknown_point(tiny, tone, store, tmp_path):
    path = tmp_path / "typo_point.py"
    path.write_text(textwrap.dedent("""
        from probe import hookimpl

        @hookimpl
        def probe_decode_points(run):
            return ["encoder.blocks.*.hook_resid_psot"]

        @hookimpl
        def probe_capture(run, point, tensor, ctx):
            pass
    """))
    with pytest.raises(probe.ProbeError, match="hook_resid_p"):
        probe.run(tone, model=tiny, plugins=[str(path)], store=store, max_new_tokens=3)


def test_dashboard_views_hook_collects_registered_views():
    from probe.contributions import collect

    class ViewPlugin:
        name = "viewer"

        @probe.hookimpl
        def probe_dashboard_views(self, register):
            register("My statistic", lambda trace, st: st.write(trace.id))

    views = collect(get_plugin_manager(plugins=[ViewPlugin()], autoload=False, presentation=True)).views
    assert [(v.title, v.plugin, v.section) for v in views if v.plugin == "viewer"] == [
        ("My statistic", "viewer", "Plugins")]


class Estimator:
    name = "estimator"

    @probe.hookimpl
    def probe_estimate(self, run):
        return {"estimator.big": 10 * 2**30}


def test_estimate_is_summed_and_a_capture_too_big_for_memory_is_refused(tiny, tone, store, monkeypatch):
    from probe.errors import MemoryBudgetError
    from probe.tracer import budget

    monkeypatch.setattr(budget, "available_memory", lambda device: 4 * 2**30)
    before = store_snapshot(store.path)
    with pytest.raises(MemoryBudgetError, match=r"about 10\.\d GiB.*--points"):
        probe.run(tone, model=tiny, plugins=[Estimator()], store=store, max_new_tokens=3)
    assert store_snapshot(store.path) == before and hooks_left(tiny.model) == 0


def test_dry_run_prints_estimates_without_decoding(tiny, capsys, monkeypatch, en_clip):
    import json

    from probe import cli, tracer

    monkeypatch.setattr("probe.models.load_model", lambda *a, **k: tiny)
    monkeypatch.setattr(tracer.Tracer, "decode", lambda *a: pytest.fail("--dry-run decoded"))
    assert cli.main(["run", str(en_clip), "--dry-run", "--json", "--points", "encoder.blocks.*.hook_resid_post"]) == 0
    report = json.loads(capsys.readouterr().out)
    config = tiny.model.config
    layer_bytes = config.max_source_positions * config.d_model * 2
    assert report["records"]["activations.encoder.blocks.0.hook_resid_post"] == layer_bytes
    assert report["total_bytes"] == sum(report["records"].values())
    assert "cross_attention.weights" in report["records"]


def test_device_out_of_memory_during_capture_gives_the_budget_message(tiny, tone, store, tmp_path):
    from probe.errors import MemoryBudgetError

    path = tmp_path / "hungry.py"
    path.write_text("import torch\nfrom probe import hookimpl\n\n@hookimpl\ndef probe_decode_points(run):\n"
                    "    return ['encoder.hook_conv2']\n\n@hookimpl\ndef probe_capture(run, point, tensor, ctx):\n"
                    "    raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')\n")
    before = store_snapshot(store.path)
    with pytest.raises(MemoryBudgetError, match="ran out of memory while capturing; hook fewer --points"):
        probe.run(tone, model=tiny, plugins=[str(path)], store=store, max_new_tokens=3)
    assert hooks_left(tiny.model) == 0 and store_snapshot(store.path) == before


def test_attention_plugin_takes_each_windows_frames_from_its_context(tiny):
    """Long-form windows follow seek, so a run can have more windows than its 30 s estimate: the
    encoder summaries use the capture's own frame count, not the estimate's list."""
    import torch

    from probe.plugins.attention.capture import Plugin
    from probe.points import select_points
    from probe.tracer import CaptureContext, DecodeOptions, Run
    from probe.audio import audio_from_array

    run = Run(loaded=tiny, clip=audio_from_array(np.zeros(16000 * 10, np.float32)), options=DecodeOptions(),
              window_spans=[(0.0, 10.0)])
    plugin = Plugin()
    plugin.probe_run_start(run)
    (point,) = select_points(tiny.model.config, ["encoder.blocks.0.attn.hook_pattern"])
    heads = tiny.model.config.encoder_attention_heads
    probs = torch.softmax(torch.randn(1, heads, 1500, 1500), -1)
    plugin.probe_capture(run, point, probs, CaptureContext(phase="encode", window=3, n_frames=700))
    assert run.state["attention"]["n_frames"] == {3: 700}
    assert 3 in run.state["attention"]["summaries"]


class WindowWrapper:
    """A new-style hook wrapper around every plugin's probe_window_end (pluggy's wrapper=True)."""

    name = "window_wrapper"

    def __init__(self):
        self.order = []

    @probe.hookimpl(wrapper=True)
    def probe_window_end(self, run, window):
        self.order.append(("before", window.index))
        result = yield
        self.order.append(("after", window.index))
        return result


class WindowSeen:
    name = "window_seen"

    def __init__(self, order):
        self.order = order

    @probe.hookimpl
    def probe_window_end(self, run, window):
        self.order.append(("inner", window.index))


def test_a_hook_wrapper_wraps_every_plugins_call_and_is_timed(tiny, tone, store, monkeypatch, capsys):
    """Plugins are called through pluggy: a wrapper runs around the other implementations, its
    time is counted for the run, and WHISPER_PROBE_TRACE_PLUGINS prints every call."""
    monkeypatch.setenv("WHISPER_PROBE_TRACE_PLUGINS", "1")
    wrapper = WindowWrapper()
    trace = probe.run(tone, model=tiny, plugins=[WindowSeen(wrapper.order), wrapper], store=store,
                      max_new_tokens=3, disable=["attention", "logit_lens"])
    assert wrapper.order == [("before", 0), ("inner", 0), ("after", 0)]
    timed = trace.manifest["timings"]["plugins"]
    assert {"window_wrapper", "window_seen", "cross_attention", "token_probs"} <= set(timed)
    printed = capsys.readouterr().err.splitlines()
    assert any(line.startswith("probe: plugin window_wrapper probe_window_end ") and line.endswith(" ms")
               for line in printed)
    assert any(line.startswith("probe: plugin cross_attention probe_capture ") for line in printed)


class FailingWrapper:
    name = "failing_wrapper"

    @probe.hookimpl(wrapper=True)
    def probe_run_end(self, run, writer):
        yield
        raise ValueError("bad teardown")


def test_a_wrapper_that_raises_is_named_and_leaves_nothing(tiny, tone, store):
    with pytest.raises(PluginError) as err:
        probe.run(tone, model=tiny, plugins=[FailingWrapper()], store=store, max_new_tokens=3)
    message = str(err.value)
    assert "'failing_wrapper' raised in probe_run_end" in message and "bad teardown" in message
    assert "\n" not in message and store.list() == [] and hooks_left(tiny.model) == 0


def test_plugin_calls_have_one_home():
    """Every call goes through pm.hook: no module outside the plugin manager walks the hook
    implementations and calls them itself."""
    for path in list((ROOT / "probe").rglob("*.py")) + list((ROOT / "dashboards").rglob("*.py")):
        text = path.read_text()
        if path.name != "plugin_manager.py":
            assert "get_hookimpls" not in text and "call_each" not in text, path


OPTION_PLUGIN = '''
from probe import hookimpl

__version__ = "0.2"


@hookimpl
def probe_addoption(parser):
    parser.addoption("--loud-threshold", type=float, default=0.5, help="frames louder than this count as speech")


@hookimpl
def probe_run_end(run, writer):
    writer.add_json("loud_option.seen", {"threshold": run.option("loud_threshold")}, plugin="loud_option")
'''


def _cli(capsys, *argv):
    from probe.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: --help, or an unknown option
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_a_plugin_adds_an_option_to_probe_run(tiny, tone, store, tmp_path, capsys, monkeypatch):
    """probe_addoption: listed in --help under the plugin, parsed, seen as run.option(); gone when
    the plugin is not loaded; its default (and plugin_options=) from Python."""
    import soundfile

    import probe.models

    path = tmp_path / "loud_option.py"
    path.write_text(OPTION_PLUGIN)
    monkeypatch.setattr(probe.models, "load_model", lambda *a, **k: tiny)
    wav = tmp_path / "tone.wav"
    soundfile.write(wav, tone, 16000)
    code, out, _ = _cli(capsys, "run", "--help", "-p", path)
    assert code == 0 and "options of plugin loud_option:" in out and "--loud-threshold" in out
    assert "options of plugin token_probs:" in out and "--top-k" in out
    code, out, err = _cli(capsys, "run", wav, "-p", path, "--loud-threshold", "0.9", "--store", store.path,
                          "--max-new-tokens", "2", "--json")
    assert code == 0, err
    trace = store.open(json.loads(out.splitlines()[-1])["trace"])
    assert trace.json("loud_option.seen") == {"threshold": 0.9}
    code, _, err = _cli(capsys, "run", wav, "--loud-threshold", "0.9", "--store", store.path)
    assert code == 2 and "unrecognized arguments: --loud-threshold" in err and len(err.strip().splitlines()) == 1
    # a removed built-in takes its options along: --top-k belongs to token_probs and logit_lens
    code, _, err = _cli(capsys, "run", wav, "-p", "no:token_probs", "-p", "no:logit_lens", "--top-k", "3",
                        "--store", store.path)
    assert code == 2 and "unrecognized arguments: --top-k" in err
    assert probe.run(tone, model=tiny, plugins=[str(path)], store=store, max_new_tokens=2
                     ).json("loud_option.seen") == {"threshold": 0.5}
    assert probe.run(tone, model=tiny, plugins=[str(path)], store=store, max_new_tokens=2,
                     plugin_options={"loud_threshold": 0.7}).json("loud_option.seen") == {"threshold": 0.7}


def test_a_plugin_option_that_clashes_is_named(tmp_path, capsys):
    path = tmp_path / "clash.py"
    path.write_text("from probe import hookimpl\n\n@hookimpl\ndef probe_addoption(parser):\n"
                    "    parser.addoption('--language', help='mine')\n")
    code, _, err = _cli(capsys, "run", "x.wav", "-p", path)
    assert code == 2 and "plugin 'clash' declared option --language that probe run cannot take" in err
    path.write_text("from probe import hookimpl\n\n@hookimpl\ndef probe_addoption(parser):\n"
                    "    parser.addoption('-x')\n")
    code, _, err = _cli(capsys, "run", "x.wav", "-p", path)
    assert code == 2 and "plugin options are long flags" in err


@pytest.mark.parametrize("hook", ["probe_replay_points", "probe_rejected_points"])
def test_replays_take_decoder_points_only(tiny, tone, store, tmp_path, hook):
    path = tmp_path / "encoder_replay.py"
    path.write_text(f"from probe import hookimpl\n\n@hookimpl\ndef {hook}(run):\n    return ['encoder.hook_conv1']\n\n"
                    "@hookimpl\ndef probe_capture(run, point, tensor, ctx):\n    pass\n")
    with pytest.raises(PluginError, match=f"'encoder_replay' asks for encoder points in {hook}"):
        probe.run(tone, model=tiny, plugins=[str(path)], store=store, max_new_tokens=2)
    assert store.list() == [] and hooks_left(tiny.model) == 0
