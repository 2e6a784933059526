"""The ``probe`` command line.

Subcommands: ``run`` (trace audio into the store), ``points`` (list hook points with shapes),
``plugins`` (list plugins and their hooks), ``ls`` / ``show`` / ``rm`` (browse the store),
``convert`` (CTranslate2 or openai-whisper checkpoint → transformers directory), ``dashboard``,
``export`` and ``import``.  A user mistake prints one line, ``probe: error: ...``, and exits 2;
``--debug`` shows the traceback.  Ctrl-C exits 130 with nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from probe.errors import ProbeError

DEBUG_ENV = "WHISPER_PROBE_DEBUG"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line like every other user error: one line, exit 2."""

    def error(self, message: str):
        self.exit(2, f"probe: error: {' '.join(message.split())}; see `{self.prog} --help`\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 1 (got {text!r})")
    return value


def _common_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", default=None,
                        help="hub id, local directory (transformers or CTranslate2), .pt file, or embedded name "
                             "(base, tiny.en); default: the embedded multilingual base model")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16")


def _store_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=None,
                        help="trace store folder (default: $WHISPER_PROBE_STORE or ~/.local/share/whisper-probe/store)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="probe", description="Introspection toolkit for OpenAI's Whisper.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"whisper-probe {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="decode audio with hooks and record a trace per input")
    parser.run_parser = run  # plugins add their options here (probe_addoption)
    run.add_argument("audio", nargs="*", help="audio files (wav, flac, mp3, ogg, m4a, ...)")
    _common_model_args(run)
    _store_arg(run)
    run.add_argument("--dataset", help="a datasets dataset: local folder (audiofolder), parquet, or hub name")
    run.add_argument("--dataset-config", default=None, help="dataset configuration, e.g. zh-CN")
    run.add_argument("--split", default="train")
    run.add_argument("--audio-column", default=None, help="the Audio column (found automatically if omitted)")
    run.add_argument("--limit", type=int, default=None, help="trace at most this many dataset rows")
    run.add_argument("--language", default=None, help="language code (en, zh, ...); default: detect")
    run.add_argument("--task", default="transcribe", help="transcribe or translate (to English)")
    run.add_argument("--timestamps", action="store_true", help="decode with timestamp tokens")
    run.add_argument("--num-beams", type=int, default=1, help="beam search width (1 = greedy)")
    run.add_argument("--max-new-tokens", type=_positive_int, default=None, help="stop each window after this many tokens")
    run.add_argument("--batch-size", type=int, default=1, help="clips decoded together in one generate() call")
    decoding = run.add_argument_group(
        "long-form and fallback decoding (as openai-whisper / faster-whisper name them; the defaults are"
        " transformers': greedy, no fallback, no conditioning)")
    decoding.add_argument("--temperature", type=_temperatures, default=None,
                          help="a temperature, or a comma list to fall back through, e.g. 0,0.2,0.4,0.6,0.8,1")
    decoding.add_argument("--compression-ratio-threshold", type=float, default=None,
                          help="retry a window whose token zlib ratio is above this (transformers' measure; ~1.35)")
    decoding.add_argument("--logprob-threshold", type=float, default=None,
                          help="retry a window whose average log-probability is below this (e.g. -1.0)")
    decoding.add_argument("--no-speech-threshold", type=float, default=None,
                          help="skip a window whose no-speech probability is above this and logprob below its threshold")
    decoding.add_argument("--condition-on-previous-text", action=argparse.BooleanOptionalAction, default=None,
                          help="give each window the previous window's text as a <|startofprev|> prompt")
    decoding.add_argument("--initial-prompt", default=None, help="text prompt before the first window (prompt_ids)")
    decoding.add_argument("--prefix", default=None,
                          help="text the transcript must start with (forced after the prompt; clips ≤ 30 s,"
                               " no timestamps)")
    decoding.add_argument("--multilingual", action="store_true",
                          help="detect each window's language (faster-whisper's multilingual; default: once per clip)")
    decoding.add_argument("--seed", type=int, default=None, help="torch.manual_seed before decoding (sampled attempts)")
    decoding.add_argument("--openai-defaults", action="store_true",
                          help="openai-whisper's transcribe() settings: temperature 0,0.2,...,1.0, compression ratio"
                               " 1.35 (zlib of tokens, ~2.4 of text), logprob -1.0, no-speech 0.6, conditioning on")
    run.add_argument("--channel", default="mix", help="mix (downmix), left or right")
    run.add_argument("--points", action="append", default=[],
                     help="hook points for the activations plugin (globs, comma-separated or repeated)")
    run.add_argument("-p", dest="plugins", action="append", default=[],
                     help="load a plugin (module name or .py file), or disable one with no:NAME")
    run.add_argument("--name", default=None, help="trace name (default: the audio file name)")
    run.add_argument("--no-store", action="store_true", help="decode and print only; record no trace")
    run.add_argument("--dry-run", action="store_true",
                     help="print how many bytes each record will take, then stop before decoding")
    run.add_argument("--json", action="store_true", help="print one JSON object per input")

    points = sub.add_parser("points", help="list hook points with their shapes")
    _common_model_args(points)
    points.add_argument("--json", action="store_true")
    points.add_argument("pattern", nargs="?", default="*", help="glob to filter, e.g. 'decoder.blocks.*.cross_attn.*'")

    plugins = sub.add_parser("plugins", help="list plugins and the hooks each implements")
    plugins.add_argument("-p", dest="plugins", action="append", default=[])
    plugins.add_argument("--json", action="store_true")

    ls = sub.add_parser("ls", help="list traces in the store")
    _store_arg(ls)
    ls.add_argument("--json", action="store_true")

    show = sub.add_parser("show", help="show a trace's manifest and word timings")
    show.add_argument("trace", help="trace id, unique id prefix, or name")
    _store_arg(show)
    show.add_argument("--json", action="store_true")

    rm = sub.add_parser("rm", help="delete traces")
    rm.add_argument("traces", nargs="+")
    _store_arg(rm)

    convert = sub.add_parser("convert", help="write a transformers directory from a CTranslate2 dir or .pt file")
    convert.add_argument("src")
    convert.add_argument("dest")

    dashboard = sub.add_parser("dashboard", help="serve the Streamlit dashboard for a store")
    _store_arg(dashboard)
    dashboard.add_argument("--port", type=int, default=8501)
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("-p", dest="plugins", action="append", default=[], metavar="PLUGIN",
                           help="also show this plugin's pages and figures (module or .py file; no:NAME hides one)")

    export = sub.add_parser("export", help="export a trace for lectures")
    export.add_argument("trace")
    _store_arg(export)
    export.add_argument("--format", "-f", default="html", choices=["html", "png", "svg", "pdf", "json", "csv", "zip"])
    export.add_argument("--out", "-o", default=None, help="output file or folder")
    export.add_argument("--views", nargs="*", default=None, help="figures to include (default: all)")
    export.add_argument("--windows", default=None, metavar="LIST",
                        help="30 s windows of long audio to draw per-window figures for, numbered from 1 as the "
                             "dashboard shows them: all, or e.g. 1,3-5 (default: all of up to 8 windows; of more, "
                             "the first 4 and those retried, looping or skipped)")
    export.add_argument("-p", dest="plugins", action="append", default=[], metavar="PLUGIN",
                        help="also export this plugin's figures and sections (module or .py file; no:NAME leaves "
                             "one out)")

    imp = sub.add_parser("import", help="import a trace bundle (.zip) into the store")
    imp.add_argument("bundle")
    _store_arg(imp)
    return parser


