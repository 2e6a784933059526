"""Exporting a sweep (:mod:`probe.sweep`) for a lecture or a paper: ``probe export SWEEP_ID``.

- ``html``: one self-contained page — what was swept, on which clips and model, the heatmap of
  every metric the sweep has values for (inline PNG), the table of cells and each clip's clean
  transcript;
- ``png`` / ``svg`` / ``pdf``: the heatmaps as files (``heatmap-<metric>.<ext>``);
- ``csv``: ``table.csv`` (one row per cell) and ``rows.csv`` (one per cell and clip);
- ``json``: the sweep's description, table and rows in one file.
"""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import probe
from probe.errors import OptionError
from probe.export.markup import PAGE_STYLE, esc, today
from probe.export.writers import write_atomic

SWEEP_FORMATS = ("html", "png", "svg", "pdf", "csv", "json")
PAGE_DPI = 110


def shown_metrics(sweep, group: str | None = None) -> list[str]:
    """The metrics with a value in some cell (``ref_wer`` needs reference texts, for instance)."""
    from probe.sweep import METRICS

    table = sweep.table(group)
    return [m for m in METRICS if any(row.get(m) is not None for row in table if row["cell"] != "clean")]


def write_table_csv(table: list[dict], path: Path) -> Path:
    columns = list(dict.fromkeys(key for row in table for key in row))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=columns)
            writer.writeheader()
            writer.writerows(table)
    write_atomic(path, write)
    return path


def export_sweep(sweep, fmt: str, out: str | None = None, metrics: list[str] | None = None,
                 group: str | None = None) -> list[Path]:
    """Write ``sweep`` as each of ``fmt`` (comma-separated :data:`SWEEP_FORMATS`) into ``out`` (a
    folder; default ``./<sweep id>-export/``); returns the files written."""
    from probe.figures.base import figure_file
    from probe.figures.sweep import sweep_heatmap

    formats = list(dict.fromkeys(part.strip().lower() for part in fmt.split(",") if part.strip()))
    wrong = [f for f in formats if f not in SWEEP_FORMATS]
    if wrong:
        raise OptionError(f"--format {wrong[0]}: a sweep exports as {', '.join(SWEEP_FORMATS)}")
    chosen = metrics or shown_metrics(sweep, group)
    folder = Path(out if out is not None else f"{sweep.id}-export").expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise OptionError(f"--out {folder} is a file; a sweep is exported into a folder")
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    figures = {metric: sweep_heatmap(sweep, metric, group) for metric in chosen
               if any(f in formats for f in ("html", "png", "svg", "pdf"))}
    for ext in ("png", "svg", "pdf"):
        if ext in formats:
            for metric, fig in figures.items():
                path = folder / f"heatmap-{metric}.{ext}"
                data = figure_file(fig, ext, 200)
                write_atomic(path, lambda tmp, data=data: tmp.write_bytes(data))
                written.append(path)
    table = sweep.table(group)
    if "csv" in formats:
        written.append(write_table_csv(table, folder / "table.csv"))
        written.append(write_table_csv(sweep.rows(), folder / "rows.csv"))
    if "json" in formats:
        data = json.dumps({"sweep": sweep.id, **sweep.manifest, "group": group, "table": table, "rows": sweep.rows()},
                          ensure_ascii=False, indent=1)
        path = folder / f"{sweep.id}.json"
        write_atomic(path, lambda tmp: tmp.write_text(data, encoding="utf-8"))
        written.append(path)
    if "html" in formats:
        pngs = {metric: figure_file(fig, "png", PAGE_DPI) for metric, fig in figures.items()}
        page = sweep_page(sweep, table, pngs, group)
        path = folder / f"{sweep.id}.html"
        write_atomic(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
        written.append(path)
    return written


def sweep_page(sweep, table: list[dict], pngs: dict[str, bytes], group: str | None = None) -> str:
    """The self-contained html page of a sweep (nothing in it loads from the network)."""
    from probe.figures.sweep import value_text
    from probe.sweep import METRICS

    spec = sweep.spec
    what = ", ".join(f"{key} {value}" for key, value in spec.items() if value not in (None, [], False))
    figures = "".join(f'<figure><img alt="{esc(METRICS[m][0])}" src="data:image/png;base64,'
                      f'{base64.b64encode(png).decode()}"><figcaption>{esc(METRICS[m][0])}</figcaption></figure>'
                      for m, png in pngs.items())
    metrics = [m for m in ("delta_logprob", "wer", "ref_wer", "ref_wer_change", "tokens", "tokens_change")
               if any(row.get(m) is not None for row in table)]
    label_keys = [k for k in ("layer", "head", "k") if any(k in row for row in table)]
    head = "".join(f"<th>{esc(k)}</th>" for k in ["cell", *label_keys, *metrics])
    body = "".join("<tr>" + f"<td>{esc(row['cell'])}</td>" + "".join(f"<td>{esc(row.get(k, ''))}</td>" for k in label_keys)
                   + "".join(f"<td>{esc(value_text(m, float('nan') if row.get(m) is None else row[m]))}</td>"
                             for m in metrics) + "</tr>" for row in table)
    clean = _clean_transcripts(sweep)
    clips = "".join(f"<li><b>{esc(Path(str(c.get('source'))).name)}</b>"
                    f"{' [' + esc(c['group']) + ']' if c.get('group') else ''}: {esc(text)}</li>"
                    for c, text in zip(sweep.clips, clean))
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>sweep {esc(sweep.id)}</title>"
            f"<style>{PAGE_STYLE}</style></head><body><h1>Sweep {esc(sweep.manifest.get('name') or sweep.id)}</h1>"
            f"<p class=\"meta\">{esc(what)} · model {esc(sweep.manifest.get('model'))} · {len(sweep.clips)} clip(s)"
            f"{' · group ' + esc(group) if group else ''} · whisper-probe {esc(probe.__version__)} · "
            f"exported {today()}</p>{figures}<h2>Cells</h2><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table><h2>Clean transcripts</h2><ul>{clips}</ul></body></html>")


def _clean_transcripts(sweep) -> list[str]:
    try:
        clean = json.loads((sweep.path / "clean.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return [""] * len(sweep.clips)
    return [item.get("transcript", "") for item in clean]
