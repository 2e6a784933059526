"""Alignment-head discovery: which cross-attention heads time words, measured on speech with known times.

Word timings come from the cross-attention of a model's *alignment heads* (:mod:`probe.alignment`);
a fine-tune without ``generation_config.alignment_heads`` falls back to every head of the second
half of the decoder.  This module owns measuring heads instead: each
:class:`~probe.speech_set.ReferenceClip`'s transcript is teacher-forced once with every decoder
layer's cross-attention captured (:func:`teacher_force`); the words are timed from one head, or a
set of heads averaged, exactly as word timing does it (:func:`timed_words`: the product's z-score,
median filter, DTW and word split); the word starts are scored against the reference
(:func:`start_offsets`, :class:`Score`: mean absolute error in seconds, fraction within 0.2 s,
mean offset); every (layer, head) is ranked (:func:`rank_heads`, or :func:`rank_forced` on passes
already made), next to the model's own set, the top heads together and the default; and
:func:`write_alignment_heads` puts chosen heads into a transformers model directory's
``generation_config.json``, where :func:`probe.models.load_model` reads them.
"""

from __future__ import annotations

import difflib
import json
import os
import string
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from probe import convert
from probe.alignment import alignment_matrix, words_from_alignment
from probe.constants import SAMPLE_RATE
from probe.errors import OptionError
from probe.speech_set import ReferenceClip

CLOSE_SECONDS = 0.2  # a word start this close to the reference counts as right
DEFAULT_TOP = 8
Head = tuple[int, int]  # (decoder layer, head)


@dataclass
class Forced:
    """One clip's transcript teacher-forced: what every head attended to, and what was forced."""

    weights: torch.Tensor  # [layer, head, position, frame] float32, renormalised over the audio frames
    rows: slice  # positions that emitted the text tokens and <|endoftext|>: the rows the DTW walks
    text_tokens: list[int]
    language: str


@dataclass(frozen=True)
class Score:
    """How well some heads time the words: over every reference word matched to a timed word."""

    error: float  # mean |timed start − reference start|, seconds
    close: float  # fraction of words whose start is within CLOSE_SECONDS
    bias: float  # mean (timed start − reference start), seconds: > 0 is late
    words: int  # reference words matched

    def to_dict(self) -> dict:
        return {"start_error_s": round(self.error, 4), "within_0.2s": round(self.close, 4),
                "start_bias_s": round(self.bias, 4), "words": self.words}


@dataclass
class Ranking:
    """Every head's :class:`Score`, best first, and the scores of head sets (averaged as word timing does)."""

    model_id: str
    heads: list[tuple[Head, Score]]  # best (lowest start error) first
    sets: dict[str, tuple[list[Head], Score]] = field(default_factory=dict)  # name → (heads, score)
    current_is_published: bool = True  # the model's alignment_heads came from its generation config
    clips: int = 0
    seconds: float = 0.0

    def top(self, count: int) -> list[Head]:
        """The ``count`` best heads, in (layer, head) order."""
        return sorted(head for head, _ in self.heads[:count])

    def overlap(self, count: int | None = None) -> int:
        """How many of the top ``count`` heads (default: as many as the model's own set) are in its set."""
        current = set(self.sets["current"][0])
        return len(current & set(self.top(count or len(current))))

    def to_dict(self) -> dict:
        return {
            "model": self.model_id, "clips": self.clips, "seconds": round(self.seconds, 2),
            "current_is_published": self.current_is_published,
            "heads": [{"layer": layer, "head": head, "rank": rank, **score.to_dict()}
                      for rank, ((layer, head), score) in enumerate(self.heads, 1)],
            "sets": {name: {"heads": [list(h) for h in heads], **score.to_dict()}
                     for name, (heads, score) in self.sets.items()},
        }


# --------------------------------------------------------------------------- one clip


