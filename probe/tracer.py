"""Tracing: real Whisper decoding of one clip, window by window, with plugins watching.

For every 30 s window the tracer (1) computes the log-Mel features and runs the encoder, (2) runs
one decoder step on ``<|startoftranscript|>`` to get the language distribution and the no-speech
probability (as openai-whisper does), (3) calls transformers' own ``generate()`` with the encoder
output — greedy or beam search, with or without timestamps — while the hook points plugins asked
for are attached, and (4) replays the chosen token sequence once through the decoder, teacher-forced,
for the per-token records (cross-attention, probabilities, logit lens).  Hooks only observe, so the
tokens are exactly those of a plain ``generate()`` call; ``tests/test_faithful.py`` checks it.

Plugins see a :class:`Run` (what is being traced), a :class:`CaptureContext` on each capture (phase,
window, step) and a :class:`WindowResult` per window; they write records into the trace at the end.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from probe import hooks as hooks_mod
from probe.audio import AudioClip, Window, split_windows
from probe.errors import MemoryBudgetError, OptionError, PluginError, ProbeError
from probe.models import quiet_transformers
from probe.plugin_manager import call_each, implementations, plugin_version
from probe.points import HookPoint, select_points

FRAMES_PER_SECOND = 50  # encoder frames: 1500 per 30 s window, 20 ms each
TASKS = ("transcribe", "translate")
WARN_BYTES = 256 * 2**20  # say how much a trace will keep before recording more than this


@dataclass
class DecodeOptions:
    """How to decode; everything a plain ``generate()`` call would be given."""

    language: str | None = None  # ISO code ("en", "zh"); None detects it per window
    task: str = "transcribe"
    timestamps: bool = False
    num_beams: int = 1
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None  # benchmarks fix the length with min == max

    def validate(self, loaded) -> None:
        if self.task not in TASKS:
            raise OptionError(f"unknown task {self.task!r}; use --task transcribe or --task translate")
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise OptionError(f"--num-beams must be a whole number ≥ 1 (got {self.num_beams!r})")
        longest = loaded.model.config.max_target_positions - 4  # the longest prompt is 4 tokens
        for name, value in (("--max-new-tokens", self.max_new_tokens), ("--min-new-tokens", self.min_new_tokens)):
            if value is not None and not 1 <= value <= longest:
                raise OptionError(f"{name} must be between 1 and {longest} for this model (got {value})")
        if not loaded.is_multilingual:
            if self.task == "translate":
                raise OptionError(f"{loaded.model_id} is English-only and cannot translate; use a multilingual "
                                  "model (e.g. --model base)")
            if self.language not in (None, "en"):
                raise OptionError(f"{loaded.model_id} is English-only; drop --language or use a multilingual model")
        elif self.language is not None:
            codes = language_codes(loaded)
            if self.language not in codes:
                raise OptionError(f"unknown language {self.language!r}; use an ISO code such as "
                                  f"{', '.join(sorted(codes)[:8])}, ... ({len(codes)} in all)")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def audio_frames(seconds: float, max_frames: int = 1500) -> int:
    """Encoder frames (20 ms each) that hold ``seconds`` of audio, at least 1.

    As openai-whisper counts them: log-Mel frames (hop 160 samples) halved by the conv stem.
    """
    return max(1, min(round(seconds * 16000) // 160 // 2, max_frames))


def language_codes(loaded) -> dict[str, int]:
    """Language code → token id, e.g. ``{"en": 50259, ...}`` (empty for English-only models)."""
    lang_to_id = getattr(loaded.model.generation_config, "lang_to_id", None) or {}
    return {token.strip("<|>"): token_id for token, token_id in lang_to_id.items()}


@dataclass
class CaptureContext:
    """Where in the run a capture happened.  One object, updated in place by the tracer."""

    phase: str = "encode"  # "encode" | "detect" (not dispatched) | "decode" | "replay"
    window: int = 0
    step: int = -1  # decoder call within the window's generate(): 0 is the prompt
    num_beams: int = 1
    tokens: list[int] | None = None  # replay: the full sequence, prompt included
    prompt_length: int = 0  # replay: query positions prompt_length-1 … len(tokens)-2 emitted the generated tokens


@dataclass
class WindowResult:
    """What one 30 s window decoded to."""

    index: int
    start: float  # seconds within the clip
    end: float
    prompt: list[int]  # forced special tokens, e.g. <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
    tokens: list[int]  # generated tokens after the prompt (timestamps and <|endoftext|> included)
    text: str
    language: str
    language_probability: float
    language_probs: dict[str, float]  # every language, descending
    no_speech_probability: float
    n_frames: int  # encoder frames that hold audio (≤ 1500)
    segments: list[dict] = field(default_factory=list)  # with --timestamps: {start, end, text}
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def sequence(self) -> list[int]:
        return self.prompt + self.tokens

    def to_dict(self, tokenizer=None) -> dict:
        data = {
            "index": self.index, "start": self.start, "end": self.end, "text": self.text,
            "tokens": self.tokens, "prompt": self.prompt, "language": self.language,
            "language_probability": self.language_probability,
            "no_speech_probability": self.no_speech_probability, "n_frames": self.n_frames,
            "segments": self.segments,
        }
        if tokenizer is not None:
            data["prompt_tokens"] = tokenizer.convert_ids_to_tokens(self.prompt)
        return data


@dataclass
class Run:
    """One clip being traced: what plugins read, plus a scratch ``state`` dict for them."""

    loaded: Any  # probe.models.LoadedModel
    clip: AudioClip
    options: DecodeOptions
    points: list[str] = field(default_factory=list)  # user-requested hook points (--points)
    plugin_options: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    windows: list[WindowResult] = field(default_factory=list)
    window_spans: list[tuple[float, float]] = field(default_factory=list)  # (start, end) seconds, all windows
    plugin_seconds: dict[str, float] = field(default_factory=dict)  # time spent in each plugin's hooks

    @property
    def model(self):
        return self.loaded.model

    @property
    def config(self):
        return self.loaded.model.config

    @property
    def tokenizer(self):
        return self.loaded.processor.tokenizer

    @property
    def eot(self) -> int:
        return self.loaded.model.generation_config.eos_token_id

    def option(self, key: str, default=None):
        return self.plugin_options.get(key, default)

    @property
    def expected_tokens(self) -> int:
        """An upper estimate of tokens per window, for memory estimates before decoding."""
        if self.options.max_new_tokens:
            return self.options.max_new_tokens + 1
        longest = max((end - start for start, end in self.window_spans), default=30.0)
        return min(self.config.max_target_positions // 2, int(longest * 6) + 8)

    @property
    def frames(self) -> list[int]:
        """Encoder frames holding audio, per window."""
        return [audio_frames(end - start, self.config.max_source_positions) for start, end in self.window_spans]


@dataclass
class _Item:
    """One window of a batch: its run, its own capture context, and its captures held back."""

    run: Run
    window: Window
    ctx: CaptureContext
    live: bool  # False for a run's second and later windows in one batch: their captures wait
    deferred: list = field(default_factory=list)  # (point, tensor, ctx snapshot, routes), in order


class _Router:
    """Routes each fired hook point to the plugins that asked for it, in the phases they asked.

    A batch holds several windows (of one clip or of many); the batch axis is split back so each
    run's plugins see only their own rows (``rows`` = beams per window while decoding).  Plugins
    see a run's windows one after another: when a batch holds several windows of one run, the
    captures of all but its first are kept (with a snapshot of their context) and handed over by
    :meth:`flush`, just before that window's ``probe_window_end``.
    """

    def __init__(self, items: list[_Item]):
        self.items = items
        self.phase = "encode"  # captures in "detect" go nowhere
        self.busy = False  # a plugin calling a hooked module inside probe_capture is not the model's forward

    def __call__(self, point: HookPoint, tensor: torch.Tensor) -> None:
        if self.busy or self.phase == "detect":
            return
        rows = tensor.shape[0] // len(self.items)
        table = "_replay" if self.phase == "replay" else "_decode"
        for i, item in enumerate(self.items):
            routes = item.run.state[table][1].get(point.name)
            if not routes:
                continue
            part = tensor if len(self.items) == 1 else tensor[i * rows:(i + 1) * rows]
            if item.live:
                self._dispatch(item.run, point, part, item.ctx, routes)
            else:
                item.deferred.append((point, part, dataclasses.replace(item.ctx), routes))

    def flush(self, item: _Item) -> None:
        """Hand a held-back window's captures to its plugins, in the order they happened."""
        deferred, item.deferred = item.deferred, []
        for point, tensor, ctx, routes in deferred:
            self._dispatch(item.run, point, tensor, ctx, routes)

    def _dispatch(self, run: Run, point: HookPoint, tensor: torch.Tensor, ctx: CaptureContext, routes) -> None:
        self.busy = True
        try:
            for name, function, argnames in routes:
                values = {"run": run, "point": point, "tensor": tensor, "ctx": ctx}
                started = time.perf_counter()
                try:
                    function(*[values[a] for a in argnames])
                except (ProbeError, torch.OutOfMemoryError):  # OOM: the memory-budget message, below
                    raise
                except Exception as exc:
                    raise PluginError(f"plugin {name!r} raised in probe_capture at {point.name}:"
                                      f" {type(exc).__name__}: {exc} (disable it with -p no:{name})") from exc
                finally:
                    run.plugin_seconds[name] = run.plugin_seconds.get(name, 0.0) + time.perf_counter() - started
        finally:
            self.busy = False


