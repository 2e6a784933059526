"""Watching transformers' own Whisper ``generate()`` loop: its windows, attempts and segments.

whisper-probe never re-implements Whisper's decoding.  ``WhisperForConditionalGeneration.generate``
decodes every input — one window or an hour — in one loop: it cuts a 30 s window at ``seek``,
builds the decoder prompt (``<|startofprev|>`` + the previous text when conditioning, then
``<|startoftranscript|><|lang|><|task|>``), runs ``generate_with_fallback`` (one *attempt* per
temperature until the compression-ratio / log-probability checks pass, or a window is skipped as
no speech), splits the tokens into timestamped *segments* and moves ``seek`` to the last complete
timestamp.  :class:`GenerateObserver` is a context manager that lets a listener see that loop from
inside while the plain call runs unchanged:

* each of those loop steps is wrapped on the model *instance* (the class is untouched, and every
  wrapper calls the original with the same arguments and returns its result as is);
* forward hooks mark when the encoder runs for an attempt, and which full-model forwards are only
  asides of the loop (language detection, the no-speech probability), whose captures nobody wants;
  they are registered through :class:`probe.hooks.Hooks` (the tracer's own, when it hands one over).

Everything is restored in ``finally``.  The listener (:class:`Listener`) gets, in order, for every
window of every row: ``window_start`` (→ ``window_prompts`` when each window's language is
detected) → per attempt ``attempt_start``, ``encoded``,
``attempt_end`` → ``window_decoded`` → ``segments`` → (the next ``window_start`` or ``finished``).
Units: ``seek`` and frame counts are log-Mel frames (100 per second); rows are positions in the
batch given to ``generate()``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from probe.errors import ProbeError
from probe.hooks import Hooks

# the loop's steps we watch; a transformers version without one of them cannot be traced faithfully
WATCHED = ("generate_with_fallback", "_need_fallback", "_retrieve_segment",
           "_retrieve_compression_ratio", "_retrieve_avg_logprobs")


@dataclass
class Attempt:
    """One decoding attempt of one row's window at one temperature."""

    index: int  # 0 = the first temperature
    temperature: float  # 0.0 = greedy / beam search
    num_beams: int
    sequence: list[int] = field(default_factory=list)  # generated tokens, <|endoftext|> included when emitted
    compression_ratio: float | None = None  # transformers' (zlib over token bytes), when its threshold is set
    avg_logprob: float | None = None  # as transformers computed it for its threshold (processed scores)
    no_speech_probability: float | None = None  # transformers' no-speech detector, when its threshold is set
    needs_fallback: bool = False
    skipped: bool = False  # no speech: the window's text is dropped and seek moves on a whole window


class Listener(Protocol):
    def window_start(self, rows: list[int], seek: list[int], prompts: torch.Tensor,
                     mask: torch.Tensor | None) -> None: ...
    def window_prompts(self, prompts: torch.Tensor, mask: torch.Tensor | None) -> None: ...
    def attempt_start(self, rows: list[int], temperature: float, num_beams: int) -> None: ...
    def encoded(self, hidden: torch.Tensor) -> None: ...
    def attempt_end(self, row: int, attempt: Attempt) -> None: ...
    def window_decoded(self) -> None: ...
    def segments(self, row: int, segments: list[dict], offset: int) -> None: ...
    def aside(self, entering: bool) -> None: ...
    def finished(self) -> None: ...


def check_supported(model) -> None:
    """A one-line error when this transformers version's Whisper lacks a step we watch."""
    missing = [name for name in WATCHED if not callable(getattr(model, name, None))]
    if missing:
        import transformers

        raise ProbeError(f"transformers {transformers.__version__} has no Whisper {', '.join(missing)}; "
                         "install a transformers version between 4.47 and 5.x that whisper-probe supports")