def _temperatures(text: str) -> float | tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one temperature")
    return values if len(values) > 1 else values[0]


def decode_options(args):
    """DecodeOptions from ``probe run`` arguments (``--openai-defaults`` first, explicit flags win)."""
    from probe.runner import decode_options

    fallback = {key: value for key, value in (("temperature", args.temperature),
                                              ("compression_ratio_threshold", args.compression_ratio_threshold),
                                              ("logprob_threshold", args.logprob_threshold),
                                              ("no_speech_threshold", args.no_speech_threshold),
                                              ("condition_on_prev_tokens", args.condition_on_previous_text))
                if value is not None}
    return decode_options(args.openai_defaults, language=args.language, task=args.task, timestamps=args.timestamps,
                          num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                          initial_prompt=args.initial_prompt, prefix=args.prefix, multilingual=args.multilingual,
                          seed=args.seed, **fallback)


def _version() -> str:
    from probe import __version__

    return __version__


def _split_points(values: list[str]) -> list[str]:
    return [p.strip() for value in values for p in value.split(",") if p.strip()]


def _inputs(args):
    """(clip iterator, count or None) for files or a dataset."""
    from probe.audio import dataset_size, existing_file, iter_dataset

    if args.dataset and args.audio:
        raise ProbeError("give audio files or --dataset, not both")
    if args.dataset:
        ds_args = dict(config=args.dataset_config, split=args.split, audio_column=args.audio_column, limit=args.limit)
        return iter_dataset(args.dataset, **ds_args), dataset_size(args.dataset, **ds_args)
    if not args.audio:
        raise ProbeError("no audio given; pass audio files (e.g. probe run examples/en_fox.flac) or --dataset DIR")
    for path in args.audio:
        existing_file(path)  # a mistyped path fails now, not after the model has loaded
    channel = int(args.channel) if str(args.channel).isdigit() else args.channel
    from probe.runner import clips

    return clips(args.audio, channel), len(args.audio)


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
    clips, count = _inputs(args)
    loaded = runner.load(args.model, device=args.device, dtype=args.dtype)
    if loaded.note:
        print(f"probe: {loaded.note}", file=sys.stderr)
    options = decode_options(args)
    pm, plugin_options = args.plugin_manager, args.plugin_options.values(args)
    tracer = Tracer(loaded, pm, options, points=_split_points(args.points), plugin_options=plugin_options,
                    progress=sys.stderr.isatty())
    if args.dry_run:
        return _dry_run(tracer, clips, args.json)
    store = None if args.no_store else Store(args.store)
    show_progress = args.dataset is not None and sys.stderr.isatty()
    clips = tqdm(clips, total=count, disable=not show_progress, unit="clip")
    for run, trace in runner.trace_clips(tracer, clips, store, args.name, batch_size=args.batch_size):
        result = _result_json(run, loaded, trace)
        if args.json:
            print(json.dumps(result, ensure_ascii=False), flush=True)
        else:
            _print_result(result, sys.stdout)
    return 0


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

    trace = Store(args.store, create=False).resolve(args.trace)
    if args.plugins:
        contributions.configure(args.plugins)
        contributions.current()  # a bad -p fails here, in one line
    for path in export_trace(trace, args.format, out=args.out, views=args.views, windows=args.windows):
        print(path)
    return 0


