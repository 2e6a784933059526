"""Tracing: real Whisper decoding of clips, with plugins watching every window.

The tracer calls transformers' own ``model.generate(input_features, attention_mask=...)`` exactly
as a user would — one call per batch of clips, whatever their length — with the hook points
plugins asked for attached, while :class:`probe.longform.GenerateObserver` reports the loop inside
it: each *window* (a ≤ 30 s slice starting at ``seek``), each fallback *attempt* at a temperature,
and the timestamped *segments* that make the transcript.  As each window's decoding ends, its
accepted token sequence is replayed once through the decoder, teacher-forced, for the per-token
records (cross-attention, probabilities, logit lens), and the plugins' ``probe_window_end`` runs —
so records leave the decoding loop window by window.  Hooks only observe, so the tokens are exactly
those of the plain ``generate()`` call; ``tests/test_longform.py`` checks it.

Plugins see a :class:`Run` (what is being traced), a :class:`CaptureContext` on each capture (phase,
window, attempt, step) and a :class:`WindowResult` per window; they write records at the end.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from probe import hooks as hooks_mod
from probe.audio import AudioClip
from probe.constants import (ENCODER_FRAMES_PER_WINDOW, HOP_LENGTH, MEL_FRAMES_PER_SECOND, SAMPLE_RATE,
                             WINDOW_SECONDS)
from probe.errors import MemoryBudgetError, OptionError, PluginError
from probe.longform import Attempt, GenerateObserver, check_supported
from probe.models import quiet_transformers
from probe.plugin_manager import ask, implementers, plugin_caller, plugin_timing, plugin_version
from probe.points import HookPoint, select_points
from probe.spill import Spill

TASKS = ("transcribe", "translate")
SPILL_SECONDS = 120  # runs longer than this keep big per-window records on disk while decoding
CHUNKED_FEATURES_SECONDS = 120  # longer single clips get their log-Mel in chunks (probe.features)
WARN_BYTES = 256 * 2**20  # say how much a trace will keep before recording more than this
# openai-whisper's transcribe() defaults.  Its compression-ratio threshold, 2.4, is gzip over the
# text; transformers compresses token bytes with zlib, where 1.35 is the documented equivalent.
OPENAI_DEFAULTS = {"temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), "compression_ratio_threshold": 1.35,
                   "logprob_threshold": -1.0, "no_speech_threshold": 0.6, "condition_on_prev_tokens": True}


@dataclass
class DecodeOptions:
    """How to decode: everything the plain ``generate()`` call is given (see :meth:`generate_kwargs`).

    The defaults are transformers' own: greedy, no fallback, no conditioning on previous text.
    """

    language: str | None = None  # ISO code ("en", "zh") or name ("chinese"); None: generate() detects it
    task: str = "transcribe"
    timestamps: bool = False
    num_beams: int = 1
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None  # benchmarks fix the length with min == max
    temperature: float | tuple[float, ...] | None = None  # a tuple: fallback from the first to the last
    compression_ratio_threshold: float | None = None  # zlib ratio of the token bytes (transformers' measure)
    logprob_threshold: float | None = None
    no_speech_threshold: float | None = None
    condition_on_prev_tokens: bool | None = None
    initial_prompt: str | None = None  # text given as <|startofprev|> … before the first window
    prefix: str | None = None  # text forced after <|startoftranscript|><|lang|><|task|><|notimestamps|>
    multilingual: bool = False  # detect each window's language (faster-whisper's multilingual=True)
    seed: int | None = None  # torch.manual_seed before generate(), for sampled fallback attempts

    def validate(self, loaded) -> None:
        if self.task not in TASKS:
            raise OptionError(f"unknown task {self.task!r}; use --task transcribe or --task translate")
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise OptionError(f"--num-beams must be a whole number ≥ 1 (got {self.num_beams!r})")
        longest = loaded.model.config.max_target_positions - 4  # the longest prompt is 4 tokens
        for name, value in (("--max-new-tokens", self.max_new_tokens), ("--min-new-tokens", self.min_new_tokens)):
            if value is not None and not 1 <= value <= longest:
                raise OptionError(f"{name} must be between 1 and {longest} for this model (got {value})")
        for value in self.temperatures:
            if not 0.0 <= value <= 10.0:
                raise OptionError(f"--temperature values must be between 0 and 10 (got {value})")
        if self.logprob_threshold is not None and self.logprob_threshold > 0:
            raise OptionError(f"--logprob-threshold is a log-probability, ≤ 0 (got {self.logprob_threshold})")
        for name, value in (("--compression-ratio-threshold", self.compression_ratio_threshold),
                            ("--no-speech-threshold", self.no_speech_threshold)):
            if value is not None and value <= 0:
                raise OptionError(f"{name} must be positive (got {value})")
        if self.no_speech_threshold is not None and self.logprob_threshold is None:
            raise OptionError("--no-speech-threshold needs --logprob-threshold (a window is skipped only when"
                              " both say so), e.g. --logprob-threshold -1.0, or use --openai-defaults")
        if self.prefix is not None and not self.prefix.strip():
            raise OptionError("--prefix is empty; give the text the transcript should start with")
        if self.prefix and self.timestamps:
            # generate() forces a timestamp right after the prefix, which ends the window there
            raise OptionError("--prefix works without timestamps only, on clips of up to 30 s (transformers'"
                              " generate() forces a timestamp right after a prefix); drop --timestamps")
        if not loaded.is_multilingual:
            if self.multilingual:
                raise OptionError(f"{loaded.model_id} is English-only; --multilingual needs a multilingual model")
            if self.task == "translate":
                raise OptionError(f"{loaded.model_id} is English-only and cannot translate; use a multilingual "
                                  "model (e.g. --model base)")
            if self.language not in (None, "en", "english"):
                raise OptionError(f"{loaded.model_id} is English-only; drop --language or use a multilingual model")
            self.language = None
        elif self.language is not None:
            if self.multilingual:
                raise OptionError("--multilingual detects each window's language; drop --language")
            self.language = language_code(self.language, language_codes(loaded))

    @property
    def temperatures(self) -> tuple[float, ...]:
        if self.temperature is None:
            return ()
        return tuple(float(t) for t in self.temperature) if isinstance(self.temperature, (list, tuple)) \
            else (float(self.temperature),)

    def generate_kwargs(self, loaded) -> dict:
        """The keyword arguments of the plain ``model.generate(input_features, ...)`` call."""
        kwargs: dict[str, Any] = {"return_timestamps": self.timestamps, "num_beams": self.num_beams}
        if loaded.is_multilingual:
            kwargs["task"] = self.task
            if self.language is not None:
                kwargs["language"] = self.language
        for key in ("max_new_tokens", "min_new_tokens", "compression_ratio_threshold", "logprob_threshold",
                    "no_speech_threshold", "condition_on_prev_tokens"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if self.temperature is not None:
            kwargs["temperature"] = self.temperatures if len(self.temperatures) > 1 else self.temperatures[0]
        if self.initial_prompt:
            kwargs["prompt_ids"] = loaded.processor.get_prompt_ids(self.initial_prompt, return_tensors="pt").to(
                loaded.device)
        return kwargs

    def to_dict(self) -> dict:
        data = dict(self.__dict__)
        data["temperature"] = list(self.temperatures) if self.temperature is not None else None
        return data


def audio_frames(seconds: float, max_frames: int = ENCODER_FRAMES_PER_WINDOW) -> int:
    """Encoder frames (20 ms each) that hold ``seconds`` of audio, at least 1.

    As openai-whisper counts them: log-Mel frames (hop 160 samples) halved by the conv stem.
    """
    return max(1, min(round(seconds * SAMPLE_RATE) // HOP_LENGTH // 2, max_frames))


def language_codes(loaded) -> dict[str, int]:
    """Language code → token id, e.g. ``{"en": 50259, ...}`` (empty for English-only models)."""
    lang_to_id = getattr(loaded.model.generation_config, "lang_to_id", None) or {}
    return {token.strip("<|>"): token_id for token, token_id in lang_to_id.items()}


def language_code(language: str, codes: dict[str, int]) -> str:
    """An ISO code or a language name (as openai-whisper accepts them: "chinese", "Mandarin") → code."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    wanted = language.strip().lower()
    code = wanted if wanted in codes else TO_LANGUAGE_CODE.get(wanted)
    if code not in codes:
        raise OptionError(f"unknown language {language!r}; use an ISO code or a name such as "
                          f"{', '.join(sorted(codes)[:6])}, chinese, german, ... ({len(codes)} in all)")
    return code


