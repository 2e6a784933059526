"""Writing each export format to disk: where the files go (``--out``), each file written to a
temporary name beside it and renamed into place only when complete, and the json/csv documents
(the trace's summary and the tables plugins contribute, ``probe_export_sections(tables=...)``)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from typing import TYPE_CHECKING

from probe import contributions
from probe.errors import OptionError, StoreError
from probe.export.markup import audio_field, prompt_tokens
from probe.export.render import PRINT_DPI
from probe.publish import staged

if TYPE_CHECKING:  # the page, handout and bundle code (and matplotlib) load only for the formats that need them
    from probe.export.plan import FigurePlan
    from probe.store import Trace



def write_file(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def export_tables(trace: Trace) -> dict[str, list[dict]]:
    """The tables the json/csv exports hold, from every section that contributes tables and whose
    records the trace has (the built-ins: ``tokens``, ``words``, ``languages``)."""
    tables: dict[str, list[dict]] = {}
    for section in contributions.current().sections:
        if section.tables is not None and section.available(trace):
            tables.update(section.tables(trace))
    if not any(tables.values()):
        raise StoreError(f"trace {trace.id} has no records any plugin exports as tables (token, word or "
                         "language records, for the built-ins); re-run it with token_probs or cross_attention")
    return tables


def _export_html(trace: Trace, out, plan: FigurePlan, png=None) -> list[Path]:
    from probe.export.page import page as render_page

    page = render_page(trace, plan, png)
    path = out_file(trace, out, "html")
    write_atomic(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return [path]


def _export_figure_files(trace: Trace, out, plan: FigurePlan, fmt: str) -> list[Path]:
    from probe.export.render import figure_bytes

    folder = out_dir(trace, out)
    written = []
    for name, window in plan.pairs:
        data = plan.attempt(name, window, lambda: figure_bytes(plan, name, window, fmt, PRINT_DPI))
        if data is None:
            continue
        path = folder / f"{plan.file_stem(name, window)}.{fmt}"
        write_atomic(path, lambda tmp, data=data: write_file(tmp, data))
        written.append(path)
    if not written:
        raise plan.no_figures()
    return written


def _export_pdf(trace: Trace, out, plan: FigurePlan) -> list[Path]:
    from probe.export.handout import write_handout

    path = out_file(trace, out, "pdf")
    write_atomic(path, lambda tmp: write_handout(trace, plan, tmp))
    return [path]


def _export_json(trace: Trace, out, views) -> list[Path]:
    tables = export_tables(trace)
    document = {"trace": summary(trace), **tables}
    text = json.dumps(document, ensure_ascii=False, indent=1, default=_json_default)
    path = out_file(trace, out, "json")
    write_atomic(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    return [path]


def _export_csv(trace: Trace, out, views) -> list[Path]:
    tables = {name: rows for name, rows in export_tables(trace).items() if rows}
    folder = out_dir(trace, out)
    written = []
    for name, rows in tables.items():
        path = folder / f"{trace.id}-{name}.csv"
        write_atomic(path, lambda tmp, rows=rows: _write_csv(rows, tmp))
        written.append(path)
    return written


def _export_zip(trace: Trace, out, views) -> list[Path]:
    from probe.export.bundle import write_bundle

    path = out_file(trace, out, "zip")
    write_atomic(path, lambda tmp: write_bundle(trace, tmp))
    return [path]


EXPORTERS: dict[str, Callable[[Trace, Any, Any], list[Path]]] = {
    "html": _export_html,
    "png": lambda trace, out, plan: _export_figure_files(trace, out, plan, "png"),
    "svg": lambda trace, out, plan: _export_figure_files(trace, out, plan, "svg"),
    "pdf": _export_pdf,
    "json": _export_json,
    "csv": _export_csv,
    "zip": _export_zip,
}


def summary(trace: Trace) -> dict:
    """What a reader of the JSON export needs to know about the trace."""
    manifest = trace.manifest
    return {"id": trace.id, "name": trace.name, "created": trace.created,
            "model": trace.model_id, "audio_source": trace.audio_source,
            "duration": audio_field(trace, "duration"), "transcript": trace.transcript,
            "language": trace.language,
            "language_probability": manifest.get("language_probability"),
            "no_speech_probability": manifest.get("no_speech_probability"),
            "task": (manifest.get("decode") or {}).get("task"),
            "prompt": [token.get("token") for token in prompt_tokens(trace)]}


def _write_csv(rows: list[dict], path: Path) -> None:
    """Rows as CSV; list and dict cells are written as JSON text so nothing is lost."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_cell(value) for key, value in row.items()})


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def out_file(trace: Trace, out, ext: str) -> Path:
    """The file a single-file export writes: ``out``, ``out/<id>.<ext>`` for a folder, or
    ``./<id>.<ext>``."""
    if out is None:
        return Path.cwd() / f"{trace.id}.{ext}"
    path = Path(out).expanduser()
    if path.is_dir() or str(out).endswith(("/", os.sep)):
        return path.absolute() / f"{trace.id}.{ext}"
    return path.absolute()


def out_dir(trace: Trace, out) -> Path:
    """The folder a multi-file export writes into (made if missing)."""
    folder = (Path(out).expanduser() if out is not None
              else Path.cwd() / f"{trace.id}-export").absolute()
    if folder.exists() and not folder.is_dir():
        raise OptionError(f"--out {folder} is a file; this format writes several files, "
                          "so give a folder")
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Write ``path`` through ``write(stage)`` on a temporary file beside it, published by one
    rename only when complete (:func:`probe.publish.staged`)."""
    if path.is_dir():
        raise OptionError(f"{path} is a folder; remove it or pass another --out")
    with writing(path), staged(path, is_dir=False) as stage:
        write(stage)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err)
        raise OptionError(f"could not write {path}: {reason}; pass --out somewhere writable") \
            from err
