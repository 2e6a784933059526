"""``probe summary``: one row per trace of a store (:mod:`probe.summary`) printed as a text table
with the results across the traces below it, or as JSON or CSV on stdout, or written to a Parquet
file or a self-contained HTML page (sortable by clicking a column's header; nothing loaded from the
network).  An empty store, or a ``--where`` that matches nothing, is an empty summary (exit 0)."""

from __future__ import annotations

import datetime
import difflib
import json
import sys
from pathlib import Path

from probe.errors import OptionError
from probe.export.markup import PAGE_STYLE, esc

# what the text table shows unless --columns says otherwise (plugin columns and errors follow)
TEXT_COLUMNS = ("id", "language", "duration", "wer", "cer", "avg_logprob", "compression_ratio",
                "no_speech_probability", "interventions", "transcript")
TRANSCRIPT_WIDTH = 48


def cmd_summary(args) -> int:
    from probe import summary
    from probe.store import Store

    store = Store(args.store, create=False)
    pm = summary.plugin_manager(args.plugins)
    table = summary.summary_table(store, pm, where=args.where)
    shown = table[_columns(args.columns, table)] if args.columns else table
    if args.csv:
        shown.to_csv(sys.stdout, index=False)
        return 0
    reduced = summary.summary_reduce(table, pm)
    if args.json:
        print(json.dumps({"rows": summary.records(shown), "reduce": reduced}, indent=1, ensure_ascii=False))
    elif args.parquet:
        print(_write(args.parquet, lambda stage: _write_parquet(shown, reduced, stage)))
    elif args.html:
        page = summary_page(shown, reduced, store.path, args.where)
        print(_write(args.html, lambda stage: stage.write_text(page, encoding="utf-8")))
    elif not len(table):
        print(f"no traces match --where {args.where!r} in {store.path}" if args.where and len(store)
              else f"no traces in {store.path}; record some with `probe run --dataset DIR` or `probe run AUDIO`")
    else:
        print(text_table(shown if args.columns else table[_text_columns(table)]))
        print()
        print("\n".join(describe_reduce(reduced)))
    return 0


def _columns(text: str, table) -> list[str]:
    """``--columns a,b,c``: those columns, in that order; an unknown one is a one-line error."""
    wanted = [name.strip() for name in text.split(",") if name.strip()]
    names = [str(c) for c in table.columns]
    for name in wanted:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            raise OptionError(f"the summary has no column {name!r}" + (f" (did you mean {', '.join(close)}?)" if close
                                                                       else "") + f"; its columns: {', '.join(names)}")
    if not wanted:
        raise OptionError("--columns is empty; give column names separated by commas, e.g. id,wer,transcript")
    return wanted


def _text_columns(table) -> list[str]:
    """The text table's default columns: :data:`TEXT_COLUMNS` and the plugins', without empty ones."""
    plugin_columns = list(table.attrs.get("plugin_columns", []))
    candidates = [*TEXT_COLUMNS, *plugin_columns, "error"]
    return [c for c in candidates if c in table and (c == "id" or table[c].notna().any())
            and not (c == "interventions" and not table[c].fillna(False).any())]


def text_table(table) -> str:
    """Aligned columns; numbers to 3 decimals and right-aligned, long transcripts cut."""
    import pandas as pd

    header = [str(c) for c in table.columns]
    numeric = [pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])
               for c in table.columns]
    from probe.summary import _cell

    cells = [[_text_cell(_cell(value), column) for value, column in zip(values, header)]
             for values in table.itertuples(index=False, name=None)]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(header)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if right else v.ljust(w)
                         for v, w, right in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(header)] + [line(row) for row in cells])


