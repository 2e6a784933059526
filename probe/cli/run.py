"""``probe run``: trace the inputs into the store (or ``--dry-run`` their estimates) and print
each result, as text or ``--json``."""

from __future__ import annotations

import json
import sys

from probe.cli.parser import decode_options
from probe.errors import OptionError, ProbeError


def _split_points(values: list[str]) -> list[str]:
    return [p.strip() for value in values for p in value.split(",") if p.strip()]


def _inputs(args):
    """(clip iterator, count or None) for files or a dataset."""
    from probe.audio import OpenedDataset, existing_file

    if args.dataset and args.audio:
        raise ProbeError("give audio files or --dataset, not both")
    if args.dataset:  # --dry-run of a dataset: its estimates row by row
        opened = OpenedDataset(_dataset_spec(args))
        return (row.decode() for row in opened.rows()), opened.size()
    if not args.audio:
        raise ProbeError("no audio given; pass audio files (e.g. probe run examples/en_fox.flac) or --dataset DIR")
    for path in args.audio:
        existing_file(path)  # a mistyped path fails now, not after the model has loaded
    channel = int(args.channel) if str(args.channel).isdigit() else args.channel
    from probe.runner import clips

    return clips(args.audio, channel), len(args.audio)


def _dataset_spec(args):
    from probe.audio import DatasetSpec

    return DatasetSpec(args.dataset, args.dataset_config, args.split, args.audio_column, args.text_column,
                       args.key_column, args.limit, args.streaming)


def _window_json(window) -> dict:
    return {"start": window.start, "end": window.end, "seek": window.seek, "text": window.text,
            "tokens": window.tokens, "skipped": window.skipped, "attempts": len(window.attempts),
            "language": window.language, "language_probability": round(window.language_probability, 4),
            "no_speech_probability": round(window.no_speech_probability, 4), "segments": window.segments,
            "signals": window.signals}


def _result_json(run, loaded, trace=None) -> dict:
    tokenizer = run.tokenizer
    first = run.windows[0]
    result = {
        "source": run.clip.source,
        "model": loaded.model_id,
        "language": first.language,
        "language_probability": round(first.language_probability, 4),
        "no_speech_probability": round(first.no_speech_probability, 4),
        "prompt": tokenizer.convert_ids_to_tokens(first.prompt),
        "windows": [_window_json(w) for w in run.windows],
        "text": run.transcript,
    }
    if trace is not None:
        result.update(trace=trace.id, path=str(trace.path))
    return result


def _print_result(result: dict, out) -> None:
    print(f"== {result['source']}", file=out)
    multi = len(result["windows"]) > 1
    for i, window in enumerate(result["windows"]):
        prefix = f"[window {i + 1}: {window['start']:.1f}-{window['end']:.1f} s] " if multi else ""
        notes = (" skipped as no speech" if window["skipped"] else "") + (
            f" ({window['attempts']} attempts)" if window["attempts"] > 1 else "")
        print(f"{prefix}language: {window['language']} (p={window['language_probability']:.2f})  "
              f"no-speech: p={window['no_speech_probability']:.3f}{notes}", file=out)
    print(f"prompt: {''.join(result['prompt'])}", file=out)
    for window in result["windows"]:
        for segment in window["segments"]:
            print(f"  [{segment['start']:6.2f} → {segment['end']:6.2f}] {segment['text']}", file=out)
    print(f"text: {result['text']}", file=out)
    if "trace" in result:
        print(f"trace: {result['trace']}  ({result['path']})", file=out)


def cmd_run(args) -> int:
    from tqdm import tqdm

    from probe import runner
    from probe.malloc import keep_freed_memory
    from probe.store import Store
    from probe.tracer import Tracer

    keep_freed_memory()  # freed blocks are reused, not faulted in again (probe/malloc.py)
    from probe.interventions import load_spec

    from probe.interventions import in_store
    from probe.store import default_store_dir

    interventions = [item for spec in args.intervene for item in load_spec(spec)]  # bad JSON: before any loading
    interventions = in_store(interventions, args.store or default_store_dir())
    clean = None if str(args.clean).lower() == "none" else args.clean
    if args.clean != "auto" and clean is not None and not interventions:
        raise OptionError(f"--clean {args.clean} compares an intervened trace with a clean one; add --intervene SPEC")
    _check_dataset_flags(args)
    if args.dataset and not args.dry_run:
        return _dataset_run(args, interventions, clean)
    clips, count = _inputs(args)
    loaded = runner.load(args.model, device=args.device, dtype=args.dtype)
    if loaded.note:
        print(f"probe: {loaded.note}", file=sys.stderr)
    options = decode_options(args)
    pm, plugin_options = args.plugin_manager, args.plugin_options.values(args)
    tracer = Tracer(loaded, pm, options, points=_split_points(args.points), plugin_options=plugin_options,
                    progress=sys.stderr.isatty(), interventions=interventions)
    if args.dry_run:
        return _dry_run(tracer, clips, args.json)
    store = None if args.no_store else Store(args.store)
    show_progress = args.dataset is not None and sys.stderr.isatty()
    clips = tqdm(clips, total=count, disable=not show_progress, unit="clip")
    for run, trace in runner.trace_clips(tracer, clips, store, args.name, batch_size=args.batch_size, clean=clean):
        result = _result_json(run, loaded, trace)
        if args.json:
            print(json.dumps(result, ensure_ascii=False), flush=True)
        else:
            _print_result(result, sys.stdout)
            if interventions and trace is not None:
                _print_effect(trace.manifest.get("effect"), clean)
    return 0


