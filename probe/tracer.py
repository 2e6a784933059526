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

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from probe import hooks as hooks_mod
from probe.audio import AudioClip, Window, split_windows
from probe.errors import OptionError, PluginError, ProbeError
from probe.plugin_manager import call_each, implementations, plugin_version
from probe.points import HookPoint, select_points

FRAMES_PER_SECOND = 50  # encoder frames: 1500 per 30 s window, 20 ms each
TASKS = ("transcribe", "translate")


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
    """Encoder frames (20 ms each) that hold ``seconds`` of audio, at least 1."""
    return max(1, min(int(np.ceil(round(seconds * FRAMES_PER_SECOND, 6))), max_frames))


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
    prompt_length: int = 0  # replay: query positions prompt_length-1 … emitted the generated tokens


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


class _Router:
    """Routes each fired hook point to the plugins that asked for it, in the phases they asked."""

    def __init__(self, run: Run, ctx: CaptureContext, routes: dict[str, list], phases: set[str]):
        self.run, self.ctx, self.routes, self.phases = run, ctx, routes, phases

        self.busy = False  # a plugin calling a hooked module inside probe_capture is not the model's forward

    def __call__(self, point: HookPoint, tensor: torch.Tensor) -> None:
        if self.busy or self.ctx.phase not in self.phases:
            return
        self.busy = True
        try:
            for name, function, argnames in self.routes[point.name]:
                values = {"run": self.run, "point": point, "tensor": tensor, "ctx": self.ctx}
                try:
                    function(*[values[a] for a in argnames])
                except ProbeError:
                    raise
                except Exception as exc:
                    raise PluginError(f"plugin {name!r} raised in probe_capture at {point.name}:"
                                      f" {type(exc).__name__}: {exc} (disable it with -p no:{name})") from exc
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

    def __init__(self, loaded, pm, options: DecodeOptions, points=(), plugin_options=None):
        options.validate(loaded)
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

    def detect(self, encoder_hidden: torch.Tensor) -> tuple[dict[str, float], float]:
        """Language distribution and no-speech probability from one step on <|startoftranscript|>.

        encoder_hidden: [1, frame, d_model].
        """
        model = self.loaded.model
        sot = torch.tensor([[self.sot]], device=encoder_hidden.device)
        hidden = model.model.decoder(input_ids=sot, encoder_hidden_states=encoder_hidden,
                                     use_cache=False).last_hidden_state
        logits = model.proj_out(hidden)[0, -1].float()  # [vocab]
        no_speech = float(logits.softmax(-1)[self.no_speech]) if self.no_speech is not None else 0.0
        if not self.languages:
            return {"en": 1.0}, no_speech
        codes = list(self.languages)
        probs = logits[list(self.languages.values())].softmax(-1).tolist()
        ranked = sorted(zip(codes, probs), key=lambda item: -item[1])
        return dict(ranked), no_speech

    def generate_kwargs(self, language: str) -> dict:
        kwargs: dict[str, Any] = {"return_timestamps": self.options.timestamps, "num_beams": self.options.num_beams}
        if self.loaded.is_multilingual:
            kwargs.update(language=language, task=self.options.task)
        if self.options.max_new_tokens is not None:
            kwargs["max_new_tokens"] = self.options.max_new_tokens
        if self.options.min_new_tokens is not None:
            kwargs["min_new_tokens"] = self.options.min_new_tokens
        return kwargs

    def decode_window(self, window: Window, run: Run, ctx: CaptureContext, decode_points, decode_router,
                      replay_points, replay_router, decode_tail_hooks: bool) -> WindowResult:
        from transformers.modeling_outputs import BaseModelOutput

        model = self.loaded.model
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        ctx.window, ctx.step, ctx.tokens, ctx.num_beams = window.index, -1, None, self.options.num_beams
        features = self.features(window)
        with hooks_mod.attach(model, decode_points, decode_router), self._step_counter(ctx, decode_tail_hooks):
            ctx.phase = "encode"
            encoder_hidden = model.model.encoder(features).last_hidden_state  # [1, frame, d_model]
            timings["encode"] = time.perf_counter() - clock
            ctx.phase = "detect"
            language_probs, no_speech = self.detect(encoder_hidden)
            language = self.options.language or next(iter(language_probs))
            timings["detect"] = time.perf_counter() - clock - timings["encode"]
            ctx.phase, ctx.step = "decode", -1
            out = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden),
                                 **self.generate_kwargs(language))
        prompt = self.prompt(language)
        tokens = self.completed(_sequence_of(out), prompt)
        sequence = prompt + tokens
        timings["generate"] = time.perf_counter() - clock - timings["encode"] - timings["detect"]
        if replay_points:
            replay_clock = time.perf_counter()
            ctx.phase, ctx.tokens, ctx.prompt_length = "replay", sequence, len(prompt)
            with hooks_mod.attach(model, replay_points, replay_router):
                self.replay(encoder_hidden, sequence, need_logits=any(p.name == "hook_logits" for p in replay_points))
            timings["replay"] = time.perf_counter() - replay_clock
        tokenizer = self.loaded.processor.tokenizer
        text_tokens = [t for t in tokens if t < self.eot]
        return WindowResult(
            index=window.index, start=window.start, end=window.end, prompt=prompt, tokens=tokens,
            text=tokenizer.decode(text_tokens).strip(), language=language,
            language_probability=language_probs.get(language, 0.0), language_probs=language_probs,
            no_speech_probability=no_speech,
            n_frames=audio_frames(window.end - window.start, model.config.max_source_positions),
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
        limit = self.options.max_new_tokens or (self.loaded.model.config.max_target_positions - len(prompt))
        if (not generated or generated[-1] != self.eot) and len(generated) < limit:
            generated = generated + [self.eot]
        return generated

    def replay(self, encoder_hidden: torch.Tensor, sequence: list[int], need_logits: bool) -> None:
        """Teacher-forced pass of ``sequence[:-1]`` (the inputs that emitted ``sequence[1:]``)."""
        model = self.loaded.model
        ids = torch.tensor([sequence[:-1]], device=encoder_hidden.device)  # [1, query]
        hidden = model.model.decoder(input_ids=ids, encoder_hidden_states=encoder_hidden,
                                     use_cache=False).last_hidden_state
        if need_logits:
            model.proj_out(hidden)

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

    def _step_counter(self, ctx: CaptureContext, active: bool):
        """A pre-hook on the decoder counting generation steps (only when decoder points are hooked)."""
        from contextlib import nullcontext

        if not active:
            return nullcontext()

        def count(module, args):
            if ctx.phase == "decode":
                ctx.step += 1

        decoder = self.loaded.model.model.decoder
        return _Handle(decoder.register_forward_pre_hook(count))

    # -- per clip ---------------------------------------------------------------------------
    def trace(self, clip: AudioClip, writer=None) -> Run:
        """Decode ``clip`` with every plugin watching; records go to ``writer`` (a TraceWriter)."""
        run = Run(loaded=self.loaded, clip=clip, options=self.options, points=self.points,
                  plugin_options=self.plugin_options)
        windows = split_windows(clip)
        run.window_spans = [(w.start, w.end) for w in windows]
        call_each(self.pm, "probe_run_start", run=run)
        decode_points, decode_routes = _routes(self.pm, _requested(self.pm, run, "probe_decode_points"))
        replay_requested = _requested(self.pm, run, "probe_replay_points")
        for plugin, wanted in replay_requested.items():
            if any(p.side == "encoder" for p in wanted):
                raise PluginError(f"plugin {plugin!r} asks for encoder points in probe_replay_points;"
                                  " encoder points belong in probe_decode_points")
        replay_points, replay_routes = _routes(self.pm, replay_requested)
        ctx = CaptureContext(num_beams=self.options.num_beams)
        decode_router = _Router(run, ctx, decode_routes, {"encode", "decode"})
        replay_router = _Router(run, ctx, replay_routes, {"replay"})
        any_decoder = any(p.side == "decoder" for p in decode_points)
        run.state["hooked"] = {"decode": [p.name for p in decode_points], "replay": [p.name for p in replay_points]}
        for window in windows:
            with torch.inference_mode():
                result = self.decode_window(window, run, ctx, decode_points, decode_router,
                                            replay_points, replay_router, any_decoder)
            run.windows.append(result)
            call_each(self.pm, "probe_window_end", run=run, window=result)
        if writer is not None:
            call_each(self.pm, "probe_run_end", run=run, writer=writer)
        return run


class _Handle:
    """Context manager removing a hook handle on exit."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self.handle

    def __exit__(self, *exc):
        self.handle.remove()


def _sequence_of(out) -> list[int]:
    sequences = out.sequences if hasattr(out, "sequences") else out
    if isinstance(sequences, dict):
        sequences = sequences["sequences"]
    return [int(t) for t in sequences[0].tolist()]


def plugin_versions(pm) -> dict[str, str]:
    return {name: plugin_version(plugin) for name, plugin in pm.list_name_plugin()}