def cmd_import(args) -> int:
    from probe.export import import_bundle
    from probe.store import Store

    trace = import_bundle(Path(args.bundle), Store(args.store))
    print(f"imported {trace.id}")
    return 0


COMMANDS = {"run": cmd_run, "points": cmd_points, "plugins": cmd_plugins, "ls": cmd_ls, "show": cmd_show,
            "rm": cmd_rm, "convert": cmd_convert, "dashboard": cmd_dashboard, "export": cmd_export,
            "import": cmd_import}


def plugin_refs(argv: list[str]) -> list[str]:
    """The ``-p`` values of a ``probe run`` command line (``--no-store`` disables the built-ins), read
    before parsing so that the plugins' own options (``probe_addoption``) can be parsed and listed."""
    from probe.plugin_manager import DEFAULT_PLUGINS

    refs, tokens = [], iter(argv)
    for token in tokens:
        if token == "--":
            break
        if token == "-p":
            refs.append(next(tokens, ""))
        elif token.startswith("-p") and not token.startswith("--"):
            refs.append(token[2:].lstrip("="))
    if "--no-store" in argv:
        refs += [f"no:{name}" for name in DEFAULT_PLUGINS if f"no:{name}" not in refs]
    return refs


def _with_plugin_options(parser: argparse.ArgumentParser, argv: list[str]):
    """For ``probe run``: the plugin manager of its ``-p`` options, and its plugins' options added to
    the ``run`` parser."""
    from probe.plugin_manager import get_plugin_manager
    from probe.plugin_options import collect_options

    pm = get_plugin_manager(plugins=plugin_refs(argv))
    options = collect_options(pm)
    options.add_to(parser.run_parser)
    return pm, options


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    debug = "--debug" in argv or bool(os.environ.get(DEBUG_ENV))
    try:
        pm = options = None
        if next((token for token in argv if not token.startswith("-")), None) == "run":
            pm, options = _with_plugin_options(parser, argv)
        args = parser.parse_args(argv)
        args.plugin_manager, args.plugin_options = pm, options
        debug = args.debug or debug
        return COMMANDS[args.command](args)
    except ProbeError as exc:
        if debug:
            raise
        print(f"probe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("probe: interrupted; nothing was written for the unfinished input", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