def _is_patterns(result) -> bool:
    return isinstance(result, (list, tuple, set, frozenset)) and all(isinstance(p, str) for p in result)


def _requested(pm, run: Run, hook_name: str) -> dict[str, list[HookPoint]]:
    """Plugin name → the hook points it asked for via ``hook_name``."""
    asked = call_each(pm, hook_name, expect=_is_patterns, run=run)
    return {name: select_points(run.config, list(patterns)) for name, patterns in asked.items()}


def _routes(pm, requested: dict[str, list[HookPoint]]) -> tuple[list[HookPoint], dict[str, list]]:
    capture_impls = {name: (name, fn, args) for name, fn, args in implementations(pm, "probe_capture")}
    points: dict[str, HookPoint] = {}
    routes: dict[str, list] = {}
    for plugin, wanted in requested.items():
        if plugin not in capture_impls:
            raise PluginError(f"plugin {plugin!r} asks for hook points but implements no probe_capture")
        for point in wanted:
            points[point.name] = point
            routes.setdefault(point.name, []).append(capture_impls[plugin])
    return list(points.values()), routes


def _no_speech_token(tokenizer) -> int | None:
    for token in ("<|nospeech|>", "<|nocaptions|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            return token_id
    return None


class Tracer:
    """Decodes clips with one model and one plugin manager; see the module docstring."""

    def __init__(self, loaded, pm, options: DecodeOptions, points=(), plugin_options=None, progress: bool = False):
        options.validate(loaded)
        self.progress = progress  # a progress bar (stderr) for clips longer than one window
        self.loaded, self.pm, self.options = loaded, pm, options
        self.points = list(points)
        self.plugin_options = dict(plugin_options or {})
        gen = loaded.model.generation_config
        tokenizer = loaded.processor.tokenizer
        self.sot = gen.decoder_start_token_id
        self.eot = gen.eos_token_id
        self.no_speech = _no_speech_token(tokenizer)
        self.languages = language_codes(loaded)

    # -- per window -------------------------------------------------------------------------
    def features(self, window: Window) -> torch.Tensor:
        """log-Mel features [1, n_mels, 3000] on the model's device and dtype."""
        extractor = self.loaded.processor.feature_extractor
        feats = extractor(window.samples, sampling_rate=extractor.sampling_rate, return_tensors="pt").input_features
        return feats.to(self.loaded.device, self.loaded.dtype)

    def prompt(self, language: str) -> list[int]:
        gen = self.loaded.model.generation_config
        prompt = [self.sot]
        if self.loaded.is_multilingual:
            prompt += [self.languages[language], gen.task_to_id[self.options.task]]
        if not self.options.timestamps:
            prompt.append(gen.no_timestamps_token_id)
        return prompt

    def detect(self, encoder_hidden: torch.Tensor) -> list[tuple[dict[str, float], float]]:
        """Per window: (language → probability, descending; no-speech probability).

        One decoder step on <|startoftranscript|>, as openai-whisper does.  encoder_hidden: [batch, frame, d_model].
        """
        model = self.loaded.model
        sot = torch.full((encoder_hidden.shape[0], 1), self.sot, device=encoder_hidden.device)  # [batch, 1]
        hidden = model.model.decoder(input_ids=sot, encoder_hidden_states=encoder_hidden,
                                     use_cache=False).last_hidden_state
        return self.language_probs(torch.nn.functional.linear(hidden[:, -1], model.proj_out.weight))

    def language_probs(self, logits: torch.Tensor) -> list[tuple[dict[str, float], float]]:
        """From the logits at <|startoftranscript|> [batch, vocab]: language distribution and no-speech."""
        logits = logits.float()
        no_speech = (logits.softmax(-1)[:, self.no_speech].tolist() if self.no_speech is not None
                     else [0.0] * len(logits))
        if not self.languages:
            return [({"en": 1.0}, p) for p in no_speech]
        probs = logits[:, list(self.languages.values())].softmax(-1).tolist()  # [batch, language]
        return [(dict(sorted(zip(self.languages, row), key=lambda item: -item[1])), p)
                for row, p in zip(probs, no_speech)]

    def generate_kwargs(self, languages: list[str]) -> dict:
        kwargs: dict[str, Any] = {"return_timestamps": self.options.timestamps, "num_beams": self.options.num_beams}
        if self.loaded.is_multilingual:
            kwargs.update(language=languages[0] if len(set(languages)) == 1 else languages, task=self.options.task)
        if self.options.max_new_tokens is not None:
            kwargs["max_new_tokens"] = self.options.max_new_tokens
        if self.options.min_new_tokens is not None:
            kwargs["min_new_tokens"] = self.options.min_new_tokens
        return kwargs

    def decode_batch(self, items: list[tuple[Run, Window]]) -> tuple[list[WindowResult], _Router]:
        """Decode windows together (one ``generate()`` call), then replay the chosen sequences together.

        The language distribution and no-speech probability come from the decoder's first step on
        ``<|startoftranscript|>``: before ``generate()`` when the language must be detected, else
        from the replay's first position (the same computation, done once).  Returns the results
        and the router, whose held-back captures (:meth:`_Router.flush`) go out before each
        window's ``probe_window_end``.
        """
        from transformers.modeling_outputs import BaseModelOutput

        model = self.loaded.model
        runs = [run for run, _ in items]
        seen: set[int] = set()
        batch = []
        for run, window in items:
            batch.append(_Item(run, window, CaptureContext(window=window.index, num_beams=self.options.num_beams),
                               live=id(run) not in seen))
            seen.add(id(run))
        contexts = [item.ctx for item in batch]
        router = _Router(batch)
        decode_points = _union(run.state["_decode"][0] for run in runs)
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        features = torch.cat([self.features(window) for _, window in items])  # [batch, n_mels, 3000]
        counting = any(p.side == "decoder" for p in decode_points)
        detect_first = self.options.language is None and bool(self.languages)
        with hooks_mod.attach(model, decode_points, router), self._step_counter(router, contexts, counting):
            self._set_phase(router, contexts, "encode")
            encoder_hidden = model.model.encoder(features).last_hidden_state  # [batch, frame, d_model]
            timings["encode"] = time.perf_counter() - clock
            self._set_phase(router, contexts, "detect")
            detected = self.detect(encoder_hidden) if detect_first else None
            languages = ([next(iter(probs)) for probs, _ in detected] if detect_first
                         else [self.options.language or "en"] * len(items))
            timings["detect"] = time.perf_counter() - clock - timings["encode"]
            self._set_phase(router, contexts, "decode")
            replaying = any(run.state["_replay"][0] for run in runs)
            with quiet_transformers(), _CrossKeyValues(model.model.decoder, replaying) as cross_kv:
                out = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden),
                                     **self.generate_kwargs(languages))
        timings["generate"] = time.perf_counter() - clock - timings["encode"] - timings["detect"]
        prompts = [self.prompt(language) for language in languages]
        sequences = [prompt + self.completed(_sequence_of(out, i), prompt) for i, prompt in enumerate(prompts)]
        replay_clock = time.perf_counter()
        cross_cache = cross_kv.cache(len(items), self.options.num_beams)
        first_logits = self.replay_batch(router, encoder_hidden, sequences, [len(p) for p in prompts], cross_cache)
        timings["replay"] = time.perf_counter() - replay_clock
        if detected is None:
            detected = (self.language_probs(first_logits) if first_logits is not None
                        else self.detect(encoder_hidden))
        share = {key: value / len(items) for key, value in timings.items()}
        results = [self.result(window, prompt, sequence[len(prompt):], language, language_probs, no_speech, dict(share))
                   for (_, window), prompt, sequence, language, (language_probs, no_speech)
                   in zip(items, prompts, sequences, languages, detected)]
        return results, router

    def replay_batch(self, router: _Router, encoder_hidden: torch.Tensor, sequences: list[list[int]],
                     prompt_lengths: list[int], cross_cache=None) -> torch.Tensor | None:
        """Teacher-forced pass of every window's whole sequence, in one decoder call.

        Position q emitted token q + 1; the last position emits nothing (openai-whisper's alignment
        normalises over it too).  Shorter sequences are padded at the end, which the causal mask
        keeps from touching real positions; plugins read ``len(ctx.tokens)`` positions.  The
        cross-attention keys and values ``generate()`` computed are reused when given (``cross_cache``).
        Returns the logits at position 0 (<|startoftranscript|>) [batch, vocab], or None when no
        plugin replays.
        """
        replay_points = _union(item.run.state["_replay"][0] for item in router.items)
        if not replay_points:
            return None
        model = self.loaded.model
        contexts = [item.ctx for item in router.items]
        for ctx, sequence, prompt_length in zip(contexts, sequences, prompt_lengths):
            ctx.tokens, ctx.prompt_length = sequence, prompt_length
        self._set_phase(router, contexts, "replay")
        longest = max(len(sequence) for sequence in sequences)
        ids = torch.tensor([sequence + [self.eot] * (longest - len(sequence)) for sequence in sequences],
                           device=encoder_hidden.device)  # [batch, query]
        # nothing is decoded from this pass: patterned attention returns probs·v, not its kernel too
        with hooks_mod.attach(model, replay_points, router, outputs_from_patterns=True):
            hidden = model.model.decoder(input_ids=ids, encoder_hidden_states=encoder_hidden,
                                         **_cache_kwargs(model.model.decoder, cross_cache)
                                         ).last_hidden_state  # [batch, query, d_model]
            if any(p.name == "hook_logits" for p in replay_points):
                model.proj_out(hidden)
        # not through proj_out's module call, so no hook sees this extra slice
        return torch.nn.functional.linear(hidden[:, 0], model.proj_out.weight)  # [batch, vocab]

    @staticmethod
    def _set_phase(router: "_Router", contexts: list[CaptureContext], phase: str) -> None:
        router.phase = phase
        for ctx in contexts:
            ctx.phase = phase

    def result(self, window: Window, prompt, tokens, language, language_probs, no_speech, timings) -> WindowResult:
        tokenizer = self.loaded.processor.tokenizer
        return WindowResult(
            index=window.index, start=window.start, end=window.end, prompt=prompt, tokens=tokens,
            text=tokenizer.decode([t for t in tokens if t < self.eot]).strip(), language=language,
            language_probability=language_probs.get(language, 0.0), language_probs=language_probs,
            no_speech_probability=no_speech,
            n_frames=audio_frames(window.end - window.start, self.loaded.model.config.max_source_positions),
            segments=self.segments(tokens, window.start) if self.options.timestamps else [],
            timings=timings,
        )

    def completed(self, generated: list[int], prompt: list[int]) -> list[int]:
        """The generated tokens after the prompt, ending in <|endoftext|> when the model ended the text.

        transformers returns Whisper sequences without the forced prompt and without the final
        <|endoftext|>; the replay needs that last token (its cross-attention closes the last word).
        """
        if generated[: len(prompt)] == prompt:
            generated = generated[len(prompt):]
        if self.eot in generated:  # batched rows are padded with <|endoftext|> after their end
            generated = generated[: generated.index(self.eot) + 1]
        limit = self.options.max_new_tokens or (self.loaded.model.config.max_target_positions - len(prompt))
        if (not generated or generated[-1] != self.eot) and len(generated) < limit:
            generated = generated + [self.eot]
        return generated

    def segments(self, tokens: list[int], offset: float) -> list[dict]:
        """Timestamped segments from ``<|t0|> text <|t1|>`` pairs (seconds within the clip)."""
        gen = self.loaded.model.generation_config
        first_ts = gen.no_timestamps_token_id + 1
        tokenizer = self.loaded.processor.tokenizer
        segments, start, text = [], None, []
        for token in tokens:
            if token >= first_ts:
                seconds = (token - first_ts) * 0.02
                if start is None:
                    start = seconds
                else:
                    if text:
                        segments.append({"start": round(offset + start, 2), "end": round(offset + seconds, 2),
                                         "text": tokenizer.decode(text).strip()})
                    start, text = None, []
            elif token < self.eot and start is not None:
                text.append(token)
        return segments

    def _step_counter(self, router: "_Router", contexts: list[CaptureContext], active: bool):
        """A pre-hook on the decoder counting generation steps (only when decoder points are hooked)."""
        from contextlib import nullcontext

        if not active:
            return nullcontext()

        def count(module, args):
            if router.phase == "decode":
                for ctx in contexts:
                    ctx.step += 1

        decoder = self.loaded.model.model.decoder
        return _Handle(decoder.register_forward_pre_hook(count))

    # -- per clip ---------------------------------------------------------------------------
    def start(self, clip: AudioClip) -> tuple[Run, list[Window]]:
        """A new :class:`Run` for ``clip``: plugins started, hook points resolved."""
        run = Run(loaded=self.loaded, clip=clip, options=self.options, points=self.points,
                  plugin_options=self.plugin_options)
        windows = split_windows(clip)
        run.window_spans = [(w.start, w.end) for w in windows]
        call_each(self.pm, "probe_run_start", seconds=run.plugin_seconds, run=run)
        run.state["_decode"] = _routes(self.pm, _requested(self.pm, run, "probe_decode_points"))
        replay_requested = _requested(self.pm, run, "probe_replay_points")
        for plugin, wanted in replay_requested.items():
            if any(p.side == "encoder" for p in wanted):
                raise PluginError(f"plugin {plugin!r} asks for encoder points in probe_replay_points;"
                                  " encoder points belong in probe_decode_points")
        run.state["_replay"] = _routes(self.pm, replay_requested)
        run.state["hooked"] = {"decode": [p.name for p in run.state["_decode"][0]],
                               "replay": [p.name for p in run.state["_replay"][0]]}
        run.state["estimate"] = estimate = {}
        for sizes in call_each(self.pm, "probe_estimate", expect=lambda r: isinstance(r, dict), run=run).values():
            estimate.update({str(name): int(size) for name, size in sizes.items()})
        total = sum(estimate.values())
        if total > WARN_BYTES:
            print(f"probe: this trace will keep about {total / 2**20:,.0f} MiB of records"
                  " (probe run --dry-run lists them)", file=sys.stderr)
        check_budget(total, len(windows), self.loaded.device)
        return run, windows

    def trace_many(self, clips: Iterable[AudioClip], batch_size: int = 1) -> Iterator[Run]:
        """Trace clips, decoding up to ``batch_size`` windows together; yields each run once all its
        windows are done (then call ``finish``).  Windows of one clip keep their order."""
        if batch_size < 1:
            raise OptionError(f"--batch-size must be ≥ 1 (got {batch_size})")
        pending: list[tuple[Run, Window]] = []
        remaining: dict[int, int] = {}

        def flush(count: int):
            batch, pending[:] = pending[:count], pending[count:]
            with _memory_budget_message(self.loaded.device):
                with torch.inference_mode():
                    results, router = self.decode_batch(batch)
                for (run, _), result, item in zip(batch, results, router.items):
                    with torch.inference_mode():  # as during the forward pass
                        router.flush(item)  # a run's later windows: their captures, now that the earlier ended
                    run.windows.append(result)
                    call_each(self.pm, "probe_window_end", seconds=run.plugin_seconds, run=run, window=result)
            for (run, _), result in zip(batch, results):
                bars[id(run)].update(1)
                remaining[id(run)] -= 1
                if remaining[id(run)] == 0:
                    del remaining[id(run)]
                    bars.pop(id(run)).close()
                    yield run

        bars: dict[int, tqdm] = {}
        for clip in clips:
            run, windows = self.start(clip)
            remaining[id(run)] = len(windows)
            bars[id(run)] = tqdm(total=len(windows), desc=Path(clip.source).name[:30], unit="window", leave=False,
                                 disable=not self.progress or len(windows) == 1)
            pending += [(run, window) for window in windows]
            while len(pending) >= batch_size:
                yield from flush(batch_size)
        while pending:
            yield from flush(batch_size)

    def finish(self, run: Run, writer) -> None:
        """Let every plugin write its records for ``run`` into ``writer``."""
        for key in ("_decode", "_replay"):
            run.state.pop(key, None)
        call_each(self.pm, "probe_run_end", seconds=run.plugin_seconds, run=run, writer=writer)

    def trace(self, clip: AudioClip, writer=None) -> Run:
        """Decode one clip with every plugin watching; records go to ``writer`` (a TraceWriter)."""
        run = next(self.trace_many([clip]))
        if writer is not None:
            self.finish(run, writer)
        return run