@dataclass
class CaptureContext:
    """Where in the run a capture happened.  One object per clip, updated in place by the tracer."""

    phase: str = "encode"  # "encode" | "decode" | "replay"
    window: int = 0
    step: int = -1  # decoder call within the attempt's generate(): 0 is the prompt
    num_beams: int = 1
    attempt: int = 0  # fallback attempt within the window (0 = first temperature)
    temperature: float = 0.0
    seek: int = 0  # log-Mel frame where the window starts (100 per second)
    n_frames: int = 1500  # encoder frames of the window that hold audio
    tokens: list[int] | None = None  # replay: the full sequence, prompt included
    prompt_length: int = 0  # replay: query positions prompt_length-1 … len(tokens)-2 emitted the generated tokens


@dataclass
class WindowResult:
    """What one window decoded to: the ≤ 30 s slice generate() decoded from ``seek``."""

    index: int
    start: float  # seconds within the clip (seek / 100)
    end: float  # end of the slice fed to the model (≤ start + 30 s, ≤ the clip's end)
    prompt: list[int]  # decoder input: [<|startofprev|> previous text] <|startoftranscript|><|lang|><|task|>[<|notimestamps|>]
    tokens: list[int]  # the accepted attempt's generated tokens (timestamps and <|endoftext|> included)
    text: str  # the text this window adds to the transcript (kept segments only)
    language: str
    language_probability: float
    language_probs: dict[str, float]  # every language, descending, at <|startoftranscript|>
    no_speech_probability: float
    n_frames: int  # encoder frames that hold audio (≤ 1500)
    seek: int = 0  # log-Mel frames (100 per second)
    next_seek: int = 0  # where the next window starts: seek + the part of this one the transcript used
    kept: int = 0  # leading tokens that are in the transcript (0 when skipped; the rest is re-decoded next window)
    skipped: bool = False  # no speech: generate() dropped this window's text
    segments: list[dict] = field(default_factory=list)  # {start, end, text, tokens} in clip seconds
    attempts: list[dict] = field(default_factory=list)  # every fallback attempt, the accepted one last
    token_logprobs: list[float] = field(default_factory=list)  # model log-probability of each token
    signals: dict = field(default_factory=dict)  # hallucination signals (probe.signals)
    sot_index: int = 0  # position of <|startoftranscript|> in the prompt (after any previous-text prompt)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def sequence(self) -> list[int]:
        return self.prompt + self.tokens

    def to_dict(self, tokenizer=None) -> dict:
        data = {
            "index": self.index, "start": self.start, "end": self.end, "seek": self.seek,
            "next_seek": self.next_seek, "text": self.text, "tokens": self.tokens, "kept": self.kept,
            "skipped": self.skipped, "prompt": self.prompt, "sot_index": self.sot_index,
            "language": self.language, "language_probability": self.language_probability,
            "no_speech_probability": self.no_speech_probability, "n_frames": self.n_frames,
            "segments": self.segments, "attempts": self.attempts, "signals": self.signals,
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
    # Before decoding, the number of windows is not known (seek follows the decoded timestamps):
    # these are the 30 s slices the clip would need at least, for estimates.
    window_spans: list[tuple[float, float]] = field(default_factory=list)
    plugin_seconds: dict[str, float] = field(default_factory=dict)  # time spent in each plugin's hooks
    # where plugins keep big per-window arrays of a long run on disk (probe.spill); removed once
    # the run's trace is written or the run fails
    spill: Spill = field(default_factory=Spill)

    @property
    def long(self) -> bool:
        """A clip long enough that plugins should spill big per-window arrays to ``spill``."""
        return self.clip.duration > SPILL_SECONDS

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
        """Encoder frames holding audio, per estimated window."""
        return [audio_frames(end - start, self.config.max_source_positions) for start, end in self.window_spans]

    @property
    def sequence(self) -> list[int]:
        """The transcript's tokens as plain ``generate()`` returns them (kept tokens of every window)."""
        return [t for w in self.windows if not w.skipped for t in w.tokens[:w.kept]]

    @property
    def transcript(self) -> str:
        return self.tokenizer.decode([t for t in self.sequence if t < self.eot]).strip()


def estimated_spans(clip: AudioClip) -> list[tuple[float, float]]:
    """The 30 s slices covering ``clip`` (at least one): a lower bound on its windows."""
    duration = clip.duration
    starts = range(0, max(1, int(-(-duration // WINDOW_SECONDS))))
    return [(s * WINDOW_SECONDS, min((s + 1) * WINDOW_SECONDS, duration)) for s in starts]


@dataclass
class _Item:
    """One clip of a generate() call: its run and its capture context; captures held back."""

    run: Run
    ctx: CaptureContext
    deferred: list = field(default_factory=list)  # (point, tensor, ctx snapshot, routes), in order


class _Router:
    """Routes each fired hook point to the plugins that asked for it, in the phases they asked.

    The batch axis holds the rows of the current attempt (clips × beams while decoding); it is
    split back so each run's plugins see only their own rows.  While an attempt may still be
    rejected (temperature fallback), decoding captures are held back (``defer``) and handed over by
    :meth:`flush` only for the attempt generate() kept; a rejected attempt's are dropped.
    Captures in any other phase (language detection, the no-speech detector) go nowhere.
    """

    def __init__(self, items: list[_Item]):
        self.items = items  # of the current attempt or replay, in batch order
        self.phase = "aside"
        self.defer = False
        self.busy = False  # a plugin calling a hooked module inside probe_capture is not the model's forward

    def decoding(self, point: HookPoint, tensor: torch.Tensor) -> None:
        """Capture of the hooks attached for ``generate()``."""
        if self.phase in ("encode", "decode"):
            self._route(point, tensor, "_decode", hold=self.defer and self.phase == "decode")

    def replaying(self, point: HookPoint, tensor: torch.Tensor) -> None:
        """Capture of the hooks attached for the replay."""
        if self.phase == "replay":
            self._route(point, tensor, "_replay", hold=False)

    def rejecting(self, point: HookPoint, tensor: torch.Tensor) -> None:
        """Capture of the hooks attached for the replay of a rejected attempt."""
        if self.phase == "rejected":
            self._route(point, tensor, "_rejected", hold=False)

    def _route(self, point: HookPoint, tensor: torch.Tensor, table: str, hold: bool) -> None:
        if self.busy or not self.items:
            return
        rows = tensor.shape[0] // len(self.items)
        for i, item in enumerate(self.items):
            routes = item.run.state[table][1].get(point.name)
            if routes is None:
                continue
            part = tensor if len(self.items) == 1 else tensor[i * rows:(i + 1) * rows]
            if hold:
                item.deferred.append((point, part, dataclasses.replace(item.ctx), routes))
            else:
                self._dispatch(item.run, point, part, item.ctx, routes)

    def flush(self, item: _Item) -> None:
        """Hand an accepted attempt's held-back captures to its plugins, in the order they happened."""
        deferred, item.deferred = item.deferred, []
        for point, tensor, ctx, routes in deferred:
            self._dispatch(item.run, point, tensor, ctx, routes)

    def _dispatch(self, run: Run, point: HookPoint, tensor: torch.Tensor, ctx: CaptureContext, capture) -> None:
        """``capture``: pm.hook.probe_capture restricted to the plugins that asked for ``point``."""
        self.busy = True
        try:
            with plugin_timing(run.plugin_seconds):
                capture(run=run, point=point, tensor=tensor, ctx=ctx)
        finally:
            self.busy = False


def _is_patterns(result) -> bool:
    return isinstance(result, (list, tuple, set, frozenset)) and all(isinstance(p, str) for p in result)


def _requested(pm, run: Run, hook_name: str, decoder_only: bool = False) -> dict[str, list[HookPoint]]:
    """Plugin name → the hook points it asked for via ``hook_name`` (only decoder points, if so)."""
    asked = ask(pm, hook_name, expect=_is_patterns, run=run)
    requested = {name: select_points(run.config, list(patterns)) for name, patterns in asked.items()}
    for plugin, wanted in requested.items():
        if decoder_only and any(p.side == "encoder" for p in wanted):
            raise PluginError(f"plugin {plugin!r} asks for encoder points in {hook_name}; it replays the"
                              " decoder only, so encoder points belong in probe_decode_points")
    return requested


def _routes(pm, requested: dict[str, list[HookPoint]]) -> tuple[list[HookPoint], dict[str, Any]]:
    """(every point some plugin asked for, point name → ``probe_capture`` of the plugins that asked)."""
    capturing = set(implementers(pm, "probe_capture"))
    points: dict[str, HookPoint] = {}
    askers: dict[str, list[str]] = {}
    for plugin, wanted in requested.items():
        if plugin not in capturing:
            raise PluginError(f"plugin {plugin!r} asks for hook points but implements no probe_capture")
        for point in wanted:
            points[point.name] = point
            askers.setdefault(point.name, []).append(plugin)
    callers: dict[frozenset, Any] = {}  # one subset caller per set of plugins
    for plugins in askers.values():
        if frozenset(plugins) not in callers:
            callers[frozenset(plugins)] = plugin_caller(pm, "probe_capture", plugins)
    routes = {name: callers[frozenset(plugins)] for name, plugins in askers.items()}
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
        check_supported(loaded.model)
        self.progress = progress  # a progress bar (stderr) for clips longer than one window
        self.loaded, self.pm, self.options = loaded, pm, options
        self.points = list(points)
        from probe.plugin_options import collect_options

        # every option a plugin declared (probe_addoption) has its default unless given
        self.plugin_options = {**collect_options(pm).defaults(), **dict(plugin_options or {})}
        gen = loaded.model.generation_config
        tokenizer = loaded.processor.tokenizer
        self.sot = gen.decoder_start_token_id
        self.eot = gen.eos_token_id
        self.no_speech = _no_speech_token(tokenizer)
        self.languages = language_codes(loaded)
        self.language_of = {token_id: code for code, token_id in self.languages.items()}

    # -- inputs -----------------------------------------------------------------------------
    def features(self, clips: list[AudioClip]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What a user hands ``generate()``: log-Mel features [batch, n_mels, mel_frame] and, for long
        audio, the attention mask [batch, mel_frame] (clips of ≤ 30 s are padded to 3000 frames)."""
        extractor = self.loaded.processor.feature_extractor
        samples = [clip.samples for clip in clips]
        if all(len(s) <= WINDOW_SECONDS * SAMPLE_RATE for s in samples):
            out = extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt")
            mask = None
        elif len(samples) == 1 and len(samples[0]) > CHUNKED_FEATURES_SECONDS * SAMPLE_RATE:
            from probe.features import log_mel

            features = log_mel(samples[0], extractor)[None]  # [1, n_mels, mel_frame]; bounded memory
            mask = torch.ones(features.shape[0], features.shape[-1], dtype=torch.long, device=self.loaded.device)
            return features.to(self.loaded.device, self.loaded.dtype), mask
        else:
            out = extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt", truncation=False,
                            padding="longest", return_attention_mask=True)
            mask = out.attention_mask.to(self.loaded.device)
        return out.input_features.to(self.loaded.device, self.loaded.dtype), mask

    # -- per clip ---------------------------------------------------------------------------
    def start(self, clip: AudioClip) -> Run:
        """A new :class:`Run` for ``clip``: plugins started, hook points resolved."""
        options = self.options
        if clip.duration > WINDOW_SECONDS and options.prefix:
            raise OptionError(f"--prefix works on clips of up to {WINDOW_SECONDS} s; {clip.source} is "
                              f"{clip.duration:.1f} s (long audio is decoded with timestamps)")
        if clip.duration > WINDOW_SECONDS and not options.timestamps:
            # transformers' long-form generate() seeks by the timestamps it decodes: it needs them
            # (the manifest's decode options say so)
            options = dataclasses.replace(options, timestamps=True)
        run = Run(loaded=self.loaded, clip=clip, options=options, points=self.points,
                  plugin_options=self.plugin_options, window_spans=estimated_spans(clip))
        with plugin_timing(run.plugin_seconds):
            self.pm.hook.probe_run_start(run=run)
        run.state["_decode"] = _routes(self.pm, _requested(self.pm, run, "probe_decode_points"))
        # replays run the decoder only: encoder points belong in probe_decode_points
        run.state["_replay"] = _routes(self.pm, _requested(self.pm, run, "probe_replay_points", decoder_only=True))
        run.state["_rejected"] = _routes(self.pm, _requested(self.pm, run, "probe_rejected_points",
                                                             decoder_only=True))
        run.state["hooked"] = {"decode": [p.name for p in run.state["_decode"][0]],
                               "replay": [p.name for p in run.state["_replay"][0]],
                               "rejected": [p.name for p in run.state["_rejected"][0]]}
        run.state["estimate"] = estimate = {}
        for sizes in ask(self.pm, "probe_estimate", expect=lambda r: isinstance(r, dict), run=run).values():
            estimate.update({str(name): int(size) for name, size in sizes.items()})
        total = sum(estimate.values())
        if total > WARN_BYTES:
            print(f"probe: this trace will keep about {total / 2**20:,.0f} MiB of records"
                  " (probe run --dry-run lists them)", file=sys.stderr)
        check_budget(total, len(run.window_spans), self.loaded.device)
        return run

    def trace_many(self, clips: Iterable[AudioClip], batch_size: int = 1) -> Iterator[Run]:
        """Trace clips, ``batch_size`` clips per ``generate()`` call (long ones too: transformers'
        batched long-form decoding); yields each run once it is decoded (then call ``finish``)."""
        if batch_size < 1:
            raise OptionError(f"--batch-size must be ≥ 1 (got {batch_size})")
        batch: list[Run] = []
        for clip in clips:
            batch.append(self.start(clip))
            if len(batch) == batch_size:
                self._decode_or_release(batch)
                yield from batch
                batch = []
        if batch:
            self._decode_or_release(batch)
            yield from batch

    def _decode_or_release(self, runs: list[Run]) -> None:
        try:
            self.decode(runs)
        except BaseException:
            for run in runs:
                run.spill.remove()
            raise

    def decode(self, runs: list[Run]) -> None:
        """One plain ``generate()`` call for ``runs``' clips, watched window by window."""
        model = self.loaded.model
        features, mask = self.features([run.clip for run in runs])
        kwargs = runs[0].options.generate_kwargs(self.loaded)
        kwargs["return_timestamps"] = any(run.options.timestamps for run in runs)
        if mask is not None:
            kwargs["attention_mask"] = mask
        if self.options.prefix:
            with torch.inference_mode(), quiet_transformers():
                kwargs["decoder_input_ids"] = self.prefix_prompt(features)
        max_frames = (mask.sum(-1).tolist() if mask is not None and len(runs) > 1
                      else [features.shape[-1]] * len(runs))
        items = [_Item(run, CaptureContext(num_beams=self.options.num_beams)) for run in runs]
        router = _Router([])
        decode_points = _union(run.state["_decode"][0] for run in runs)
        replay_points = _union(run.state["_replay"][0] for run in runs)
        windows = _Windows(self, items, router, replay_points, [int(f) for f in max_frames],
                           rejected_points=_union(run.state["_rejected"][0] for run in runs))
        counting = any(p.side == "decoder" for p in decode_points)
        with _memory_budget_message(self.loaded.device), torch.inference_mode(), windows.progress(self.progress):
            with hooks_mod.attach(model, decode_points, router.decoding), self._step_counter(router, counting), \
                    windows.cross_kv, GenerateObserver(model, windows, self.options.multilingual), \
                    quiet_transformers():
                if self.options.seed is not None:
                    torch.manual_seed(self.options.seed)
                model.generate(features, **kwargs)
                windows.finished()

    def prefix_prompt(self, features: torch.Tensor) -> torch.Tensor:
        """The ``decoder_input_ids`` [batch, prompt] that force ``--prefix``: the start tokens
        generate() would use (``<|startoftranscript|><|lang|><|task|><|notimestamps|>``, the language
        detected as generate() detects it when none is given), then the prefix's tokens, encoded as
        openai-whisper and faster-whisper encode it (``" " + prefix.strip()``)."""
        model, options = self.loaded.model, self.options
        gen = model.generation_config
        batch = features.shape[0]
        prefix = self.loaded.processor.tokenizer.encode(" " + options.prefix.strip(), add_special_tokens=False)
        longest = model.config.max_target_positions // 2 - 1
        if len(prefix) > longest:
            raise OptionError(f"--prefix is {len(prefix)} tokens long; this model takes at most {longest}")
        if self.languages:
            languages = ([self.languages[options.language]] * batch if options.language is not None
                         else model.detect_language(input_features=features, generation_config=gen).tolist())
            starts = [[self.sot, int(language), gen.task_to_id[options.task]] for language in languages]
        else:
            starts = [[self.sot]] * batch
        return torch.tensor([start + [gen.no_timestamps_token_id] + prefix for start in starts],
                            device=features.device)

    def replay(self, router: _Router, encoder_hidden: torch.Tensor, sequences: list[list[int]],
               replay_points: list[HookPoint], cross_cache=None, capture=None) -> torch.Tensor:
        """Teacher-forced pass of every row's whole sequence, in one decoder call.

        Position q emitted token q + 1; the last position emits nothing (openai-whisper's alignment
        normalises over it too).  Shorter sequences are padded at the end, which the causal mask
        keeps from touching real positions; plugins read ``len(ctx.tokens)`` positions.  The
        cross-attention keys and values ``generate()`` computed are reused when given (``cross_cache``).
        Captures go to ``capture`` (default: the router's replay table).
        encoder_hidden: [batch, frame, d_model] → the decoder's last hidden state [batch, query, d_model].
        """
        model = self.loaded.model
        longest = max(len(sequence) for sequence in sequences)
        ids = torch.tensor([sequence + [self.eot] * (longest - len(sequence)) for sequence in sequences],
                           device=encoder_hidden.device)  # [batch, query]
        # nothing is decoded from this pass: patterned attention returns probs·v, not its kernel too
        with hooks_mod.attach(model, replay_points, capture or router.replaying, outputs_from_patterns=True):
            hidden = model.model.decoder(input_ids=ids, encoder_hidden_states=encoder_hidden,
                                         **_cache_kwargs(model.model.decoder, cross_cache)
                                         ).last_hidden_state  # [batch, query, d_model]
            if any(p.name == "hook_logits" for p in replay_points):
                model.proj_out(hidden)
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., d_model] → logits [..., vocab], not through proj_out's module call (no hook sees it)."""
        return F.linear(hidden, self.loaded.model.proj_out.weight)

    def emitted_logprobs(self, hidden: torch.Tensor, prompt_length: int, tokens: list[int]) -> list[float]:
        """Log-probability of each of ``tokens`` from one row's replay hidden states [query, d_model]."""
        if not tokens:
            return []
        rows = hidden[prompt_length - 1: prompt_length - 1 + len(tokens)]  # [token, d_model]
        log_probs = self.logits(rows).float().log_softmax(-1)  # [token, vocab]
        emitted = torch.tensor(tokens, device=rows.device)[:, None]
        return log_probs.gather(1, emitted)[:, 0].tolist()

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

    def _step_counter(self, router: _Router, active: bool):
        """A pre-hook on the decoder counting generation steps (only when decoder points are hooked)."""
        if not active:
            return nullcontext()

        def count(module, args):
            if router.phase == "decode":
                for item in router.items:
                    item.ctx.step += 1

        return _Handle(self.loaded.model.model.decoder.register_forward_pre_hook(count))

    def finish(self, run: Run, writer) -> None:
        """Let every plugin write its records for ``run`` into ``writer``."""
        for key in ("_decode", "_replay"):
            run.state.pop(key, None)
        with plugin_timing(run.plugin_seconds):
            self.pm.hook.probe_run_end(run=run, writer=writer)

    def trace(self, clip: AudioClip, writer=None) -> Run:
        """Decode one clip with every plugin watching; records go to ``writer`` (a TraceWriter)."""
        run = next(self.trace_many([clip]))
        if writer is not None:
            self.finish(run, writer)
        return run


@dataclass
class _Pending:
    """One window of a generate() call while it decodes: per row, what the observer reported."""

    rows: list[int]
    seek: dict[int, int]
    prompts: dict[int, list[int]]
    started: float
    attempt: int = -1
    attempt_rows: dict[int, list[int]] = field(default_factory=dict)  # attempt → its rows, in batch order
    encoder: dict[int, torch.Tensor] = field(default_factory=dict)  # attempt → [row, frame, d_model]
    attempts: dict[int, list[Attempt]] = field(default_factory=dict)
    rejected_logprobs: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    segments: dict[int, tuple[list[dict], int]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def encoder_row(self, attempt: int, row: int) -> torch.Tensor:
        return self.encoder[attempt][self.attempt_rows[attempt].index(row)]  # [frame, d_model]


class _Windows:
    """The observer's listener: each row's windows as they finish — replayed, results, plugins."""

    def __init__(self, tracer: Tracer, items: list[_Item], router: _Router, replay_points: list[HookPoint],
                 max_frames: list[int], rejected_points: list[HookPoint] = ()):
        self.tracer, self.items, self.router, self.replay_points = tracer, items, router, replay_points
        self.rejected_points = list(rejected_points)
        self.max_frames = max_frames  # per row: log-Mel frames generate() decodes up to
        self.temperatures = max(1, len(tracer.options.temperatures))
        self.pending: _Pending | None = None
        self._phases: list[str] = []
        self._aside_clock = 0.0
        self._bars: list[tqdm] = []
        self.cross_kv = _CrossKeyValues(tracer.loaded.model.model.decoder, router)

    @contextmanager
    def progress(self, enabled: bool):
        self._bars = [tqdm(total=round(item.run.clip.duration, 1), desc=Path(item.run.clip.source).name[:30],
                           unit="s", leave=False, disable=not enabled or item.run.clip.duration <= WINDOW_SECONDS)
                      for item in self.items]
        try:
            yield
        finally:
            for bar in self._bars:
                bar.close()

    # -- observer events ------------------------------------------------------------------
    def window_start(self, rows, seek, prompts, mask) -> None:
        self._close()
        unpadded = [(prompts[i][mask[i].bool()] if mask is not None else prompts[i]).tolist() for i in range(len(rows))]
        self.pending = _Pending(rows=list(rows), seek=dict(zip(rows, seek)), prompts=dict(zip(rows, unpadded)),
                                started=time.perf_counter(), timings={"encode": 0.0, "detect": 0.0})
        for row, frames in zip(rows, seek):
            bar = self._bars[row]
            bar.update(round(min(frames / MEL_FRAMES_PER_SECOND, bar.total), 1) - bar.n)

    def window_prompts(self, prompts, mask) -> None:
        """The window's prompts changed before decoding (``--multilingual`` set each row's language)."""
        pending = self.pending
        pending.prompts = {row: (prompts[i][mask[i].bool()] if mask is not None else prompts[i]).tolist()
                           for i, row in enumerate(pending.rows)}

    def attempt_start(self, rows, temperature, num_beams) -> None:
        pending = self.pending
        pending.attempt += 1
        pending.attempt_rows[pending.attempt] = list(rows)
        self.router.items = [self.items[row] for row in rows]
        self.router.defer = pending.attempt < self.temperatures - 1  # this attempt may still be rejected
        for row in rows:
            run, ctx = self.items[row].run, self.items[row].ctx
            ctx.window, ctx.attempt, ctx.temperature, ctx.num_beams = len(run.windows), pending.attempt, temperature, num_beams
            ctx.step, ctx.seek, ctx.n_frames, ctx.tokens, ctx.prompt_length = -1, pending.seek[row], \
                self._n_frames(row, pending.seek[row]), None, 0
        # encoder points fire once per window: a retry re-encodes the same audio
        self._set_phase("encode" if pending.attempt == 0 else "again")
        self.cross_kv.attempt = pending.attempt
        pending.timings["_encode_clock"] = time.perf_counter()

    def encoded(self, hidden) -> None:
        pending = self.pending
        pending.encoder[pending.attempt] = hidden  # [row, frame, d_model]
        if pending.attempt == 0:
            pending.timings["encode"] = time.perf_counter() - pending.timings.pop("_encode_clock")
        self._set_phase("decode")

    def attempt_end(self, row: int, attempt: Attempt) -> None:
        pending = self.pending
        pending.attempts.setdefault(row, []).append(attempt)
        if self._accepted(attempt):
            return
        item = self.items[row]
        item.deferred.clear()  # a rejected attempt's captures are dropped
        # its per-token log-probabilities, teacher-forced; plugins that asked (probe_rejected_points)
        # see this replay with ctx.phase == "rejected", everyone else sees nothing of it
        hidden = pending.encoder_row(attempt.index, row)[None]  # [1, frame, d_model]
        prompt = pending.prompts[row]
        sequence = prompt + attempt.sequence
        points = [p for p in self.rejected_points if p.name in item.run.state["_rejected"][1]]
        if not points:
            with self._phase("aside"):
                states = self.tracer.loaded.model.model.decoder(
                    input_ids=torch.tensor([sequence], device=hidden.device),
                    encoder_hidden_states=hidden, use_cache=False).last_hidden_state[0]
        else:
            router, ctx = self.router, item.ctx
            before_items, before_ctx = router.items, dataclasses.replace(ctx)
            ctx.phase, ctx.tokens, ctx.prompt_length, ctx.step = "rejected", sequence, len(prompt), -1
            router.items = [item]
            try:
                with self._phase("rejected"):
                    states = self.tracer.replay(router, hidden, [sequence], points, capture=router.rejecting)[0]
            finally:
                router.items = before_items
                for name in ("phase", "tokens", "prompt_length", "step"):
                    setattr(ctx, name, getattr(before_ctx, name))
        pending.rejected_logprobs[row, attempt.index] = self.tracer.emitted_logprobs(
            states, len(prompt), attempt.sequence)

    def window_decoded(self) -> None:
        self._set_phase("aside")

    def segments(self, row: int, segments: list[dict], offset: int) -> None:
        self.pending.segments[row] = (segments, offset)

    def aside(self, entering: bool) -> None:
        if entering:
            self._phases.append(self.router.phase)
            self.router.phase = "aside"
            self._aside_clock = time.perf_counter()
        else:
            self.router.phase = self._phases.pop() if self._phases else "aside"
            if self.pending is not None:
                self.pending.timings["detect"] += time.perf_counter() - self._aside_clock

    def finished(self) -> None:
        self._close()
        for bar in self._bars:
            bar.update(bar.total - bar.n)

    # -- helpers ---------------------------------------------------------------------------
    def _set_phase(self, phase: str) -> None:
        self.router.phase = phase
        for item in self.router.items:
            item.ctx.phase = phase

    @contextmanager
    def _phase(self, phase: str):
        before = self.router.phase
        self.router.phase = phase
        try:
            yield
        finally:
            self.router.phase = before

    def _accepted(self, attempt: Attempt) -> bool:
        return not attempt.needs_fallback or attempt.index >= self.temperatures - 1

    def _n_frames(self, row: int, seek: int) -> int:
        seconds = self.items[row].run.clip.duration - seek / MEL_FRAMES_PER_SECOND
        return audio_frames(seconds, self.tracer.loaded.model.config.max_source_positions)

    def _close(self) -> None:
        """The pending window is decoded and segmented: replay it, make its results, call plugins."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        tracer, router = self.tracer, self.router
        generate_seconds = time.perf_counter() - pending.started
        rows = pending.rows
        accepted = {row: pending.attempts[row][-1] for row in rows}
        items = [self.items[row] for row in rows]
        sequences = [pending.prompts[row] + accepted[row].sequence for row in rows]
        encoder_hidden = torch.stack([pending.encoder_row(accepted[row].index, row) for row in rows])
        for item in items:
            router.flush(item)  # the accepted attempt's decoding captures
        for item, row, sequence in zip(items, rows, sequences):
            item.ctx.phase, item.ctx.tokens, item.ctx.prompt_length = "replay", sequence, len(pending.prompts[row])
            item.ctx.attempt = accepted[row].index
        router.items = items
        clock = time.perf_counter()
        cache = self.cross_kv.cache([(accepted[row].index, pending.attempt_rows[accepted[row].index].index(row),
                                      accepted[row].num_beams) for row in rows])
        self.cross_kv.kept.clear()
        with self._phase("replay"):
            hidden = tracer.replay(router, encoder_hidden, sequences, self.replay_points, cache)  # [row, query, d_model]
        sot_index = [_sot_index(pending.prompts[row], tracer.sot) for row in rows]
        detected = tracer.language_probs(tracer.logits(hidden[torch.arange(len(rows)), sot_index]))
        replay_seconds = time.perf_counter() - clock
        timings = {"encode": pending.timings["encode"] / len(rows), "detect": pending.timings["detect"] / len(rows),
                   "replay": replay_seconds / len(rows)}
        timings["generate"] = generate_seconds / len(rows) - timings["encode"] - timings["detect"]
        for i, (item, row) in enumerate(zip(items, rows)):
            result = self._result(pending, row, hidden[i], sot_index[i], detected[i], timings)
            item.run.windows.append(result)
            with plugin_timing(item.run.plugin_seconds):
                tracer.pm.hook.probe_window_end(run=item.run, window=result)

    def _result(self, pending: _Pending, row: int, hidden: torch.Tensor, sot: int, detected, timings) -> WindowResult:
        from probe.signals import attempt_record, window_signals

        tracer = self.tracer
        tokenizer = tracer.loaded.processor.tokenizer
        options = tracer.options
        prompt, attempts = pending.prompts[row], pending.attempts[row]
        accepted = attempts[-1]
        tokens = accepted.sequence
        seek = pending.seek[row]
        run = self.items[row].run
        language_probs, no_speech = detected
        if accepted.no_speech_probability is not None:  # what generate() itself decided with
            no_speech = accepted.no_speech_probability
        language = (tracer.language_of.get(prompt[sot + 1], "en") if tracer.languages and len(prompt) > sot + 1
                    else "en")
        window_frames = min(self.max_frames[row] - seek, 2 * tracer.loaded.model.config.max_source_positions)
        found, offset = pending.segments.get(row, ([], window_frames))
        segments = [{"start": round(float(s["start"]), 3), "end": round(float(s["end"]), 3),
                     "text": tokenizer.decode([t for t in s["tokens"].tolist() if t < tracer.eot]).strip(),
                     "tokens": [int(t) for t in s["tokens"].tolist()]} for s in found]
        kept = 0 if accepted.skipped else sum(len(s["tokens"]) for s in segments)
        token_logprobs = tracer.emitted_logprobs(hidden, len(prompt), tokens)
        records = [attempt_record(a, tokenizer, tracer.eot, options,
                                  token_logprobs if a is accepted else pending.rejected_logprobs.get((row, a.index), []),
                                  accepted=a is accepted, last=a.index >= self.temperatures - 1)
                   for a in attempts]
        start = seek / MEL_FRAMES_PER_SECOND
        duration = run.clip.duration
        return WindowResult(
            index=len(run.windows), start=round(start, 3),
            end=round(max(start, min(start + window_frames / MEL_FRAMES_PER_SECOND, duration)), 3),
            prompt=prompt, tokens=tokens, sot_index=sot,
            text=tokenizer.decode([t for t in tokens[:kept] if t < tracer.eot]).strip(),
            language=language, language_probability=language_probs.get(language, 0.0),
            language_probs=language_probs, no_speech_probability=float(no_speech),
            n_frames=self._n_frames(row, seek), seek=seek, next_seek=seek + int(offset), kept=kept,
            skipped=accepted.skipped, segments=[] if accepted.skipped else segments, attempts=records,
            token_logprobs=token_logprobs,
            signals=window_signals(tokens, kept, token_logprobs, float(no_speech), tracer.loaded.model.config.vocab_size,
                                   tokenizer, tracer.eot),
            timings=dict(timings))


class _CrossKeyValues:
    """Keeps the cross-attention keys and values each attempt's ``generate()`` computes, for the replay.

    Forward hooks on each decoder layer's ``encoder_attn.k_proj`` / ``v_proj`` keep their first
    output of an attempt while it decodes ([row·beams, frame, d_model]); with the cache on,
    generate() computes them once per attempt.  (Asking generate() for its cache costs more:
    Whisper's generate splits and re-stacks every cache tensor.)
    """

    def __init__(self, decoder, router: _Router):
        self.decoder, self.router = decoder, router
        self.attempt = 0
        self.kept: dict[tuple[int, int, str], torch.Tensor] = {}
        self.handles: list = []

    def __enter__(self) -> "_CrossKeyValues":
        for index, layer in enumerate(self.decoder.layers):
            for which in ("k_proj", "v_proj"):
                module = getattr(layer.encoder_attn, which)
                self.handles.append(module.register_forward_hook(self._keeper(index, which)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in reversed(self.handles):
            handle.remove()
        self.handles.clear()
        self.kept.clear()

    def _keeper(self, index: int, which: str):
        def keep(module, args, output):
            if self.router.phase == "decode":
                self.kept.setdefault((self.attempt, index, which), output)  # [row·beams, frame, d_model]
        return keep

    def cache(self, rows: list[tuple[int, int, int]]):
        """An EncoderDecoderCache holding only the cross-attention keys/values of ``rows`` — (attempt,
        row within the attempt, beams) each — or None when they were not all seen."""
        layers = len(self.decoder.layers)
        try:
            from transformers.cache_utils import DynamicCache, EncoderDecoderCache

            attn = self.decoder.layers[0].encoder_attn
            heads, head_dim = attn.num_heads, attn.head_dim
            kept = DynamicCache()
            for index in range(layers):
                keys, values = (torch.stack([self.kept[attempt, index, which][row * beams]
                                             for attempt, row, beams in rows])
                                for which in ("k_proj", "v_proj"))
                shape = (len(rows), -1, heads, head_dim)  # → [batch, head, frame, head_dim]
                kept.update(keys.reshape(shape).transpose(1, 2), values.reshape(shape).transpose(1, 2), index)
            return EncoderDecoderCache(DynamicCache(), kept)
        except (KeyError, AttributeError, ImportError, TypeError, RuntimeError):
            return None


def _cache_kwargs(decoder, cache) -> dict:
    if cache is None:
        return {"use_cache": False}
    import inspect

    name = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    return {name: cache, "use_cache": True}


def _sot_index(prompt: list[int], sot: int) -> int:
    return prompt.index(sot) if sot in prompt else 0


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


def plugin_versions(pm) -> dict[str, str]:
    return {name: plugin_version(plugin) for name, plugin in pm.list_name_plugin()}
