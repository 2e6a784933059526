"""End to end on real converted Whisper base weights and the example speech clips.

Faithfulness (traced tokens == plain generate()), no hooks left behind, the CLI's transcripts in
English, Mandarin and translation, what `probe show --json` holds, and word timings that agree
with faster-whisper's alignment of the same tokens on the same CTranslate2 weights.
"""

import json
import shutil

import numpy as np
import pytest
import torch

import probe
from probe.cli import main
from probe.hooks import hooks_left
from probe.tracer import DecodeOptions, Tracer
from probe.plugin_manager import get_plugin_manager
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.integration


def plain_generate(loaded, clip_path, **kwargs):
    clip = probe.load_audio(clip_path)
    features = loaded.processor.feature_extractor(clip.samples, sampling_rate=16000,
                                                  return_tensors="pt").input_features
    with torch.inference_mode():
        return loaded.model.generate(features, **kwargs)[0].tolist()


def text_of(tokens, eot):
    return [t for t in tokens if t != eot]


@pytest.mark.parametrize("clip,options", [
    ("en_fox.flac", {"language": "en"}),
    ("en_lecture.flac", {"language": "en", "num_beams": 3}),
    ("en_lecture.flac", {"language": "en", "timestamps": True}),
    ("zh_hello.flac", {"language": "zh", "num_beams": 2, "timestamps": True}),
    ("zh_hello.flac", {"language": "zh", "task": "translate"}),
])
def test_traced_tokens_equal_plain_generate(base, store, clip, options):
    trace = probe.run(EXAMPLES / clip, model=base, store=store, points=["decoder.blocks.*.hook_resid_post",
                                                                          "encoder.blocks.0.hook_resid_post"],
                      **options)
    assert hooks_left(base.model) == 0
    kwargs = {"language": options["language"], "task": options.get("task", "transcribe"),
              "num_beams": options.get("num_beams", 1), "return_timestamps": options.get("timestamps", False)}
    plain = plain_generate(base, EXAMPLES / clip, **kwargs)
    eot = base.model.generation_config.eos_token_id
    traced = trace.manifest["windows"][0]["tokens"]
    assert text_of(traced, eot) == text_of(plain, eot)


def test_no_hooks_left_after_a_failing_plugin(base, store, tmp_path):
    path = tmp_path / "failing.py"
    path.write_text("from probe import hookimpl\n\n@hookimpl\ndef probe_decode_points(run):\n"
                    "    return ['decoder.blocks.*.cross_attn.hook_pattern']\n\n@hookimpl\n"
                    "def probe_capture(run, point, tensor, ctx):\n    if ctx.step == 3:\n        raise RuntimeError('x')\n")
    with pytest.raises(probe.ProbeError, match="failing"):
        probe.run(EXAMPLES / "en_fox.flac", model=base, store=store, plugins=[str(path)])
    assert hooks_left(base.model) == 0
    assert store.list() == []


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_english_default_model(capsys, tmp_path):
    code, out, err = run_cli(capsys, "run", str(EXAMPLES / "en_fox.flac"), "--store", str(tmp_path / "s"))
    assert code == 0, err
    text = out.lower()
    for word in ("quick", "brown", "fox", "lazy", "dog"):
        assert word in text
    assert "language: en" in out and "<|startoftranscript|><|en|><|transcribe|><|notimestamps|>" in out


def test_cli_mandarin_and_translate(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "run", str(EXAMPLES / "zh_hello.flac"), "--language", "zh", "--no-store", "--json")
    result = json.loads(out)
    assert code == 0 and any("\u4e00" <= ch <= "\u9fff" for ch in result["text"])
    assert result["prompt"][:3] == ["<|startoftranscript|>", "<|zh|>", "<|transcribe|>"]
    code, out, _ = run_cli(capsys, "run", str(EXAMPLES / "zh_hello.flac"), "--task", "translate", "--no-store", "--json")
    result = json.loads(out)
    assert result["language"] == "zh" and result["language_probability"] > 0.5
    assert "<|translate|>" in result["prompt"]
    assert not any("\u4e00" <= ch <= "\u9fff" for ch in result["text"]) and any(c.isascii() and c.isalpha()
                                                                               for c in result["text"])


