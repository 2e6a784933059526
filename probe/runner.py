"""From inputs to stored traces: the one pipeline of ``probe run``, :func:`probe.run` and the
dashboard's New trace page.

Each entry point builds its plugin manager (:func:`probe.plugin_manager.get_plugin_manager`; the
CLI's first, so plugins can add options) and then goes the same way: :func:`decode_options` (what
``generate()`` is given, ``--openai-defaults`` underneath), :func:`load` (a model spec, or a model
already loaded), :func:`clips` (paths, arrays or clips as :class:`~probe.audio.AudioClip`), a
:class:`~probe.tracer.Tracer`, and :func:`trace_clips`, which decodes the clips and — given a store —
writes each into its own trace directory.  :func:`run` is that pipeline as one call; the dashboard
calls it, the CLI calls its parts (it also reads datasets, prints a dry run, and may store nothing).
A trace becomes visible only once every plugin has written its records; any error leaves the store
as it was and no hook on the model.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

import probe
from probe.audio import AudioClip, audio_from_array, encode_flac, load_audio
from probe.errors import StoreError
from probe.metrics import trace_metrics
from probe.plugin_manager import get_plugin_manager, plugin_version
from probe.store import Store, Trace, TraceExists, TraceWriter, WriteQueue
from probe.tokens import piece_texts
from probe.tracer import DecodeOptions, Run, Tracer, decode_options


_LOAD_SECONDS = "_probe_load_seconds"  # set on a model load() loaded; taken by the first trace made with it


def load(model=None, device: str = "auto", dtype: str = "auto"):
    """The :class:`~probe.models.LoadedModel` to trace with: ``model`` itself when it is one, else
    :func:`probe.models.load_model` of that spec (hub id, directory, ``.pt``, embedded name; None:
    the embedded default).  How long a load took goes into the next trace's ``timings.load``
    (:func:`load_seconds`)."""
    from probe import models

    if isinstance(model, models.LoadedModel):
        return model
    started = time.perf_counter()
    loaded = models.load_model(model, device=device, dtype=dtype)
    setattr(loaded, _LOAD_SECONDS, time.perf_counter() - started)
    return loaded


def load_seconds(loaded) -> float:
    """Seconds the trace about to be written waited for its model: the load that :func:`load` did,
    reported once (by the first trace made with that model); 0.0 when the model was already loaded
    (a later clip, a model passed in loaded, the dashboard's cached model)."""
    return round(loaded.__dict__.pop(_LOAD_SECONDS, 0.0), 4)


def clips(audio: Iterable, channel="mix") -> Iterator[AudioClip]:
    """Each of ``audio`` (paths, 16 kHz arrays, clips) as an :class:`AudioClip`, loaded as it is reached."""
    return (as_clip(item, channel) for item in audio)


def as_clip(audio, channel="mix") -> AudioClip:
    """An :class:`AudioClip` from a path, a numpy/torch array (16 kHz) or a clip."""
    if isinstance(audio, AudioClip):
        return audio
    if isinstance(audio, (str, Path)):
        return load_audio(audio, channel=channel)
    if isinstance(audio, (np.ndarray, torch.Tensor)):
        return audio_from_array(audio, 16000)
    raise TypeError(f"cannot trace {type(audio).__name__}; pass a path, an array or an AudioClip")


def model_summary(loaded) -> dict:
    config = loaded.model.config
    return {
        "id": loaded.model_id,
        "source": loaded.source,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "attn_implementation": loaded.attn_implementation,
        # how hook_pattern points were seen: eager hands its probabilities over; other kernels never
        # form them, so the requested modules recompute softmax(q·kᵀ) from the same queries and keys
        "attention_patterns": ("eager attention weights" if loaded.attn_implementation == "eager"
                               else f"recomputed from queries and keys beside {loaded.attn_implementation}"),
        "multilingual": loaded.is_multilingual,
        "alignment_heads": [list(h) for h in loaded.alignment_heads],
        "config": {key: getattr(config, key) for key in (
            "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
            "num_mel_bins", "vocab_size", "max_source_positions", "max_target_positions")},
    }


def manifest_fields(run: Run, pm, name: str | None, timings: dict) -> dict:
    """The manifest a finished run writes, besides the records (see :mod:`probe.store`)."""
    tokenizer = run.tokenizer
    first = run.windows[0]
    clip = run.clip
    return {
        "name": name,
        "probe_version": probe.__version__,
        "model": model_summary(run.loaded),
        "audio": {"source": clip.source, "sha256": clip.sha256, "duration": round(clip.duration, 3),
                  "sample_rate": 16000, "original_sample_rate": clip.original_sample_rate,
                  "original_channels": clip.original_channels, "channel": clip.channel, "file": "audio.flac"},
        "decode": run.options.to_dict(),
        "prompt": [{"id": t, "token": s} for t, s in zip(first.prompt, piece_texts(tokenizer, first.prompt))],
        "transcript": run.transcript,
        "sequence": run.sequence,  # the transcript's tokens, as plain generate() returns them
        "language": first.language,
        "language_probability": first.language_probability,
        "no_speech_probability": first.no_speech_probability,
        "windows": [w.to_dict(tokenizer) for w in run.windows],
        "plugins": plugin_versions(pm),
        "points": run.hooked,
        "requested_points": run.points,
        "timings": timings,
        "metrics": trace_metrics(run, pm),
        **({"reference": {"text": clip.reference, "column": (clip.dataset or {}).get("text_column")}}
           if clip.reference is not None else {}),
        **({"dataset": {k: v for k, v in clip.dataset.items() if k != "text_column"}} if clip.dataset else {}),
        **({"interventions": run.interventions} if run.interventions else {}),
    }


def plugin_versions(pm) -> dict[str, str]:
    return {name: plugin_version(plugin) for name, plugin in pm.list_name_plugin()}


def warn_slow_plugins(plugin_seconds: dict[str, float], total: float) -> None:
    """Name a plugin that took over a second and over a quarter of the run (one line on stderr)."""
    for name, seconds in sorted(plugin_seconds.items(), key=lambda item: -item[1]):
        if seconds > 1.0 and seconds > 0.25 * total:
            print(f"probe: plugin {name!r} took {seconds:.1f} s of this {total:.1f} s trace"
                  f" (-p no:{name} runs without it)", file=sys.stderr)


def begin_trace(tracer: Tracer, run: Run, store: Store, name: str | None = None,
                queue: WriteQueue | None = None, effect=None, trace_id: str | None = None) -> TraceWriter:
    """Let the plugins hand ``run``'s records to a new trace of ``store``; returns its writer.
    An intervened run's ``effect`` (:func:`measured_effect`) adds its records and summary.

    The plugins run here, on this thread.  With a ``queue`` the files are written and the trace
    published on the queue's thread (``writer.wait()`` gives the trace); without one, before this
    returns.  The trace appears in the store only when everything is written; an error leaves none.
    """
    name = name or Path(run.clip.source).stem
    with store.writer(name=name, queue=queue, trace_id=trace_id) as writer:
        tracer.finish(run, writer)
        timings = {key: round(sum(w.timings.get(key, 0.0) for w in run.windows), 4)
                   for key in ("encode", "detect", "generate", "replay")}
        timings["total"] = round(sum(timings.values()), 4)
        timings["load"] = load_seconds(run.loaded)  # loading the model, before (and not in) the total
        timings["plugins"] = {name: round(sec, 4) for name, sec in run.plugin_seconds.items()}
        warn_slow_plugins(run.plugin_seconds, timings["total"])
        writer.add_audio(functools.partial(encode_flac, run.clip.samples), 16000)  # encoded where it is written
        writer.update_manifest(**manifest_fields(run, tracer.pm, name, timings))
        if effect is not None:
            from probe import effect as effect_mod

            effect_mod.write(writer, effect, run.transcript, run.sequence)
    return writer


def measured_effect(tracer: Tracer, run: Run, store: Store | None, clean: str | None):
    """For an intervened run: what the intervention changed against the clean trace ``clean``
    names (an id, ``"auto"``: the store's newest matching trace; None: none), as
    :func:`probe.effect.measure` finds it; None without interventions or a clean trace."""
    if not tracer.interventions or store is None or clean is None:
        return None
    from probe import effect as effect_mod

    trace = effect_mod.clean_trace(store, clean, run)
    if trace is None:
        return None
    return effect_mod.measure(tracer, run, trace)


def write_trace(tracer: Tracer, run: Run, store: Store, name: str | None = None):
    """Let the plugins write ``run``'s records into a new trace of ``store``; returns the trace."""
    try:
        return begin_trace(tracer, run, store, name).wait()
    finally:
        run.spill.remove()


class _Published:
    """Stands in for the writer of a trace that is already in the store."""

    def __init__(self, store: Store, trace_id: str):
        self.store, self.trace_id = store, trace_id

    def written(self) -> bool:
        return True

    def wait(self) -> Trace:
        return self.store.open(self.trace_id)


def trace_clips(tracer: Tracer, clips: Iterable[AudioClip], store: Store | None, name: str | None = None,
                batch_size: int = 1, clean: str | None = None,
                trace_id: Callable[[AudioClip], str | None] | None = None) -> Iterator[tuple[Run, Trace | None]]:
    """Trace clips (``batch_size`` clips decoded together) and store each: yields (run, trace).

    Each trace's files are written on a background thread (:class:`~probe.store.WriteQueue`) while
    the next clips decode; pairs come out in input order once their trace is published.  When
    anything fails or is interrupted, traces already handed over are still published, the
    unfinished one is removed, and the error goes on.  Without a ``store`` (``probe run
    --no-store``) the clips are only decoded: yields (run, None).  With interventions, each run is
    measured against its clean trace (``clean``, see :func:`measured_effect`) before it is written.
    ``trace_id(clip)`` names each trace's id (a dataset run's deterministic row id) or None for a
    new one; a named trace that another run published meanwhile is yielded as that trace.
    """
    if store is None:
        yield from ((run, None) for run in tracer.trace_many(clips, batch_size=batch_size))
        return
    pending: deque[tuple[Run, TraceWriter]] = deque()
    seen: list[Run] = []

    def oldest():
        done, writer = pending.popleft()
        try:
            return done, writer.wait()
        except TraceExists as taken:  # the same row and run, traced by another run just now
            return done, store.open(taken.trace_id)
        finally:
            done.spill.remove()  # what it spilled is in the trace now (or the trace failed)

    try:
        with WriteQueue() as queue:
            for run in tracer.trace_many(clips, batch_size=batch_size):
                seen.append(run)
                effect = measured_effect(tracer, run, store, clean)
                named = trace_id(run.clip) if trace_id is not None else None
                try:
                    writer = begin_trace(tracer, run, store, name, queue, effect, named)
                except TraceExists as taken:  # published by another run since this one checked
                    writer = _Published(store, taken.trace_id)
                pending.append((run, writer))
                while pending and pending[0][1].written():
                    yield oldest()
            while pending:
                yield oldest()
    finally:
        for run in seen:
            run.spill.remove()


def run(audio, model=None, plugins: Iterable = (), points: Iterable[str] = (), store=None, name: str | None = None,
        language: str | None = None, task: str = "transcribe", timestamps: bool = False, num_beams: int = 1,
        max_new_tokens: int | None = None, device: str = "auto", dtype: str = "auto", disable: Iterable[str] = (),
        plugin_options: dict | None = None, channel="mix", batch_size: int = 1, source: str | None = None,
        interventions: Iterable | None = None, clean: str | None = "auto", reference: str | None = None, **decoding):
    """Trace ``audio`` with Whisper and return the stored trace (a list of traces for a list input).

    :param audio: a path, a 16 kHz numpy/torch array, an :class:`~probe.audio.AudioClip`, or a list.
    :param model: hub id, local directory, ``.pt`` file, embedded name, or a loaded model;
        default: the embedded multilingual base model.
    :param plugins: extra plugins (module names, ``.py`` paths or objects); ``"no:NAME"`` disables one.
    :param points: hook points (globs allowed) for the ``activations`` plugin to record.
    :param store: a :class:`~probe.store.Store` or folder; default :func:`probe.store.default_store_dir`.
    :param batch_size: clips decoded together in one ``generate()`` call.
    :param source: what the manifest names as the audio's source instead of the path or "array"
        (e.g. an upload's file name, when ``audio`` is a temporary copy of it); one input only.
    :param reference: what was said, for the trace's WER/CER (``metrics``); one input only.
    :param interventions: changes made inside the model while it decodes (:mod:`probe.interventions`:
        ``Ablate``, ``Steer``, ``Local``, ``Block``, ``Replace`` objects or their dicts); the manifest lists them.
    :param clean: with interventions, the clean trace of the same clip to measure them against
        (:mod:`probe.effect`): its id or name, ``"auto"`` (the store's newest trace of this audio,
        model and decoding options without interventions), or None.
    :param decoding: more :class:`~probe.tracer.DecodeOptions` fields — ``temperature`` (a float or a
        fallback tuple), ``compression_ratio_threshold``, ``logprob_threshold``, ``no_speech_threshold``,
        ``condition_on_prev_tokens``, ``initial_prompt``, ``prefix``, ``multilingual``, ``seed``,
        ``min_new_tokens``; or
        ``openai_defaults=True`` for openai-whisper's transcribe() settings (explicit fields win).
    """
    loaded = load(model, device=device, dtype=dtype)
    store = store if isinstance(store, Store) else Store(store)
    openai_defaults = decoding.pop("openai_defaults", False)
    unknown = set(decoding) - {f.name for f in dataclasses.fields(DecodeOptions)}
    if unknown:
        raise TypeError(f"probe.run() got unexpected keyword argument(s) {', '.join(sorted(unknown))}")
    options = decode_options(openai_defaults, language=language, task=task, timestamps=timestamps,
                             num_beams=num_beams, max_new_tokens=max_new_tokens, **decoding)
    pm = get_plugin_manager(plugins=list(plugins), disabled=disable)
    from probe.interventions import in_store

    tracer = Tracer(loaded, pm, options, points=points, plugin_options=plugin_options,
                    interventions=in_store(interventions, store.path))
    for given, what in ((source, "source"), (reference, "reference")):
        if given is not None and isinstance(audio, (list, tuple)):
            raise TypeError(f"probe.run({what}=...) is about one input; pass one audio, not a list")
    inputs = clips(audio if isinstance(audio, (list, tuple)) else [audio], channel)
    if source is not None or reference is not None:
        inputs = (dataclasses.replace(clip, source=source or clip.source, reference=reference) for clip in inputs)
    traces = [trace for _, trace in trace_clips(tracer, inputs, store, name, batch_size=batch_size, clean=clean)]
    if not traces:
        raise StoreError("nothing to trace: the input list is empty")
    return traces if isinstance(audio, (list, tuple)) else traces[0]
