"""The ``probe`` subcommands other than ``run``: ``points``, ``plugins``, ``ls`` / ``show`` / ``rm``
(the store), ``convert``, ``dashboard``, ``export`` and ``import``."""

from __future__ import annotations

import json
from pathlib import Path



def cmd_points(args) -> int:
    from probe.models import load_model
    from probe.points import select_points

    loaded = load_model(args.model, device="cpu" if args.device == "auto" else args.device, dtype="float32")
    points = select_points(loaded.model.config, [args.pattern])
    if args.json:
        print(json.dumps([p.to_dict() for p in points], indent=1))
        return 0
    width = max(len(p.name) for p in points)
    for p in points:
        shape = ", ".join(f"{axis}={size}" if size else axis for axis, size in zip(p.shape, p.sizes))
        print(f"{p.name:<{width}}  [{shape}]  {p.doc}")
    return 0


def cmd_plugins(args) -> int:
    from probe.plugin_manager import describe, get_plugin_manager

    rows = describe(get_plugin_manager(plugins=args.plugins))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        kind = "built-in" if row["builtin"] else "external"
        print(f"{row['name']} {row['version']} ({kind}): {', '.join(row['hooks'])}")
    return 0


def cmd_ls(args) -> int:
    from probe.store import Store

    store = Store(args.store)
    infos = store.list(check_files=True)
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=1, default=str))
        return 0
    if not infos:
        print(f"no traces in {store.path}; record one with `probe run AUDIO`")
    for info in infos:
        status = f"BROKEN: {info.error}" if info.error else info.transcript
        print(f"{info.id}  {info.model_id or '-'}  {status}")
    return 0


def cmd_show(args) -> int:
    from probe.store import Store

    trace = Store(args.store, create=False).resolve(args.trace)
    trace.check_files()
    data = dict(trace.manifest)
    data["words"] = trace.words()
    if args.json:
        print(json.dumps(data, indent=1, ensure_ascii=False, default=str))
        return 0
    print(repr(trace))
    print(f"model: {data['model']['id']}  language: {data.get('language')} "
          f"(p={data.get('language_probability', 0):.2f})  no-speech: p={data.get('no_speech_probability', 0):.3f}")
    timings = data.get("timings") or {}
    load = timings.get("load")  # waiting for the model, not in the total; older traces lack it
    print(f"traced in {timings.get('total', 0):.1f} s"
          + ("" if load is None else f" (model loaded in {load:.1f} s)" if load else " (model already loaded)"))
    if data.get("interventions"):
        from probe.interventions import describe

        print(f"INTERVENED: {describe(data['interventions'])}")
        if data.get("effect"):
            from probe.effect import describe as describe_effect

            print(describe_effect(data["effect"]))
    print(f"prompt: {''.join(t['token'] for t in data.get('prompt', []))}")
    print(f"transcript: {data.get('transcript', '')}")
    windows = data.get("windows", [])
    if windows:
        print("windows (seek, attempts and hallucination signals):")
        for window in windows:
            print("  " + window_line(window))
            for attempt in window.get("attempts", []):
                if len(window["attempts"]) > 1 or attempt.get("verdict") != "kept":
                    print(f"      attempt {attempt['attempt']} T={attempt['temperature']:.1f}: {attempt['verdict']}"
                          f" — {attempt['reason']}: {attempt['text'][:60]!r}")
    for word in data["words"]:
        note = (f"  (anomalous: p={word.get('probability')}, score {word['anomaly']})" if word.get("anomalous")
                else "")
        print(f"  {word['start']:7.2f} {word['end']:7.2f}  {word['word']}{note}")
    print("records:")
    for name, meta in trace.records.items():
        print(f"  {name}  {meta.get('kind')} {meta.get('shape', '')} {meta.get('dtype', '')}")
    return 0


def window_line(window: dict) -> str:
    """One line per window: where it is, its language, and the signals that flag hallucinations."""
    signals = window.get("signals") or {}
    flags = []
    if window.get("skipped"):
        flags.append("SKIPPED (no speech)")
    if signals.get("looping"):
        loop = signals["repetition"]
        flags.append(f"LOOP ({loop['repeats']}× a {loop['ngram']}-token phrase)")
    if len(window.get("attempts", [])) > 1:
        flags.append(f"{len(window['attempts'])} attempts")
    logprob = signals.get("avg_logprob")
    return (f"window {window['index'] + 1:>3} {window['start']:7.2f}-{window['end']:7.2f} s  seek {window.get('seek', 0)}"
            f"  <|{window['language']}|>  no-speech {window['no_speech_probability']:.2f}"
            f"  avg logprob {logprob if logprob is None else round(logprob, 2)}"
            f"  compression {signals.get('compression_ratio', 0):.2f}/{signals.get('text_compression_ratio', 0):.2f}"
            + (f"  {'; '.join(flags)}" if flags else ""))