_DATASET_ONLY = (("text_column", "--text-column"), ("key_column", "--key-column"), ("streaming", "--streaming"),
                 ("address", "--address"))


def _check_dataset_flags(args) -> None:
    """Dataset-run flags given without what they need: one line, before anything loads."""
    if not args.dataset:
        for dest, flag in _DATASET_ONLY:
            if getattr(args, dest):
                raise OptionError(f"{flag} is for dataset runs; add --dataset DIR_OR_NAME")
        if args.engine != "local":
            raise OptionError("--engine ray runs datasets; add --dataset DIR_OR_NAME (files are traced in this process)")
    from probe.dataset_runs.run import check_engine

    check_engine(args.engine, args.address, args.workers, args.gpus_per_worker)
    if args.dataset and args.no_store:
        raise OptionError("a dataset run keeps its traces in the store to resume from; drop --no-store "
                          "(or --dry-run to see what it would record)")


def _dataset_run(args, interventions, clean) -> int:
    """``probe run --dataset``: every row traced (resumably) by the chosen engine; a row outcome per
    line as it comes, then the run's summary on stderr; exit status 1 when a row failed."""
    from tqdm import tqdm

    from probe.audio import OpenedDataset
    from probe.dataset_runs import TracerSetup
    from probe.dataset_runs.run import dataset_report
    from probe.dataset_runs.setup import absolute_plugin_refs
    from probe.store import Store

    if args.audio:
        raise ProbeError("give audio files or --dataset, not both")
    opened = OpenedDataset(_dataset_spec(args))  # a wrong dataset, split or column fails now, before any model loads
    setup = TracerSetup(args.model, decode_options(args), args.device, args.dtype,
                        absolute_plugin_refs(args.plugin_refs), tuple(_split_points(args.points)),
                        args.plugin_options.values(args), interventions)
    bar = tqdm(total=opened.size(), disable=not sys.stderr.isatty(), unit="row")

    def shown(outcome, run, trace):
        bar.update(1)
        _print_outcome(outcome, run, trace, args)

    report = dataset_report(setup, opened, Store(args.store), args.engine, on_row=shown, pm=args.plugin_manager,
                            workers=args.workers, gpus_per_worker=args.gpus_per_worker, address=args.address,
                            batch_size=args.batch_size, name=args.name, clean=clean,
                            make_tracer=lambda: _local_tracer(args, setup))
    bar.close()
    report.print()
    if args.json:
        print(json.dumps({"summary": report.to_dict()}, ensure_ascii=False), flush=True)
    return 1 if report.failures else 0


def _local_tracer(args, setup):
    """The local engine's tracer, made with the plugin manager the CLI already loaded."""
    from probe import runner
    from probe.tracer import Tracer

    loaded = runner.load(args.model, device=args.device, dtype=args.dtype)
    if loaded.note:
        print(f"probe: {loaded.note}", file=sys.stderr)
    return Tracer(loaded, args.plugin_manager, setup.options, points=list(setup.points),
                  plugin_options=setup.plugin_options, progress=sys.stderr.isatty(), interventions=setup.interventions)


def _print_outcome(outcome, run, trace, args) -> None:
    from probe.dataset_runs.outcome import FAILED, SKIPPED

    if args.json:
        line = outcome.to_dict()
        if run is not None:
            line.update(_result_json(run, run.loaded, trace))
        print(json.dumps(line, ensure_ascii=False), flush=True)
        return
    if run is not None:
        _print_result(_result_json(run, run.loaded, trace), sys.stdout)
    elif outcome.status == SKIPPED:
        print(f"== {outcome.source}: already traced ({outcome.trace_id})", file=sys.stdout)
    elif outcome.status == FAILED:
        print(f"== {outcome.source}: failed: {outcome.reason}", file=sys.stdout)
    else:
        rate = f"  error rate {outcome.error_rate:.3f}" if outcome.error_rate is not None else ""
        print(f"== {outcome.source}\ntext: {outcome.transcript}\ntrace: {outcome.trace_id}{rate}", file=sys.stdout)


def _print_effect(effect: dict | None, clean: str | None) -> None:
    """One line on stderr: what the intervention changed against the clean trace (or how to get that)."""
    if effect is None:
        if clean is not None:
            print("probe: no clean trace of this clip, model and decoding options in the store to measure the "
                  "intervention against; record one without --intervene first (or name one with --clean)",
                  file=sys.stderr)
        return
    from probe.effect import describe

    print(describe(effect), file=sys.stderr)


def _dry_run(tracer, clips, as_json: bool) -> int:
    """Resolve plugins and hook points for each input and print the record size estimate."""
    for clip in clips:
        run = tracer.start(clip)
        windows = run.window_spans
        estimate = run.estimate
        total = sum(estimate.values())
        if as_json:
            print(json.dumps({"source": clip.source, "windows_at_least": len(windows), "expected_tokens": run.expected_tokens,
                              "records": estimate, "total_bytes": total, "hooked": run.hooked}))
            continue
        print(f"== {clip.source}: {len(windows)} window(s) or more, up to {run.expected_tokens} tokens each")
        for name, size in sorted(estimate.items(), key=lambda item: -item[1]):
            print(f"  {size / 2**20:10.2f} MiB  {name}")
        print(f"  {total / 2**20:10.2f} MiB  total")
    return 0