def test_show_json_has_the_lecture_records(capsys, tmp_path):
    store = str(tmp_path / "s")
    code, out, _ = run_cli(capsys, "run", str(EXAMPLES / "en_fox.flac"), "--store", store, "--json")
    trace_id = json.loads(out)["trace"]
    code, out, _ = run_cli(capsys, "show", trace_id, "--store", store, "--json")
    shown = json.loads(out)
    records = shown["records"]
    config = shown["model"]["config"]
    n_tokens = len(shown["windows"][0]["tokens"])
    assert records["cross_attention.weights"]["shape"][:3] == [config["decoder_layers"],
                                                              config["decoder_attention_heads"], n_tokens]
    assert records["token_probs.top_k_ids"]["shape"] == [n_tokens, 5]
    assert records["logit_lens.chosen_rank"]["shape"] == [config["decoder_layers"], n_tokens]
    assert shown["language"] == "en" and 0 <= shown["no_speech_probability"] < 0.5
    assert "token_probs.multitask" in records
    assert shown["model"]["attention_patterns"] == "recomputed from queries and keys beside sdpa"
    words = shown["words"]
    assert "".join(w["word"] for w in words).strip() == shown["transcript"]
    assert all(a["start"] <= a["end"] <= b["start"] + 1e-6 for a, b in zip(words, words[1:]))


@pytest.fixture(scope="module")
def faster_whisper_model(tmp_path_factory):
    import faster_whisper

    from probe.models import EMBEDDED

    embedded = EMBEDDED["base"]
    directory = tmp_path_factory.mktemp("ct2-base")
    with open(directory / "model.bin", "wb") as out:
        for part in embedded.model_bin_parts():
            out.write(part.read_bytes())
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copy(embedded.metadata_dir() / name, directory / name)
    return faster_whisper.WhisperModel(str(directory), device="cpu", compute_type="float32")


@pytest.fixture(scope="module")
def openai_whisper_model(base):
    """openai-whisper's own model class holding the same (converted) weights."""
    from whisper.model import ModelDimensions, Whisper

    from probe.convert import openai_to_hf_name

    config = base.model.config
    dims = ModelDimensions(n_mels=config.num_mel_bins, n_audio_ctx=config.max_source_positions,
                           n_audio_state=config.d_model, n_audio_head=config.encoder_attention_heads,
                           n_audio_layer=config.encoder_layers, n_vocab=config.vocab_size,
                           n_text_ctx=config.max_target_positions, n_text_state=config.d_model,
                           n_text_head=config.decoder_attention_heads, n_text_layer=config.decoder_layers)
    model = Whisper(dims)
    ours = base.model.state_dict()
    model.load_state_dict({name: ours[openai_to_hf_name(name)] for name in model.state_dict()})
    heads = torch.zeros(config.decoder_layers, config.decoder_attention_heads, dtype=torch.bool)
    for layer, head in base.alignment_heads:
        heads[layer, head] = True
    model.register_buffer("alignment_heads", heads.to_sparse(), persistent=False)
    return model.eval()


PREPEND, APPEND = "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、"


def traced_words(base, store, clip):
    """The text tokens of a trace of ``clip`` and its words before the long-word clamp."""
    from probe.alignment import words_from_alignment

    trace = probe.run(EXAMPLES / clip, model=base, store=store, language="en")
    tokens = [row["token_id"] for row in trace.table("cross_attention.tokens") if row["is_text"]]
    words = words_from_alignment(trace.record("cross_attention.alignment"), tokens, base.processor.tokenizer, "en",
                                 base.model.generation_config.eos_token_id, clamp=False)
    assert [w["word"] for w in trace.words()] == [w["word"] for w in words]
    return tokens, words


def boundary_differences(ours, theirs) -> np.ndarray:
    assert [w["word"] for w in ours] == [w["word"] for w in theirs]
    return np.array([[abs(a["start"] - b["start"]), abs(a["end"] - b["end"])] for a, b in zip(ours, theirs)])