@contextmanager
def _memory_budget_message(device: torch.device):
    """A device out-of-memory error becomes the one-line memory-budget message."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise MemoryBudgetError(f"the {device} ran out of memory while capturing; hook fewer --points, use"
                                " --activations summary, a smaller --batch-size, or --dtype float16") from exc


def available_memory(device: torch.device) -> int:
    """Bytes free now: on the GPU for a CUDA device, else host memory available to allocate."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_budget(total_bytes: int, n_windows: int, device: torch.device) -> None:
    """Refuse a capture that would not fit: all records in host memory, one window's on the device."""
    host = available_memory(torch.device("cpu"))
    if total_bytes > 0.8 * host:
        raise MemoryBudgetError(f"this capture would keep about {total_bytes / 2**30:.1f} GiB but only"
                                f" {host / 2**30:.1f} GiB of memory is free; hook fewer --points, use"
                                " --activations summary, or keep float16 (see probe run --dry-run)")
    if device.type == "cuda":
        free = available_memory(device)
        per_window = 2 * total_bytes / max(n_windows, 1)  # kept in float32 on the device until the window ends
        if per_window > 0.8 * free:
            raise MemoryBudgetError(f"one window's capture needs about {per_window / 2**30:.1f} GiB on {device}"
                                    f" but {free / 2**30:.1f} GiB is free; hook fewer --points or use"
                                    " --activations summary")


