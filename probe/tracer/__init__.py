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

The parts, in the order a trace meets them:

- :mod:`~probe.tracer.options` — :class:`DecodeOptions`, what ``generate()`` is given;
- :mod:`~probe.tracer.run` — :class:`Run`, :class:`CaptureContext`, :class:`WindowResult`;
- :mod:`~probe.tracer.tracer` — :class:`Tracer`: start a run, one watched ``generate()`` per batch,
  the teacher-forced replay;
- :mod:`~probe.tracer.routing` — which plugin asked for which hook point, and each capture routed there;
- :mod:`~probe.tracer.budget` — the record-size estimate and the memory budget;
- :mod:`~probe.tracer.windows` — each window's attempts, replay, result and ``probe_window_end``;
- :mod:`~probe.tracer.cross_kv` — generate()'s cross-attention keys/values, reused by the replay.

Every hook on the model is registered and removed by :mod:`probe.hooks`.
"""

from probe.tracer.budget import WARN_BYTES, available_memory, check_budget
from probe.tracer.options import OPENAI_DEFAULTS, TASKS, DecodeOptions, decode_options, language_code, language_codes
from probe.tracer.run import SPILL_SECONDS, CaptureContext, Run, WindowResult, audio_frames, estimated_spans
from probe.tracer.tracer import CHUNKED_FEATURES_SECONDS, Tracer

__all__ = ["Tracer", "DecodeOptions", "decode_options", "OPENAI_DEFAULTS", "TASKS", "Run", "CaptureContext",
           "WindowResult", "audio_frames", "estimated_spans", "language_code", "language_codes", "available_memory",
           "check_budget", "SPILL_SECONDS", "CHUNKED_FEATURES_SECONDS", "WARN_BYTES"]
