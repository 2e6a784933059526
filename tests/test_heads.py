"""Alignment-head discovery (probe.heads, probe.speech_set, ``probe heads --alignment``).

Reference word times come from espeak-ng's word events; they are checked against the audio's own
pauses.  The ranking runs on the real base weights over two synthesized sentences: its word
timings are the product's (equal to a traced run's), and the published heads do come out on top.
``--write`` is exercised on a copy of the converted embedded tiny.en directory.
"""

from __future__ import annotations

import json
import re
import shutil
import sys

import numpy as np
import pytest

from probe import heads, speech_set
from probe.cli import main
from probe.hooks import hooks_left
from tests.conftest import EXAMPLES, ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from probe.audio.espeak import LECTURE_SENTENCES, Espeak, _frame_rms  # noqa: E402

SENTENCES = [LECTURE_SENTENCES[0], LECTURE_SENTENCES[2]]  # base decodes these two word for word


@pytest.fixture(scope="module")
def espeak():
    return Espeak()


@pytest.fixture(scope="module")
def speech(espeak):
    """One clip of the two sentences, spoken by espeak-ng, with its reference word times."""
    return speech_set.synthesized(SENTENCES)


@pytest.fixture(scope="module")
def forcing(base, speech):
    """The speech clip's transcript teacher-forced through base, every cross-attention head kept."""
    return heads.teacher_force_all(base, speech)


def _pause_ends(samples: np.ndarray, hop: int, frames: int = 10) -> list[int]:
    """The ``hop``-sample frame where each silence of ≥ ``frames`` frames inside ``samples`` ends."""
    rms = _frame_rms(samples, hop)
    voiced = rms >= 0.02 * rms.max()
    ends, run = [], 0
    for i, loud in enumerate(voiced):
        if loud and run >= frames and i > run:
            ends.append(i)
        run = 0 if loud else run + 1
    return ends


def test_espeak_word_times_follow_the_audio(espeak):
    sentence = LECTURE_SENTENCES[3]  # "Long recordings are cut into windows, and each window starts ..."
    samples, words = espeak.speak_words(sentence, "en-us+m3", 160)
    seconds = len(samples) / espeak.sample_rate
    starts = [start for _, start, _ in words]
    assert [w for w, _, _ in words] == re.findall(r"\w+", sentence)
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert all(0 <= start < end <= seconds for _, start, end in words)
    # every pause of 100 ms or more ends where a word starts (within 30 ms): the events are in time
    hop = espeak.sample_rate // 100
    pause_ends = [i * hop / espeak.sample_rate for i in _pause_ends(samples, hop)]
    assert pause_ends, "the sentence's comma should give a pause"
    assert all(min(abs(end - s) for s in starts) <= 0.03 for end in pause_ends)
    # and the word before a pause ends where its sound does, not where the next word starts
    assert any(following[1] - word[2] >= 0.1 for word, following in zip(words, words[1:]))


def test_speech_set_times_are_inside_the_resampled_clip(speech):
    (reference,) = speech
    assert reference.clip.duration <= 30 and reference.text == " ".join(SENTENCES)
    starts = [w.start for w in reference.words]
    assert starts == sorted(starts)
    assert speech_set.PAUSES_SECONDS[0] <= starts[0] and reference.words[-1].end <= reference.clip.duration
    # in order, all but the words espeak-ng runs together ("at a time": "a" has no event, so neither
    # "a" nor "time" is a reference word)
    spoken, said = [w.word for w in reference.words], re.findall(r"\w+", reference.text)
    remaining = iter(said)
    assert all(word in remaining for word in spoken) and len(spoken) == len(said) - 2


def test_ranking_on_base_finds_the_published_heads(base, forcing):
    ranking = heads.rank_forced(base, forcing, top=8)
    published = set(base.alignment_heads)
    assert len(ranking.heads) == 48 and ranking.current_is_published
    median = float(np.median([score.error for _, score in ranking.heads]))
    current = ranking.sets["current"][1]
    assert current.error < median / 3 and current.close > 0.8
    assert ranking.overlap(8) >= 4  # most of the 8 best heads alone are published ones
    assert published & {head for head, _ in ranking.heads[:3]}
    assert ranking.sets["top"][0] == ranking.top(8)
    assert hooks_left(base.model) == 0  # the teacher-forced passes left no hook behind