@pytest.mark.parametrize("clip", ["en_fox.flac", "en_lecture.flac"])
def test_word_timings_equal_openai_whisper_timing(base, store, openai_whisper_model, clip):
    import whisper
    from whisper.timing import find_alignment, merge_punctuations
    from whisper.tokenizer import get_tokenizer

    tokens, ours = traced_words(base, store, clip)
    samples = probe.load_audio(EXAMPLES / clip).samples
    mel = whisper.log_mel_spectrogram(torch.from_numpy(samples), base.model.config.num_mel_bins,
                                      padding=whisper.audio.N_SAMPLES)
    tokenizer = get_tokenizer(True, language="en", task="transcribe")
    theirs = find_alignment(openai_whisper_model, tokenizer, tokens, mel[:, :3000], len(samples) // 160)
    merge_punctuations(theirs, PREPEND, APPEND)
    theirs = [{"word": w.word, "start": w.start, "end": w.end} for w in theirs if w.word]
    assert boundary_differences(ours, theirs).max() <= 0.02 + 1e-9  # at most one 20 ms frame


@pytest.mark.parametrize("clip", ["en_fox.flac", "en_lecture.flac"])
def test_word_timings_agree_with_faster_whisper(base, store, faster_whisper_model, clip):
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import merge_punctuations

    fw = faster_whisper_model

    class OpenAIPrompt(Tokenizer):
        # openai-whisper's timing.py aligns after <|notimestamps|>; so does whisper-probe's replay.
        @property
        def sot_sequence(self):
            return list(super().sot_sequence) + [self.no_timestamps]

    tokens, ours = traced_words(base, store, clip)
    samples = probe.load_audio(EXAMPLES / clip).samples
    features = base.processor.feature_extractor(samples, sampling_rate=16000).input_features[0]  # [n_mels, 3000]
    tokenizer = OpenAIPrompt(fw.hf_tokenizer, True, task="transcribe", language="en")
    theirs = fw.find_alignment(tokenizer, [tokens], fw.encode(features), len(samples) // 160)[0]
    merge_punctuations(theirs, PREPEND, APPEND)
    diffs = boundary_differences(ours, [w for w in theirs if w["word"]])
    # CTranslate2 computes the same attention with its own kernels; boundaries agree within a few frames.
    assert diffs.mean() <= 0.03, diffs
    assert diffs.max() <= 0.1 + 1e-9, diffs


def test_greedy_token_probs_are_the_logits_generate_chose_from(base, tmp_path):
    """token_probs reads generate()'s own logits at each greedy step: equal to HF's output_logits."""
    from probe.audio import load_audio
    from probe.models import quiet_transformers

    clip = load_audio(EXAMPLES / "en_fox.flac")
    rows = probe.run(clip, model=base, store=tmp_path / "s", language="en").table("token_probs.tokens")
    features = base.processor.feature_extractor(clip.samples, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode(), quiet_transformers():
        out = base.model.generate(features, language="en", task="transcribe", output_logits=True,
                                  return_dict_in_generate=True)
    log_probs = torch.stack([step[0] for step in out.logits]).float().log_softmax(-1)  # [step, vocab]
    assert len(rows) == len(out.logits)  # one row per generated token, <|endoftext|> included
    ids = torch.tensor([row["token_id"] for row in rows])
    expected = log_probs[torch.arange(len(ids)), ids].numpy()
    np.testing.assert_allclose([row["logprob"] for row in rows], expected, atol=1e-5, rtol=0)
    top = log_probs.topk(5, dim=-1)
    assert [row["top_k_ids"] for row in rows] == top.indices.tolist()


def test_batched_traces_equal_unbatched(base, tmp_path):
    from probe.store import Store

    clips = [EXAMPLES / "en_fox.flac", EXAMPLES / "en_lecture.flac", EXAMPLES / "zh_hello.flac"]
    single = probe.run(clips, model=base, store=Store(tmp_path / "one"), batch_size=1)
    batched = probe.run(clips, model=base, store=Store(tmp_path / "three"), batch_size=3)
    for a, b in zip(single, batched):
        assert a.manifest["windows"][0]["tokens"] == b.manifest["windows"][0]["tokens"]
        assert a.manifest["language"] == b.manifest["language"]
        assert set(a.records) == set(b.records)
        for name, meta in a.records.items():
            if meta["kind"] == "tensor":
                np.testing.assert_allclose(a.record(name).astype(np.float32), b.record(name).astype(np.float32),
                                           atol=2e-3, rtol=1e-2, err_msg=name)
        assert [w["word"] for w in a.words()] == [w["word"] for w in b.words()]
        assert np.allclose([w["start"] for w in a.words()], [w["start"] for w in b.words()], atol=0.021)
