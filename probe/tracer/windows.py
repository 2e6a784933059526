"""Window bookkeeping: what the generate() observer reports, turned into replays, results and plugin calls.

:class:`Windows` is the :class:`probe.longform.Listener` of one ``generate()`` call.  While a
window decodes, a :class:`Pending` collects per row what the observer reported: its seek and
prompt, each fallback attempt, the encoder output per attempt, the segments.  A rejected attempt
is replayed teacher-forced for its per-token log-probabilities (and for plugins that asked, via
``probe_rejected_points``).  When the window is done (the next ``window_start``, or ``finished``),
the kept attempt's captures are flushed to the plugins, its tokens replayed once through the
decoder with the keys/values generate() computed (:mod:`probe.tracer.cross_kv`), a
:class:`~probe.tracer.run.WindowResult` made per row and ``probe_window_end`` called.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from probe.constants import MEL_FRAMES_PER_SECOND, WINDOW_SECONDS
from probe.longform import Attempt
from probe.plugin_manager import plugin_timing
from probe.points import HookPoint
from probe.tracer.cross_kv import CrossKeyValues
from probe.tracer.routing import Item, Router
from probe.tracer.run import WindowResult, audio_frames

if TYPE_CHECKING:
    from probe.tracer.tracer import Tracer


@dataclass
class Pending:
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


class Windows:
    """The observer's listener: each row's windows as they finish — replayed, results, plugins."""

    def __init__(self, tracer: Tracer, items: list[Item], router: Router, replay_points: list[HookPoint],
                 max_frames: list[int], rejected_points: list[HookPoint] = ()):
        self.tracer, self.items, self.router, self.replay_points = tracer, items, router, replay_points
        self.rejected_points = list(rejected_points)
        self.max_frames = max_frames  # per row: log-Mel frames generate() decodes up to
        self.temperatures = max(1, len(tracer.options.temperatures))
        self.pending: Pending | None = None
        self._phases: list[str] = []
        self._aside_clock = 0.0
        self._bars: list[tqdm] = []
        self.cross_kv = CrossKeyValues(tracer.loaded.model.model.decoder, router)
        self._replay_seeks: list[int] | None = None  # while a closed window is replayed: its rows' seeks

    @contextmanager
    def watching(self, progress: bool):
        """For the generate() call: progress bars (clips over one window, when ``progress``); on exit
        they close and the kept keys/values are let go, whatever happened."""
        self._bars = [tqdm(total=round(item.run.clip.duration, 1), desc=Path(item.run.clip.source).name[:30],
                           unit="s", leave=False, disable=not progress or item.run.clip.duration <= WINDOW_SECONDS)
                      for item in self.items]
        try:
            yield
        finally:
            for bar in self._bars:
                bar.close()
            self.cross_kv.kept.clear()

    def seeks(self) -> list[int] | None:
        """Where the window of each row of the decoder batch now running starts (log-Mel frames,
        batch order); None before the first window (language detection of a prefix prompt)."""
        if self._replay_seeks is not None:
            return self._replay_seeks
        pending = self.pending
        if pending is None or pending.attempt < 0:
            return None if pending is None else [pending.seek[row] for row in pending.rows]
        return [pending.seek[row] for row in pending.attempt_rows[pending.attempt]]

    # -- observer events ------------------------------------------------------------------
    def window_start(self, rows, seek, prompts, mask) -> None:
        self._close()
        unpadded = [(prompts[i][mask[i].bool()] if mask is not None else prompts[i]).tolist() for i in range(len(rows))]
        self.pending = Pending(rows=list(rows), seek=dict(zip(rows, seek)), prompts=dict(zip(rows, unpadded)),
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
        points = [p for p in self.rejected_points if p.name in item.run.rejected_routes.captures]
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
        self._replay_seeks = [pending.seek[row] for row in rows]
        try:
            with self._phase("replay"):
                hidden = tracer.replay(router, encoder_hidden, sequences, self.replay_points, cache)  # [row, query, d_model]
        finally:
            self._replay_seeks = None
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

    def _result(self, pending: Pending, row: int, hidden: torch.Tensor, sot: int, detected, timings) -> WindowResult:
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

def _sot_index(prompt: list[int], sot: int) -> int:
    return prompt.index(sot) if sot in prompt else 0