def cmd_rm(args) -> int:
    from probe.store import Store

    store = Store(args.store, create=False)
    for ref in args.traces:
        trace_id = store.resolve_id(ref)  # not opened: a broken trace can be removed too
        store.delete(trace_id)
        print(f"deleted {trace_id}")
    return 0


def cmd_convert(args) -> int:
    from probe.convert import convert

    dest = convert(Path(args.src), Path(args.dest))
    print(f"wrote {dest}")
    return 0


def cmd_dashboard(args) -> int:
    from probe.dashboards import serve

    return serve(store=args.store, host=args.host, port=args.port, plugins=args.plugins)


def cmd_export(args) -> int:
    from probe import contributions
    from probe.export import export_trace
    from probe.store import Store

    store = Store(args.store, create=False)
    found = _sweep_named(store, args.trace)
    if found is not None:
        from probe.export.sweep import export_sweep

        for path in export_sweep(found, args.format, out=args.out, metrics=args.views, group=args.group):
            print(path)
        return 0
    trace = store.resolve(args.trace)
    if args.plugins:
        contributions.configure(args.plugins)
        contributions.current()  # a bad -p fails here, in one line
    for path in export_trace(trace, args.format, out=args.out, views=args.views, windows=args.windows,
                             time_range=args.time_range):
        print(path)
    return 0


def _sweep_named(store, ref: str):
    """The sweep ``ref`` names when it names no trace (``probe export`` takes either)."""
    from probe.errors import StoreError

    try:
        store.resolve_id(ref)
        return None
    except StoreError:
        pass
    from probe.sweep import list_sweeps, open_sweep  # imports torch: only when ref names no trace

    sweeps = list_sweeps(store)
    if not any(sweep.id.startswith(ref) for sweep in sweeps):
        return None
    return open_sweep(store, ref)  # a prefix of several sweeps: that, in one line


def cmd_import(args) -> int:
    from probe.export import import_bundle
    from probe.store import Store

    trace = import_bundle(Path(args.bundle), Store(args.store))
    print(f"imported {trace.id}")
    return 0


def cmd_heads(args) -> int:
    from probe import heads, speech_set
    from probe.errors import OptionError
    from probe.models import load_model

    if not args.alignment:
        raise OptionError("probe heads ranks heads by one measure so far: add --alignment")
    if args.clips and (args.text or args.texts):
        raise OptionError("--text/--texts are sentences for espeak-ng to speak; with clips, the words come from --times")
    if args.times and not args.clips:
        raise OptionError("--times gives the word times of clips; name the clips too (CLIP ... --times FILE)")
    if not args.clips and args.language != "en":
        raise OptionError(f"the built-in speech set is English; for --language {args.language} pass your clips "
                          "with --times FILE")
    target = heads.check_model_dir(args.write) if args.write else None
    references = (speech_set.from_times_file(args.clips, args.times, args.language) if args.clips
                  else speech_set.synthesized(_heads_sentences(args)))
    loaded = load_model(args.model or target, device=args.device, dtype=args.dtype)
    if target is not None:
        heads.check_model_dir(target, loaded.model.config)
    ranking = heads.rank_heads(loaded, references, top=args.top)
    written = heads.write_alignment_heads(target, ranking.top(args.top), loaded.model.config) if target else None
    if args.json:
        print(json.dumps({**ranking.to_dict(), "written": None if written is None else str(written)}, indent=1))
        return 0
    print("\n".join(heads.describe(ranking, max(args.top, min(12, len(ranking.heads))))))
    if written is not None:
        print(f"wrote alignment_heads {[list(h) for h in ranking.top(args.top)]} to {written}; "
              f"`probe run --model {target}` times words with them")
    return 0


def _heads_sentences(args) -> list[str]:
    """What the speech set speaks: --text, the lines of --texts, or the built-in lecture sentences."""
    from probe import speech_set
    from probe.errors import OptionError

    if args.text:
        return args.text
    if args.texts:
        path = Path(args.texts)
        if not path.is_file():
            raise OptionError(f"--texts {path} does not exist; give a text file with one sentence a line")
        return path.read_text(encoding="utf-8").splitlines()
    return speech_set.lecture_sentences()