class GenerateObserver:
    """Reports the generate() loop of ``model`` to ``listener`` while the ``with`` block runs.

    ``hooks``: where its forward hooks are registered (removed when that closes); by default a
    :class:`~probe.hooks.Hooks` of its own, closed on exit.
    """

    def __init__(self, model, listener: Listener, language_per_window: bool = False, hooks: Hooks | None = None):
        check_supported(model)
        self.model, self.listener = model, listener
        self._own_hooks = hooks is None
        self._hooks = Hooks(model) if hooks is None else hooks
        # faster-whisper's multilingual=True: each window's language token is the one the model
        # detects on that window (transformers detects once per clip, on its first 30 s)
        self.language_per_window = language_per_window
        self._undo: list = []  # the wrapped loop steps' undos
        self._rows: list[int] = []  # rows of the current attempt, in batch order
        self._decisions: list[tuple[int, bool]] = []  # (row, needs fallback) of the current attempt
        self._attempt_metrics: dict[str, Any] = {}
        self._generation_config = None
        self._aside_depth = 0
        self._forwards: list[bool] = []  # per full-model forward in flight: is it an aside?
        self._attempt = -1

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> GenerateObserver:
        try:
            model = self.model
            for name in WATCHED:
                self._wrap(name, getattr(self, "_around_" + name.lstrip("_")))
            self._hooks.forward_pre(model, self._top_pre, with_kwargs=True)
            self._hooks.forward(model, self._top_post)
            encoder = model.get_encoder()
            self._hooks.forward_pre(encoder, self._encoder_pre)
            self._hooks.forward(encoder, self._encoder_post)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        try:
            if self._own_hooks:
                self._hooks.close()
        finally:
            for undo in reversed(self._undo):
                undo()
            self._undo.clear()

    def _wrap(self, name: str, around) -> None:
        model = self.model
        original = getattr(model, name)
        had_instance_attr = name in model.__dict__

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            return around(original, *args, **kwargs)

        setattr(model, name, wrapper)

        def undo():
            if had_instance_attr:
                setattr(model, name, original)
            else:
                delattr(model, name)

        self._undo.append(undo)

    # -- hooks ----------------------------------------------------------------------------
    def _top_pre(self, module, args, kwargs):
        # A full forward from input features inside generate() is an aside of the loop: language
        # detection before it, or the no-speech detector at an attempt's first step.  Decoding
        # steps pass the encoder's output instead.  Full forwards do not nest, so a stack is enough.
        aside = kwargs.get("input_features") is not None or (bool(args) and torch.is_tensor(args[0]))
        self._forwards.append(aside)
        if aside:
            self._aside_depth += 1
            if self._aside_depth == 1:
                self.listener.aside(True)
        return None

    def _top_post(self, module, args, output):
        if self._forwards and self._forwards.pop():
            self._aside_depth -= 1
            if self._aside_depth == 0:
                self.listener.aside(False)
        return None

    def _encoder_pre(self, module, args):
        if self._aside_depth:
            return None
        config = self._generation_config
        temperature = float(config.temperature) if config is not None and config.do_sample else 0.0
        beams = int(getattr(config, "num_beams", 1) or 1) if config is not None else 1
        self._attempt += 1
        if self._attempt > 0:
            self._rows = [row for row, again in self._decisions if again]
        self._decisions = []
        self.listener.attempt_start(list(self._rows), temperature, beams)
        return None

    def _encoder_post(self, module, args, output):
        if not self._aside_depth:
            self.listener.encoded(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])
        return None

    # -- wrapped loop steps ---------------------------------------------------------------
    def _around_generate_with_fallback(self, original, *args, **kwargs):
        rows = list(kwargs["batch_idx_map"])
        seek = kwargs["seek"]
        prompts = kwargs["decoder_input_ids"]  # [row, prompt] (left-padded when rows differ)
        mask = kwargs.get("kwargs", {}).get("decoder_attention_mask")
        self._generation_config = kwargs["generation_config"]
        self._rows, self._decisions, self._attempt = rows, [], -1
        self.listener.window_start(rows, [int(seek[row]) for row in rows], prompts, mask)
        if self.language_per_window:
            kwargs["decoder_input_ids"] = prompts = self._window_languages(kwargs["segment_input"], prompts,
                                                                           kwargs["generation_config"])
            self.listener.window_prompts(prompts, mask)
        result = original(*args, **kwargs)
        self.listener.window_decoded()
        return result

    def _window_languages(self, segment_input: torch.Tensor, prompts: torch.Tensor, config) -> torch.Tensor:
        """``prompts`` [row, prompt] with each row's language token set to the language detected on
        its window (``segment_input`` [row, n_mels, 3000]), by generate()'s own ``detect_language``."""
        self._aside_depth += 1  # its forward is an aside of the loop, like generate()'s own detection
        self.listener.aside(True)
        try:
            detected = self.model.detect_language(input_features=segment_input, generation_config=config)  # [row]
        finally:
            self._aside_depth -= 1
            self.listener.aside(False)
        prompts = prompts.clone()
        sot = config.decoder_start_token_id
        for i, language in enumerate(detected.tolist()):
            where = (prompts[i] == sot).nonzero()
            if len(where) and where[-1, 0] + 1 < prompts.shape[1]:
                prompts[i, where[-1, 0] + 1] = language  # <|startoftranscript|><|lang|>...
        return prompts

    def _around_need_fallback(self, original, seek_sequence, seek_outputs, index, logits_processor,
                              generation_config, vocab_size, temperature):
        self._attempt_metrics = {}
        needs_fallback, should_skip = original(seek_sequence, seek_outputs, index, logits_processor,
                                               generation_config, vocab_size, temperature)
        row = self._rows[index]
        attempt = Attempt(
            index=self._attempt, temperature=float(temperature or 0.0),
            num_beams=1 if temperature else int(getattr(generation_config, "num_beams", 1) or 1),
            sequence=[int(t) for t in seek_sequence.tolist()],
            compression_ratio=self._attempt_metrics.get("compression_ratio"),
            avg_logprob=self._attempt_metrics.get("avg_logprob"),
            no_speech_probability=_no_speech_probability(logits_processor, index)
            if generation_config.no_speech_threshold is not None else None,
            needs_fallback=bool(needs_fallback), skipped=bool(should_skip))
        self._decisions.append((row, bool(needs_fallback)))
        self.listener.attempt_end(row, attempt)
        return needs_fallback, should_skip

    def _around_retrieve_compression_ratio(self, original, *args, **kwargs):
        value = original(*args, **kwargs)
        self._attempt_metrics["compression_ratio"] = float(value)
        return value

    def _around_retrieve_avg_logprobs(self, original, *args, **kwargs):
        value = original(*args, **kwargs)
        self._attempt_metrics["avg_logprob"] = float(value)
        return value

    def _around_retrieve_segment(self, original, *args, **kwargs):
        segments, offset = original(*args, **kwargs)
        self.listener.segments(int(kwargs["prev_idx"]), segments, int(offset))
        return segments, offset


def _no_speech_probability(logits_processor, index: int) -> float | None:
    from transformers.generation.logits_process import WhisperNoSpeechDetection

    for processor in logits_processor or []:
        if isinstance(processor, WhisperNoSpeechDetection):
            probs = processor.no_speech_prob
            return float(probs[index]) if len(probs) > index else None
    return None
