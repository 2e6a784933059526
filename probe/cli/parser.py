"""The ``probe`` command line's grammar: every subcommand and option (``build_parser``), how a bad
command line is reported (one line, exit 2), and turning ``probe run``'s options into
:class:`~probe.tracer.DecodeOptions`."""

from __future__ import annotations

import argparse

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
    run.add_argument("--text-column", default=None,
                     help="the dataset column holding each row's reference text (e.g. transcription): WER/CER per trace")
    run.add_argument("--key-column", default=None,
                     help="a dataset column of stable row ids for the deterministic trace ids (default: row position)")
    run.add_argument("--streaming", action="store_true",
                     help="read a local dataset row by row as an IterableDataset (Hub datasets always stream)")
    scale = run.add_argument_group("dataset engines (a dataset run resumes: rows already in the store are skipped)")
    scale.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this process (default); ray: Ray Data, an actor pool of tracers")
    scale.add_argument("--address", default=None, help="with --engine ray: a running Ray cluster (default: start a local one)")
    scale.add_argument("--workers", type=_positive_int, default=1, help="with --engine ray: tracer actors (one model each)")
    scale.add_argument("--gpus-per-worker", type=float, default=0.0, help="with --engine ray: GPUs per actor (e.g. 1)")
    run.add_argument("--language", default=None, help="language code or name (en, zh, chinese, ...); default: detect")
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
    run.add_argument("--intervene", action="append", default=[], metavar="SPEC",
                     help="change the model while it decodes: a JSON file or inline JSON of interventions "
                          "(ablate heads, steer a point, local attention, block a time span; see "
                          "probe.interventions); repeatable")
    run.add_argument("--clean", default="auto", metavar="TRACE",
                     help="with --intervene: the clean trace of the same clip to measure the effect against "
                          "(id or name; default auto: the store's newest trace of this audio, model and decoding "
                          "options; none: measure nothing)")
    run.add_argument("-p", dest="plugins", action="append", default=[],
                     help="load a plugin (module name or .py file), or disable one with no:NAME")
    run.add_argument("--name", default=None, help="trace name (default: the audio file name)")
    run.add_argument("--no-store", action="store_true", help="decode and print only; record no trace")
    run.add_argument("--dry-run", action="store_true",
                     help="print how many bytes each record will take, then stop before decoding")
    run.add_argument("--json", action="store_true", help="print one JSON object per input")

    sweep = sub.add_parser("sweep", help="run one intervention family over every head, layer or k on a clip set")
    sweep.add_argument("audio", nargs="*", help="audio files (or --clips FILE, or --dataset DIR)")
    _common_model_args(sweep)
    _store_arg(sweep)
    sweep.add_argument("--clips", default=None, metavar="FILE",
                       help="JSON list of {\"file\", \"text\" (reference), \"group\", \"language\"}, files relative "
                            "to it (e.g. examples/clips.json)")
    sweep.add_argument("--dataset", help="a datasets dataset: local folder (audiofolder), parquet, or hub name")
    sweep.add_argument("--dataset-config", default=None)
    sweep.add_argument("--split", default="train")
    sweep.add_argument("--audio-column", default=None)
    sweep.add_argument("--limit", type=int, default=None, help="at most this many dataset rows")
    sweep.add_argument("--family", default="heads", choices=("heads", "layers", "local"),
                       help="heads: ablate each head in turn; layers: every head of one layer at a time; "
                            "local: encoder self-attention within ±k frames (default: heads)")
    sweep.add_argument("--attention", default="decoder.self_attn",
                       help="heads/layers: encoder.self_attn, decoder.self_attn or decoder.cross_attn")
    sweep.add_argument("--layers", type=_int_list, default=None, metavar="LIST", help="e.g. 0,2-4 (default: all)")
    sweep.add_argument("--heads", type=_int_list, default=None, metavar="LIST", help="heads family (default: all)")
    sweep.add_argument("--k", type=_int_list, default=None, metavar="LIST",
                       help="local family: frames either side (default: 5,10,20,40,75)")
    sweep.add_argument("--per-layer", action="store_true", help="local family: also limit each layer alone")
    sweep.add_argument("--mean-of", action="append", default=[], metavar="TRACE",
                       help="heads/layers: hold heads at their mean over these traces instead of zero")
    sweep.add_argument("--metric", default="delta_logprob", metavar="METRIC",
                       help="what the table is sorted by and the heatmap shows: delta_logprob, wer, ref_wer, "
                            "ref_wer_change, tokens or tokens_change (default: delta_logprob)")
    sweep.add_argument("--group", default=None, help="only the clips of this group of --clips (e.g. nonspeech)")
    sweep.add_argument("--top", type=_positive_int, default=10, help="table rows printed (default: 10)")
    sweep.add_argument("--name", default=None, help="the sweep's name (its id is the name and a hash)")
    sweep.add_argument("--batch-size", type=_positive_int, default=4, help="clips decoded together (default: 4)")
    sweep.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this process (default); ray: the cells shared out to Ray Data actors")
    sweep.add_argument("--address", default=None, help="with --engine ray: a running Ray cluster (default: a local one)")
    sweep.add_argument("--workers", type=_positive_int, default=1, help="with --engine ray: actors (one model each)")
    sweep.add_argument("--gpus-per-worker", type=float, default=0.0, help="with --engine ray: GPUs per actor")
    sweep.add_argument("--language", default=None, help="language code or name; default: detect")
    sweep.add_argument("--task", default="transcribe")
    sweep.add_argument("--num-beams", type=int, default=1)
    sweep.add_argument("--max-new-tokens", type=_positive_int, default=None,
                       help="stop each window after this many tokens (bounds a cell that never ends)")
    sweep.add_argument("--json", action="store_true", help="print the table as JSON")

    points = sub.add_parser("points", help="list hook points with their shapes")
    _common_model_args(points)
    points.add_argument("--json", action="store_true")
    points.add_argument("pattern", nargs="?", default="*", help="glob to filter, e.g. 'decoder.blocks.*.cross_attn.*'")

    heads = sub.add_parser(
        "heads", help="rank cross-attention heads (--alignment: by how well each one times words)",
        description="--alignment: teacher-force each clip's transcript, time its words from every cross-attention "
                    "head alone with word timing's own DTW, and rank the heads by the error of the word starts "
                    "against reference times. Reference times come from --times for your clips; with no clips, "
                    "the built-in speech set is spoken by espeak-ng (16 English lecture sentences, or --text/--texts) "
                    "and espeak-ng's word events are the reference. The model defaults to --write DIR if given.")
    heads.add_argument("clips", nargs="*", metavar="CLIP",
                       help="audio files of up to 30 s whose word times --times gives; none: the espeak-ng speech set")
    heads.add_argument("--alignment", action="store_true", help="rank heads by word-start error (required)")
    _common_model_args(heads)
    heads.add_argument("--times", metavar="FILE",
                       help='reference word times of the clips: JSON {"CLIP": [{"word": ..., "start": s}, ...]} or '
                            "CSV with columns clip,word,start[,end]")
    sentences = heads.add_mutually_exclusive_group()
    sentences.add_argument("--text", action="append", default=[],
                           help="a sentence for espeak-ng to speak instead of the built-in ones (repeatable)")
    sentences.add_argument("--texts", metavar="FILE", help="a file of sentences for espeak-ng to speak, one a line")
    heads.add_argument("--language", default="en", help="language of the clips (the speech set is English)")
    heads.add_argument("--top", type=_positive_int, default=8,
                       help="how many of the best heads form the top set and are written (default 8)")
    heads.add_argument("--write", metavar="DIR",
                       help="write the top heads as alignment_heads into DIR/generation_config.json (a local "
                            "transformers model directory; other keys kept), so `probe run --model DIR` uses them")
    heads.add_argument("--json", action="store_true")

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

    summary = sub.add_parser("summary", help="one row per trace of the store: WER/CER, confidence, plugin columns",
                             description="One row per trace (newest first) with its model, language, reference, "
                                         "WER/CER, average log-probability, compression ratio, no-speech and "
                                         "language probability and the columns plugins add, then the results "
                                         "across the traces. Kept in an index in the store, so a store of "
                                         "thousands of traces answers at once.")
    _store_arg(summary)
    summary.add_argument("--where", metavar="EXPR", default=None,
                         help="only the rows where this holds, a pandas query over the columns, e.g. "
                              "\"wer > 0.3 and language == 'zh'\" (a column with dots in backticks)")
    summary.add_argument("--columns", metavar="A,B,C", default=None,
                         help="only these columns, in this order (default: all; the text table shows a few)")
    summary_out = summary.add_mutually_exclusive_group()
    summary_out.add_argument("--json", action="store_true", help='print {"rows": [...], "reduce": {...}}')
    summary_out.add_argument("--csv", action="store_true", help="print the rows as CSV")
    summary_out.add_argument("--parquet", metavar="FILE", default=None, help="write the rows to a Parquet file")
    summary_out.add_argument("--html", metavar="FILE", default=None,
                             help="write a self-contained HTML page (sortable table and the results)")
    summary.add_argument("-p", dest="plugins", action="append", default=[], metavar="PLUGIN",
                         help="also ask this plugin for columns and results (module or .py file; no:NAME leaves "
                              "one out)")

    convert = sub.add_parser("convert", help="write a transformers directory from a CTranslate2 dir or .pt file")
    convert.add_argument("src")
    convert.add_argument("dest")

    dashboard = sub.add_parser("dashboard", help="serve the Streamlit dashboard for a store")
    _store_arg(dashboard)
    dashboard.add_argument("--port", type=int, default=8501)
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("-p", dest="plugins", action="append", default=[], metavar="PLUGIN",
                           help="also show this plugin's pages and figures (module or .py file; no:NAME hides one)")

    export = sub.add_parser("export", help="export a trace (or a sweep) for lectures")
    export.add_argument("trace", help="trace id, unique prefix or name; or a sweep id (`probe sweep` prints it)")
    _store_arg(export)
    export.add_argument("--format", "-f", default="html", metavar="FORMAT", type=_export_formats,
                        help="html, png, svg, pdf, json, csv or zip; several comma-separated (e.g. html,pdf,png) "
                             "are written into one folder with every figure drawn once (default: html)")
    export.add_argument("--out", "-o", default=None, help="output file or folder")
    export.add_argument("--views", nargs="*", default=None,
                        help="figures to include (default: all); for a sweep, the metrics to draw")
    export.add_argument("--group", default=None, help="a sweep: only the clips of this group")
    export.add_argument("--windows", default=None, metavar="LIST",
                        help="30 s windows of long audio to draw per-window figures for, numbered from 1 as the "
                             "dashboard shows them: all, or e.g. 1,3-5 (default: all of up to 8 windows; of more, "
                             "the first 4 and those retried, looping or skipped)")
    export.add_argument("--time-range", default=None, metavar="START:END",
                        help="seconds of the clip the figures show, e.g. 2.5:10: passed to every figure that can "
                             "show a span, and only the 30 s windows overlapping it are drawn")
    export.add_argument("-p", dest="plugins", action="append", default=[], metavar="PLUGIN",
                        help="also export this plugin's figures and sections (module or .py file; no:NAME leaves "
                             "one out)")

    imp = sub.add_parser("import", help="import a trace bundle (.zip) into the store")
    imp.add_argument("bundle")
    _store_arg(imp)
    return parser


def _int_list(text: str) -> list[int]:
    """``0,2-4`` → [0, 2, 3, 4]."""
    found = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            first, _, last = part.partition("-")
            found += list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers such as 0,2-4, got {text!r}") from None
    if not found:
        raise argparse.ArgumentTypeError(f"expected whole numbers such as 0,2-4, got {text!r}")
    return found


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


def _export_formats(value: str) -> str:
    """``--format``: one export format or several, comma-separated; an unknown one is argparse's
    one-line "invalid choice" before any store is opened."""
    from probe.export import FORMATS

    for name in (part.strip().lower() for part in value.split(",")):
        if name not in FORMATS:
            raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {', '.join(FORMATS)}; "
                                             "several comma-separated)")
    return value