class _CrossKeyValues:
    """Keeps the cross-attention keys and values ``generate()`` computes, for the replay to reuse.

    Forward hooks on each decoder layer's ``encoder_attn.k_proj`` / ``v_proj`` keep their first
    output ([batch·beams, frame, d_model]); with the cache on, generate() computes them once per
    call.  (Asking generate() for its cache with ``return_dict_in_generate`` costs more: Whisper's
    batched generate splits and re-stacks every cache tensor.)
    """

    def __init__(self, decoder, active: bool = True):
        self.decoder, self.active = decoder, active
        self.kept: dict[tuple[int, str], torch.Tensor] = {}
        self.handles: list = []

    def __enter__(self) -> "_CrossKeyValues":
        if self.active:
            for index, layer in enumerate(self.decoder.layers):
                for which in ("k_proj", "v_proj"):
                    module = getattr(layer.encoder_attn, which)
                    self.handles.append(module.register_forward_hook(self._keeper((index, which))))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _keeper(self, key):
        def keep(module, args, output):
            self.kept.setdefault(key, output)  # [batch·beams, frame, d_model]
        return keep

    def cache(self, batch: int, beams: int):
        """An EncoderDecoderCache holding only these cross-attention keys/values, one row per window.

        Beams of one window share them, so row ``i * beams`` stands for window ``i``.  None when
        they were not all seen (the replay then recomputes them).
        """
        layers = len(self.decoder.layers)
        if not self.active or len(self.kept) != 2 * layers:
            return None
        try:
            from transformers.cache_utils import DynamicCache, EncoderDecoderCache

            attn = self.decoder.layers[0].encoder_attn
            heads, head_dim = attn.num_heads, attn.head_dim
            kept = DynamicCache()
            for index in range(layers):
                keys, values = (self.kept[index, which][::beams][:batch] for which in ("k_proj", "v_proj"))
                shape = (batch, -1, heads, head_dim)  # → [batch, head, frame, head_dim], a view: no copy
                kept.update(keys.reshape(shape).transpose(1, 2), values.reshape(shape).transpose(1, 2), index)
            return EncoderDecoderCache(DynamicCache(), kept)
        except (AttributeError, ImportError, TypeError, RuntimeError):
            return None


def _cache_kwargs(decoder, cache) -> dict:
    if cache is None:
        return {"use_cache": False}
    import inspect

    name = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    return {name: cache, "use_cache": True}


def _union(point_lists) -> list[HookPoint]:
    points: dict[str, HookPoint] = {}
    for point_list in point_lists:
        points.update((p.name, p) for p in point_list)
    return list(points.values())


class _Handle:
    """Context manager removing a hook handle on exit."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self.handle

    def __exit__(self, *exc):
        self.handle.remove()


def _sequence_of(out, row: int) -> list[int]:
    """Row ``row`` of what generate() returned, without padding after <|endoftext|>."""
    sequences = out.sequences if hasattr(out, "sequences") else out
    if isinstance(sequences, dict):
        sequences = sequences["sequences"]
    return [int(t) for t in sequences[row].tolist()]


def plugin_versions(pm) -> dict[str, str]:
    return {name: plugin_version(plugin) for name, plugin in pm.list_name_plugin()}
