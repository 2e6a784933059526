"""``probe sweep``: run (or resume) one intervention family over a clip set into the store
(:mod:`probe.sweep`), then print its table and write its heatmap and CSV beside it."""

from __future__ import annotations

import json
import sys

from probe.errors import OptionError, ProbeError


def _clip_set(args) -> list:
    """The sweep's clips: files, a clips JSON file or a dataset (one of them)."""
    from probe import sweep
    from probe.audio import existing_file, iter_dataset
    from probe.runner import clips

    given = [bool(args.audio), args.clips is not None, args.dataset is not None]
    if sum(given) > 1:
        raise ProbeError("give audio files, --clips FILE or --dataset DIR, one of them")
    if args.clips is not None:
        return sweep.clips_from_file(args.clips)
    if args.dataset is not None:
        found = iter_dataset(args.dataset, config=args.dataset_config, split=args.split,
                             audio_column=args.audio_column, limit=args.limit)
        return [sweep.SweepClip(clip) for clip in found]
    if not args.audio:
        raise ProbeError("no audio given; pass audio files, --clips FILE (e.g. examples/clips.json) or --dataset DIR")
    for path in args.audio:
        existing_file(path)
    return [sweep.SweepClip(clip) for clip in clips(args.audio)]


def cmd_sweep(args) -> int:
    from probe import runner, sweep
    from probe.figures.base import save
    from probe.figures.sweep import sweep_heatmap
    from probe.store import Store

    if args.metric not in sweep.METRICS:
        raise OptionError(f"--metric {args.metric!r}: use one of {', '.join(sweep.METRICS)}")
    unused = [flag for flag, given, used in (
        ("--heads", args.heads, args.family == "heads"), ("--k", args.k, args.family == "local"),
        ("--per-layer", args.per_layer, args.family == "local"), ("--mean-of", args.mean_of, args.family != "local"))
        if given and not used]
    if unused:
        raise OptionError(f"{unused[0]} does not apply to --family {args.family}; leave it out")
    from probe.dataset_runs.run import check_engine

    check_engine(args.engine, args.address, args.workers, args.gpus_per_worker)
    spec = sweep.spec_from_args(args.family, args.attention, args.layers, args.heads, args.k, args.per_layer,
                                args.mean_of)
    store = Store(args.store)
    clip_set = _clip_set(args)
    _check_choices(args, clip_set)
    loaded = runner.load(args.model, device=args.device, dtype=args.dtype)
    sweep.cells(spec, loaded.model.config)  # a head or layer out of range: before decoding anything
    options = runner.decode_options(False, language=args.language, task=args.task, num_beams=args.num_beams,
                                    max_new_tokens=args.max_new_tokens)
    on_ray = None if args.engine == "local" else sweep.RayCells(
        args.model, args.device, args.dtype, args.workers, args.gpus_per_worker, args.address)
    done = sweep.run_sweep(loaded, spec, clip_set, store, options, name=args.name, batch_size=args.batch_size,
                           log=lambda line: print(f"probe: {line}", file=sys.stderr, flush=True), ray=on_ray)
    table = done.table(args.group)
    suffix = "" if args.group is None else f"-{args.group}"
    path = save(sweep_heatmap(done, args.metric, args.group), done.path / f"heatmap-{args.metric}{suffix}.png")
    from probe.export.sweep import write_table_csv

    csv_path = write_table_csv(table, done.path / f"table{suffix}.csv")
    if args.json:
        print(json.dumps({"sweep": done.id, "path": str(done.path), "table": table}, ensure_ascii=False))
        return 0
    print(f"sweep {done.id}  ({done.path})")
    print(format_table(table, args.metric, args.top))
    print(f"heatmap: {path}\ntable: {csv_path}")
    return 0


def _check_choices(args, clip_set: list) -> None:
    """What can only be read once the clips are known, checked before the model loads: the
    ``--group`` exists, a reference metric has references."""
    groups = sorted({clip.group for clip in clip_set if clip.group})
    if args.group is not None and args.group not in groups:
        raise OptionError(f"--group {args.group}: the clips have {'groups ' + ', '.join(groups) if groups else 'no groups'}"
                          " (groups come from --clips FILE)")
    if args.metric.startswith("ref_wer") and not any(clip.text for clip in clip_set):
        raise OptionError(f"--metric {args.metric} needs reference texts; give --clips FILE with a \"text\" per clip")


def format_table(table: list[dict], metric: str, top: int) -> str:
    """The clean cell, then the ``top`` cells that ``metric`` says did the most harm, as text."""
    from probe.figures.sweep import value_text
    from probe.sweep import CLEAN, METRICS

    worse_up = METRICS[metric][1] or metric == "wer"
    ranked = sorted((row for row in table if row["cell"] != CLEAN and row.get(metric) is not None),
                    key=lambda row: row[metric], reverse=worse_up)[:max(top, 0)]
    clean = [row for row in table if row["cell"] == CLEAN]
    columns = ["cell", "delta_logprob", "wer", "ref_wer", "tokens"]
    lines = [f"{'cell':<10} {'Δ log-prob/token':>16} {'WER vs clean':>12} {'WER vs ref':>10} {'tokens/clip':>11}"]
    for row in clean + ranked:
        values = [row["cell"]] + [value_text(key, float("nan") if row.get(key) is None else row[key])
                                  for key in columns[1:]]
        lines.append(f"{values[0]:<10} {values[1]:>16} {values[2]:>12} {values[3]:>10} {values[4]:>11}")
    return "\n".join(lines)