def test_timed_words_are_the_products(base, speech, forcing, tmp_path):
    import probe

    ((reference, forced),) = forcing
    trace = probe.run(reference.clip, model=base, store=tmp_path / "store", language="en",
                      disable=["attention", "logit_lens", "activations", "token_probs"])
    assert trace.manifest["transcript"] == reference.text  # the same tokens: the same DTW
    mine = heads.timed_words(base, forced, list(base.alignment_heads))
    assert [(w["word"], w["start"], w["end"]) for w in mine] == \
        [(w["word"], w["start"], w["end"]) for w in trace.words()]


@pytest.fixture
def tiny_en_dir(tmp_path):
    from probe.models import embedded_model_dir

    directory = tmp_path / "tiny.en"
    shutil.copytree(embedded_model_dir("tiny.en"), directory)
    return directory


def test_write_puts_heads_where_load_model_reads_them(tiny_en_dir, capsys):
    from probe.models import load_model

    before = json.loads((tiny_en_dir / "generation_config.json").read_text())
    code = main(["heads", "--alignment", "--write", str(tiny_en_dir), "--top", "4", "--json", "--device", "cpu",
                 "--text", SENTENCES[1]])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    top = result["sets"]["top"]["heads"]
    assert len(top) == 4 and result["written"] == str(tiny_en_dir / "generation_config.json")
    after = json.loads((tiny_en_dir / "generation_config.json").read_text())
    assert after["alignment_heads"] == top
    assert {k: v for k, v in after.items() if k != "alignment_heads"} == \
        {k: v for k, v in before.items() if k != "alignment_heads"}
    assert load_model(tiny_en_dir, device="cpu").alignment_heads == [tuple(h) for h in top]


@pytest.mark.parametrize("argv, message", [
    (["heads"], "add --alignment"),
    (["heads", "--alignment", str(EXAMPLES / "en_fox.flac")], "--times FILE"),
    (["heads", "--alignment", "missing.wav", "--times", "{times}"], "does not exist"),
    (["heads", "--alignment", "--write", "{not_a_model}"], "is not a transformers model directory"),
    (["heads", "--alignment", "--times", "{times}"], "name the clips too"),
    (["heads", "--alignment", str(EXAMPLES / "en_fox.flac"), "--times", "{bad_times}"], "cannot be read"),
    (["heads", "--alignment", "--language", "de"], "speech set is English"),
])
def test_bad_input_is_one_line(argv, message, tmp_path, capsys):
    times = tmp_path / "times.json"
    times.write_text(json.dumps({"missing.wav": [{"word": "hello", "start": 0.1}]}))
    bad_times = tmp_path / "bad.json"
    bad_times.write_text(json.dumps({"en_fox.flac": [{"start": 0.1}]}))
    not_a_model = tmp_path / "plain"
    not_a_model.mkdir()
    filled = [a.format(times=times, bad_times=bad_times, not_a_model=not_a_model) for a in argv]
    assert main(filled) == 2
    err = capsys.readouterr().err
    assert err.startswith("probe: error: ") and err.count("\n") == 1 and message in err


def test_own_clips_with_csv_times(speech, tmp_path, capsys):
    from probe.audio import encode_flac

    (reference,) = speech
    clip = tmp_path / "lecture.flac"
    clip.write_bytes(encode_flac(reference.clip.samples))
    times = tmp_path / "times.csv"
    times.write_text("clip,word,start,end\n" + "".join(f"lecture.flac,{w.word},{w.start},{w.end}\n"
                                                        for w in reference.words))
    assert main(["heads", "--alignment", str(clip), "--times", str(times), "--model", "tiny.en", "--device", "cpu",
                 "--top", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["clips"] == 1 and result["written"] is None and len(result["heads"]) == 24
    # every reference word but the first (DTW puts it at 0 s) is matched and scored
    assert result["sets"]["current"]["words"] == len(reference.words) - 1
