"""The dashboard's Dataset view on a store of many traces: how long its script runs.

Writes ``--traces`` minimal dataset traces (a manifest as ``probe run --dataset ... --text-column``
writes it, with ``metrics``, ``reference`` and ``dataset``; no records, no audio) into ``--store``
unless it holds them already, then times, in this process, with Streamlit's AppTest (sidebar +
page, as a browser session runs them): the summary index built from every manifest, the first run
of the page (index on disk, caches cold), warm reruns, a filter, a text search, picking a row (the
sidebar takes that trace), and a rerun once the sidebar's 5 s trace list has expired.  A browser
adds drawing the table and the charts on top of these.

    .venv/bin/python benchmarks/dataset_view.py --store /tmp/store10k --traces 10000 --out /tmp/dataset-view.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = "the quick brown fox jumps over lazy dog speech model window token layer head".split()


def write_store(path: Path, traces: int) -> None:
    """``traces`` traces, one in ten without a reference, in English, German and Chinese."""
    from probe.store import Store

    store = Store(path)
    rng = random.Random(0)
    for row in range(traces - len(store)):
        language = rng.choice(["en", "en", "en", "de", "zh"])
        transcript = " ".join(rng.choices(WORDS, k=rng.randint(5, 20)))
        metrics = {"duration": round(rng.uniform(1, 20), 2), "windows": 1, "tokens": 20,
                   "avg_logprob": round(-rng.random(), 3), "compression_ratio": 1.3, "no_speech_probability": 0.02,
                   "language_probability": 0.9, "language": language}
        fields = {"model": {"id": "embedded:base"}, "language": language, "decode": {"task": "transcribe"},
                  "transcript": transcript, "metrics": metrics,
                  "dataset": {"name": "bench", "config": None, "split": rng.choice(["train", "test"]), "row": row,
                              "key": str(row), "key_column": None}}
        if row % 10:
            wer = rng.random() * 0.8
            metrics.update(wer=wer, cer=wer * 0.6, error_rate=wer * 0.6 if language == "zh" else wer,
                           headline="cer" if language == "zh" else "wer", substitutions=1, deletions=0,
                           insertions=0, reference_words=10)
            fields["reference"] = {"text": " ".join(rng.choices(WORDS, k=rng.randint(5, 20))), "column": "text"}
        with store.writer(f"row{row}") as writer:
            writer.update_manifest(**fields)


def timed(what: str, step, results: dict) -> None:
    started = time.perf_counter()
    done = step()
    results[what] = round(time.perf_counter() - started, 3)
    if getattr(done, "exception", None):  # an AppTest run that failed
        raise SystemExit(f"{what}: {done.exception[0].value}")
    print(f"{what}: {results[what]:.2f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="kept between runs: traces are written once")
    parser.add_argument("--traces", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the timings")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    results: dict = {"traces": args.traces}
    timed("write traces", lambda: write_store(args.store, args.traces), results)

    from streamlit.testing.v1 import AppTest

    from probe.store import Store
    from probe.summary import index_path, summary_table

    shutil.rmtree(index_path(Store(args.store)).parent, ignore_errors=True)
    timed("summary index built from every manifest", lambda: summary_table(Store(args.store)), results)
    timed("summary_table, warm", lambda: summary_table(Store(args.store)), results)
    timed("Store.list() (every manifest)", lambda: Store(args.store).list(), results)
    os.environ["WHISPER_PROBE_STORE"] = str(args.store)
    app = AppTest.from_file(str(ROOT / "dashboards" / "app.py"), default_timeout=300).switch_page("views/dataset.py")
    timed("first run (imports, caches cold)", app.run, results)
    for attempt in (1, 2):
        timed(f"rerun {attempt}", app.run, results)
    timed("filter: language zh", lambda: app.multiselect(key="dataset_language").select("zh").run(), results)
    timed("search 'fox'", lambda: app.text_input(key="dataset_search").input("fox").run(), results)
    table = next(frame.key for frame in app.dataframe if (frame.key or "").startswith("dataset_table:"))
    for row in (0, 1):  # the first pick also imports the word diff's text normaliser (transformers)
        app.session_state[table] = {"selection": {"rows": [row], "columns": [], "cells": []}}
        timed(f"pick row {row}", app.run, results)
    time.sleep(5.5)
    timed("rerun after the sidebar's trace list expired", app.run, results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
