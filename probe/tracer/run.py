"""What plugins see of a trace: the :class:`Run`, each capture's :class:`CaptureContext`, each
:class:`WindowResult`.

A :class:`Run` is one clip being traced: the model, the audio, the decode options, the plugins'
options and their scratch ``run.state`` (the plugins' alone: the core neither reads nor writes it),
the windows decoded so far, and what the tracer resolved for it before decoding — the hook points
each phase hooks (``run.hooked``) and the plugins' record-size estimate (``run.estimate``).
Units: seconds within the clip; ``seek`` in log-Mel frames (100 per second); encoder frames 20 ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from probe.audio import AudioClip
from probe.constants import ENCODER_FRAMES_PER_WINDOW, HOP_LENGTH, SAMPLE_RATE, WINDOW_SECONDS
from probe.spill import Spill
from probe.tracer.options import DecodeOptions
from probe.tracer.routing import Routes

SPILL_SECONDS = 120  # runs longer than this keep big per-window records on disk while decoding


@dataclass
class CaptureContext:
    """Where in the run a capture happened.  One object per clip, updated in place by the tracer."""

    phase: str = "encode"  # "encode" | "decode" | "replay" | "rejected"
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
            from probe.tokens import bytes_map, piece_texts

            data["prompt_tokens"] = piece_texts(tokenizer, self.prompt)
            # the raw bytes of every token named here, so a display can join split characters
            mentioned = [*self.prompt, *self.tokens, *(t for a in self.attempts for t in a.get("tokens") or [])]
            data["token_bytes"] = bytes_map(tokenizer, mentioned)
        return data


@dataclass
class Run:
    """One clip being traced: what plugins read, plus a scratch ``state`` dict for them."""

    loaded: Any  # probe.models.LoadedModel
    clip: AudioClip
    options: DecodeOptions
    points: list[str] = field(default_factory=list)  # user-requested hook points (--points)
    plugin_options: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)  # the plugins' own; the core never reads or writes it
    windows: list[WindowResult] = field(default_factory=list)
    # Before decoding, the number of windows is not known (seek follows the decoded timestamps):
    # these are the 30 s slices the clip would need at least, for estimates.
    window_spans: list[tuple[float, float]] = field(default_factory=list)
    plugin_seconds: dict[str, float] = field(default_factory=dict)  # time spent in each plugin's hooks
    # where plugins keep big per-window arrays of a long run on disk (probe.spill); removed once
    # the run's trace is written or the run fails
    spill: Spill = field(default_factory=Spill)
    # Resolved by Tracer.start from the plugins' answers (probe.tracer.routing): per phase, the hook
    # points attached and which plugins get each one's captures.
    decode_routes: Routes = field(default_factory=Routes, repr=False)  # during generate()
    replay_routes: Routes = field(default_factory=Routes, repr=False)  # the kept attempt's replay
    rejected_routes: Routes = field(default_factory=Routes, repr=False)  # replays of rejected attempts
    estimate: dict[str, int] = field(default_factory=dict)
    interventions: list[dict] = field(default_factory=list)  # what probe.interventions changed (the manifest's)
    declared_options: bool = False  # plugin_options holds every declared option (set by the Tracer)  # record name → bytes it will take (probe_estimate)

    @property
    def hooked(self) -> dict[str, list[str]]:
        """The hook points attached in each phase, by name (the manifest's ``points``)."""
        return {"decode": self.decode_routes.names, "replay": self.replay_routes.names,
                "rejected": self.rejected_routes.names}

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
        """The value of plugin option ``key`` (``--my-flag`` is ``my_flag``): given, or its declared
        default.  In a traced run (``declared_options``) a name no plugin declared with
        ``probe_addoption`` and nobody gave is a one-line error, so a typo does not pass silently."""
        if self.declared_options and key not in self.plugin_options:
            from probe.errors import PluginError
            from probe.plugin_manager import current_plugin

            flag = "--" + key.replace("_", "-")
            raise PluginError(f"plugin {current_plugin() or '?'!r} asked for option {key!r}, which no plugin declares; "
                              f"declare it in probe_addoption (parser.addoption({flag!r}, ...)) or fix the name "
                              f"(declared: {', '.join(sorted(self.plugin_options)) or 'none'})")
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


def audio_frames(seconds: float, max_frames: int = ENCODER_FRAMES_PER_WINDOW) -> int:
    """Encoder frames (20 ms each) that hold ``seconds`` of audio, at least 1.

    As openai-whisper counts them: log-Mel frames (hop 160 samples) halved by the conv stem.
    """
    return max(1, min(round(seconds * SAMPLE_RATE) // HOP_LENGTH // 2, max_frames))


def estimated_spans(clip: AudioClip) -> list[tuple[float, float]]:
    """The 30 s slices covering ``clip`` (at least one): a lower bound on its windows."""
    duration = clip.duration
    starts = range(0, max(1, int(-(-duration // WINDOW_SECONDS))))
    return [(s * WINDOW_SECONDS, min((s + 1) * WINDOW_SECONDS, duration)) for s in starts]