def _text_cell(value, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    text = " ".join(str(value).split())
    if column in ("transcript", "reference", "error") and len(text) > TRANSCRIPT_WIDTH:
        text = text[:TRANSCRIPT_WIDTH - 1] + "…"
    return text


def describe_reduce(reduced: dict) -> list[str]:
    """The results across the traces, one line for the core's and one per plugin."""
    core = reduced.get("core", {})
    parts = [f"{core.get('count', 0)} trace{'s' if core.get('count') != 1 else ''}"
             + (f" ({core['broken']} broken)" if core.get("broken") else "")]
    if core.get("with_reference"):
        rates = ", ".join(f"{name.upper()} {core[name]:.1%}" for name in ("wer", "cer") if core.get(name) is not None)
        parts.append(f"{core['with_reference']} with a reference: {rates} (weighted by reference words)")
    if core.get("avg_logprob") is not None:
        parts.append(f"mean avg logprob {core['avg_logprob']:.3f}")
    if core.get("total_duration") is not None:
        parts.append(f"{core['total_duration']:.1f} s of audio")
    lines = ["; ".join(parts)]
    lines += [f"{plugin}: {json.dumps(result, ensure_ascii=False)}" for plugin, result in reduced.items()
              if plugin != "core"]
    return lines


def _write(path: str, write) -> Path:
    """Write ``path`` through ``write(stage)``, published by one rename when complete."""
    from probe.publish import staged

    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise OptionError(f"{target} is a folder; give a file name")
    try:
        with staged(target, is_dir=False) as stage:
            write(stage)
    except OSError as err:
        raise OptionError(f"could not write {target}: {err.strerror or err}; give a path in a writable folder") \
            from err
    return target


def _write_parquet(table, reduced: dict, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = {**(arrow.schema.metadata or {}), b"whisper_probe.reduce": json.dumps(reduced).encode()}
    pq.write_table(arrow.replace_schema_metadata(meta), path)


SORT_STYLE = """
main{max-width:none}
table.summary th{cursor:pointer;white-space:nowrap;position:sticky;top:0;background:#fff}
table.summary td{white-space:nowrap}table.summary td.text,table.summary td.error{white-space:normal}
table.summary th[data-order=asc]::after{content:" \\25B2"}table.summary th[data-order=desc]::after{content:" \\25BC"}
table.summary td.text{min-width:16em;max-width:32em}
table.summary td.error{color:#8b1a1a}
.results td:first-child{color:#555}
"""

# click a header: sort the rows by that column (numbers by value, the rest as text, empty cells last)
SORT_SCRIPT = """
(function(){
document.querySelectorAll('table.summary').forEach(function(table){
var heads=[].slice.call(table.tHead.rows[0].cells),body=table.tBodies[0];
function key(td){var v=td.getAttribute('data-v');return v===null?td.textContent:parseFloat(v);}
heads.forEach(function(th,col){th.addEventListener('click',function(){
var up=th.dataset.order!=='asc';heads.forEach(function(h){delete h.dataset.order;});
th.dataset.order=up?'asc':'desc';
var rows=[].slice.call(body.rows);
rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
if(x===''||y===''){return x===y?0:(x===''?1:-1);}
var c=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));
return up?c:-c;});
rows.forEach(function(r){body.appendChild(r);});});});});
})();
"""


def summary_page(table, reduced: dict, store_path: Path, where: str | None = None) -> str:
    """The summary as one self-contained HTML page: the results across the traces, then the table
    (click a header to sort).  A trace is named by its id: ``probe export ID`` or the dashboard opens it."""
    import probe
    from probe.summary import _cell

    today = datetime.date.today().isoformat()
    header = "".join(f"<th>{esc(c)}</th>" for c in table.columns)
    columns = [str(c) for c in table.columns]
    body = "".join("<tr>" + "".join(_html_cell(_cell(v), c) for v, c in zip(values, columns)) + "</tr>"
                   for values in table.itertuples(index=False, name=None))
    results = "".join(_results_table(plugin, result) for plugin, result in reduced.items())
    meta = " · ".join(part for part in (f"{len(table)} trace{'s' if len(table) != 1 else ''}",
                                        f"where {where}" if where else None, f"made {today}") if part)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>Summary of {esc(store_path.name)} · whisper-probe</title>"
            f"<style>{PAGE_STYLE}{SORT_STYLE}</style></head>"
            f"<body><main><header><h1>Summary of {esc(store_path.name)}</h1><p class=\"meta\">{esc(meta)}</p></header>"
            f"<section id=\"results\"><h2>Across the traces</h2>{results}</section>"
            "<section id=\"traces\"><h2>Traces</h2><p class=\"hint\">Click a column's header to sort by it. "
            "Open a trace by its id: <code>probe export ID</code>, or pick it in <code>probe dashboard</code>.</p>"
            f"<div class=\"scroll\"><table class=\"summary\"><thead><tr>{header}</tr></thead>"
            f"<tbody>{body}</tbody></table></div></section>"
            f"<footer>Made by whisper-probe {esc(probe.__version__)} on {esc(today)} from the store "
            f"{esc(store_path)}.</footer></main><script>{SORT_SCRIPT}</script></body></html>\n")


def _html_cell(value, column: str) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, (int, float)):
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        return f'<td class="num" data-v="{value!r}">{esc(shown)}</td>'
    kind = ' class="text"' if column in ("transcript", "reference") else ' class="error"' if column == "error" else ""
    return f"<td{kind}>{esc(value)}</td>"


def _results_table(plugin: str, result: dict) -> str:
    def shown(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "–" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    rows = "".join(f"<tr><td>{esc(key)}</td><td>{esc(shown(value))}</td></tr>" for key, value in result.items())
    title = "whisper-probe" if plugin == "core" else f"plugin {plugin}"
    return f'<h3>{esc(title)}</h3><table class="results">{rows}</table>'