def teacher_force(loaded, reference: ReferenceClip) -> Forced:
    """One pass of the encoder and decoder over ``reference``'s transcript, with every decoder layer's
    cross-attention captured (``outputs_from_patterns``: eager attention's own probabilities).

    The decoder input is openai-whisper's ``find_alignment``: ``<|startoftranscript|>[<|lang|>
    <|transcribe|>]<|notimestamps|>`` + the text's tokens (``" " + text``) + ``<|endoftext|>``.
    """
    from probe.hooks import attach
    from probe.points import select_points
    from probe.tracer.run import audio_frames

    model, tokenizer = loaded.model, loaded.processor.tokenizer
    gen = model.generation_config
    prompt = _prompt(loaded, reference.language)
    text_tokens = tokenizer.encode(" " + reference.text.strip(), add_special_tokens=False)
    ids = torch.tensor([prompt + text_tokens + [gen.eos_token_id]], device=loaded.device)  # [1, position]
    features = loaded.processor.feature_extractor(reference.clip.samples, sampling_rate=SAMPLE_RATE,
                                                       return_tensors="pt")
    features = features.input_features.to(loaded.device, loaded.dtype)  # [1, n_mels, 3000]
    points = select_points(model.config, ["decoder.blocks.*.cross_attn.hook_pattern"])
    captured: dict[int, torch.Tensor] = {}  # layer → [1, head, position, frame]
    with torch.inference_mode(), attach(model, points, lambda point, tensor: captured.__setitem__(point.layer, tensor),
                                        outputs_from_patterns=True):
        encoded = model.model.encoder(features).last_hidden_state  # [1, frame, d_model]
        model.model.decoder(input_ids=ids, encoder_hidden_states=encoded)
    n_frames = audio_frames(reference.clip.duration, model.config.max_source_positions)
    weights = torch.stack([captured[layer][0] for layer in sorted(captured)])[..., :n_frames].float()
    weights = weights / weights.sum(-1, keepdim=True)  # as word timing: a softmax over the audio frames only
    return Forced(weights.cpu(), slice(len(prompt) - 1, len(prompt) + len(text_tokens)), text_tokens,
                  reference.language)


def _prompt(loaded, language: str) -> list[int]:
    gen = loaded.model.generation_config
    if not loaded.is_multilingual:
        if language != "en":
            raise OptionError(f"{loaded.model_id} is English-only; --language {language} needs a multilingual model")
        return [gen.decoder_start_token_id, gen.no_timestamps_token_id]
    lang_to_id = getattr(gen, "lang_to_id", None) or {}
    if f"<|{language}|>" not in lang_to_id:
        raise OptionError(f"unknown language {language!r} for {loaded.model_id}; use a code such as en, de, zh")
    return [gen.decoder_start_token_id, lang_to_id[f"<|{language}|>"], gen.task_to_id["transcribe"],
            gen.no_timestamps_token_id]


def timed_words(loaded, forced: Forced, heads: list[Head]) -> list[dict]:
    """The words of ``forced`` timed from ``heads`` averaged, as the cross_attention plugin times them."""
    weights = torch.stack([forced.weights[layer, head] for layer, head in heads])  # [head, position, frame]
    matrix = alignment_matrix(weights, rows=forced.rows).numpy()  # [text token + 1, frame]
    return words_from_alignment(matrix, forced.text_tokens, loaded.processor.tokenizer, forced.language,
                                loaded.model.generation_config.eos_token_id)


def _normalised(word: str) -> str:
    return word.strip().lower().translate(str.maketrans("", "", string.punctuation + "“”‘’¿¡"))


def start_offsets(words: list[dict], reference: ReferenceClip) -> np.ndarray:
    """timed start − reference start (seconds) of each reference word matched to a timed word,
    matched by word sequence (lower case, no punctuation), [matched word].

    The first timed word is left out: DTW starts every path at frame 0, so it starts at 0 s
    whatever the heads.
    """
    timed = [_normalised(w["word"]) for w in words]
    expected = [_normalised(w.word) for w in reference.words]
    matcher = difflib.SequenceMatcher(None, expected, timed, autojunk=False)
    pairs = [(block.a + k, block.b + k) for block in matcher.get_matching_blocks() for k in range(block.size)
             if block.b + k > 0]
    return np.array([words[j]["start"] - reference.words[i].start for i, j in pairs], dtype=np.float64)


def _score(offsets: list[np.ndarray]) -> Score:
    pooled = np.concatenate(offsets) if offsets else np.zeros(0)
    if not pooled.size:
        return Score(float("inf"), 0.0, 0.0, 0)
    errors = np.abs(pooled)
    return Score(float(errors.mean()), float((errors <= CLOSE_SECONDS).mean()), float(pooled.mean()), int(pooled.size))


# --------------------------------------------------------------------------- every head


Forcing = list[tuple[ReferenceClip, Forced]]  # each clip with its teacher-forced pass


def teacher_force_all(loaded, references: list[ReferenceClip]) -> Forcing:
    """:func:`teacher_force` of each reference clip (one encoder and decoder pass each)."""
    if not references:
        raise OptionError("no clips to rank heads on; give clips with --times, or none for the built-in speech set")
    return [(reference, teacher_force(loaded, reference)) for reference in references]


def score_heads(loaded, forcing: Forcing, heads: list[Head]) -> Score:
    """How well ``heads`` averaged time the words of every clip in ``forcing``, pooled over words."""
    with _one_thread():
        return _score([start_offsets(timed_words(loaded, forced, heads), reference) for reference, forced in forcing])


def rank_forced(loaded, forcing: Forcing, top: int = DEFAULT_TOP) -> Ranking:
    """Score every (layer, head) on ``forcing``, best first; also score, with heads averaged, the
    model's own ``alignment_heads`` (``current``), the ``top`` best together (``top``) and openai-whisper's
    fallback of every head in the second half of the layers (``default``)."""
    started = time.perf_counter()
    config = loaded.model.config
    every = [(layer, head) for layer in range(config.decoder_layers) for head in range(config.decoder_attention_heads)]
    scored = sorted(((head, score_heads(loaded, forcing, [head])) for head in every),
                    key=lambda item: (item[1].error, -item[1].close))
    ranking = Ranking(loaded.model_id, scored, clips=len(forcing),
                      current_is_published=bool(getattr(loaded.model.generation_config, "alignment_heads", None)))
    default = [tuple(h) for h in convert.default_alignment_heads(config.decoder_layers, config.decoder_attention_heads)]
    best = ranking.top(min(max(1, top), len(every)))
    for name, heads in (("current", list(loaded.alignment_heads)), ("top", best), ("default", default)):
        ranking.sets[name] = (heads, score_heads(loaded, forcing, heads))
    ranking.seconds = time.perf_counter() - started
    return ranking


def rank_heads(loaded, references: list[ReferenceClip], top: int = DEFAULT_TOP) -> Ranking:
    """:func:`rank_forced` on ``references`` teacher-forced; ``seconds`` counts the passes too."""
    started = time.perf_counter()
    ranking = rank_forced(loaded, teacher_force_all(loaded, references), top)
    ranking.seconds = time.perf_counter() - started
    return ranking


@contextmanager
def _one_thread():
    """torch on one thread: the median filter's tensors are small, and waking a thread pool for each
    of its operations costs more than the work (tens of times more on a machine that is busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- writing them


def check_model_dir(directory: str | Path, config=None) -> Path:
    """``directory`` as a transformers Whisper directory (whose decoder has ``config``'s shape, when
    given), or a one-line :class:`OptionError` saying what it is instead."""
    directory = Path(directory).expanduser().resolve()
    fmt = convert.detect_format(directory) if directory.is_dir() else None
    if fmt == "ctranslate2":
        raise OptionError(f"--write {directory} is a CTranslate2 directory; convert it first (probe convert SRC DEST) "
                          "and write to DEST")
    if fmt != "hf":
        raise OptionError(f"--write {directory} is not a transformers model directory (config.json + model.safetensors);"
                          " give the local directory of the model whose heads were ranked")
    theirs = convert.read_hf_config(directory)
    if config is None:
        return directory
    shape = (theirs.get("decoder_layers"), theirs.get("decoder_attention_heads"))
    if shape != (config.decoder_layers, config.decoder_attention_heads):
        raise OptionError(f"--write {directory} has {shape[0]} decoder layers × {shape[1]} heads, but the ranked model "
                          f"has {config.decoder_layers} × {config.decoder_attention_heads}; rank that model's heads "
                          f"(--model {directory})")
    return directory


def write_alignment_heads(directory: str | Path, heads: list[Head], config) -> Path:
    """Set ``alignment_heads`` in ``directory``'s ``generation_config.json`` (its other keys kept; a
    directory without one gets transformers' generation config for its model config), atomically.
    Returns the file written."""
    directory = check_model_dir(directory, config)
    path = directory / "generation_config.json"
    if path.is_file():
        settings = json.loads(path.read_text(encoding="utf-8"))
    else:  # what transformers would derive when loading the directory, so nothing else changes
        from transformers import GenerationConfig, WhisperConfig

        settings = GenerationConfig.from_model_config(WhisperConfig.from_pretrained(directory)).to_diff_dict()
    settings["alignment_heads"] = [[int(layer), int(head)] for layer, head in heads]
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def describe(ranking: Ranking, shown: int) -> list[str]:
    """The ranking as lines for ``probe heads --alignment``: the ``shown`` best heads, then the sets."""
    lines = [f"{ranking.model_id}: {len(ranking.heads)} cross-attention heads ranked by word-start error on "
             f"{ranking.clips} clip{'s' * (ranking.clips != 1)} ({ranking.sets['current'][1].words} words) in {ranking.seconds:.1f} s",
             f"{'rank':>4}  {'head':<6} {'start error':>11}  within {CLOSE_SECONDS} s"]
    current = set(ranking.sets["current"][0])
    for rank, ((layer, head), score) in enumerate(ranking.heads[:shown], 1):
        mark = "  *" if (layer, head) in current else ""
        lines.append(f"{rank:>4}  {layer}.{head:<4} {score.error:>9.3f} s  {score.close:>6.0%}{mark}")
    own = "published alignment_heads" if ranking.current_is_published else "no alignment_heads: the default"
    lines.append(f"sets (heads averaged, as word timing does; * = in the model's current set, {own}):")
    for name, (heads, score) in ranking.sets.items():
        lines.append(f"  {name:<8} {len(heads):>3} heads  {score.error:.3f} s  {score.close:.0%} within {CLOSE_SECONDS} s")
    count = len(current)
    lines.append(f"top {count} ∩ current set: {ranking.overlap(count)} of {count}")
    return lines
