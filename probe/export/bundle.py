"""Zip bundles: a trace folder written as one ``.zip`` that :func:`import_bundle` puts into another
store as it was.  Bundles are untrusted: every member name, type, size and the manifest are
checked before anything is extracted, and extraction goes through
:meth:`probe.store.Store.import_dir`."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator

from probe.errors import StoreError
from probe.store import MANIFEST, MAX_MANIFEST_BYTES, SCHEMA_VERSION, Store, Trace

MAX_BUNDLE_MEMBERS = 20_000


MAX_BUNDLE_BYTES = 64 * 2**30


BUNDLE_SUFFIXES = (".json", ".safetensors", ".parquet", ".flac")


def import_bundle(bundle: str | os.PathLike, store: Store) -> Trace:
    """Import a ``.zip`` bundle written by ``export_trace(trace, "zip")`` into ``store``.

    The bundle is checked before anything is written: one trace folder, no absolute or climbing
    paths, no links, only the files its manifest names (no pickles), a bounded member count and
    uncompressed size, a schema this version reads.  A bad bundle raises a one-line
    :class:`~probe.errors.StoreError` and leaves the store as it was.
    """
    bundle = Path(bundle).expanduser()
    with _open_bundle(bundle) as archive:
        members = _checked_members(archive, bundle)
        root = _single_root(members, bundle)
        manifest = _bundle_manifest(archive, members, root, bundle)
        _check_listed(members, root, manifest, bundle)
        _check_space(members, store, bundle)
        with _staging(store) as staging:
            _extract(archive, members, staging, bundle)
            return store.import_dir(staging / root)


# Stored, not deflated: FLAC is compressed already, and deflating float tensors saves ~20 % of
# their size for ~35x the time (a 30 s base trace: 25 s against 0.7 s on the 2-core VM)
STORED_SUFFIXES = (".flac", ".safetensors")


def write_bundle(trace: Trace, path: Path) -> None:
    """Every file the manifest names, under ``<trace id>/``; audio and tensors are stored, the
    rest (JSON, Parquet tables) deflated."""
    with zipfile.ZipFile(path, "w") as archive:
        for rel in trace._member_files():
            source = trace._member_path(rel, "listed")
            method = zipfile.ZIP_STORED if rel.endswith(STORED_SUFFIXES) else zipfile.ZIP_DEFLATED
            archive.write(source, f"{trace.id}/{rel}", compress_type=method)


def _open_bundle(bundle: Path) -> zipfile.ZipFile:
    if not bundle.is_file():
        raise StoreError(f"no bundle at {bundle}; pass a .zip written by `probe export -f zip`")
    try:
        return zipfile.ZipFile(bundle)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
        raise _bad_bundle(bundle, f"it is not a readable zip file ({err})") from err
    except OSError as err:
        raise StoreError(f"could not read bundle {bundle}: {err.strerror or err}; "
                         "check the file") from err


def _checked_members(archive: zipfile.ZipFile, bundle: Path) -> dict[str, zipfile.ZipInfo]:
    """Files of the bundle by name, after refusing anything that is not a plain trace file."""
    infos = archive.infolist()
    if len(infos) > MAX_BUNDLE_MEMBERS:
        raise _bad_bundle(bundle, f"it has {len(infos)} members, more than "
                                  f"{MAX_BUNDLE_MEMBERS} a trace can have")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        _check_member_name(name, bundle)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise _bad_bundle(bundle, f"member {name!r} is a link or special file")
        if info.is_dir():
            continue
        if not name.endswith(BUNDLE_SUFFIXES):
            raise _bad_bundle(bundle, f"member {name!r} is not a trace file (only "
                                      f"{', '.join(BUNDLE_SUFFIXES)}; pickles are never loaded)")
        if name in members:
            raise _bad_bundle(bundle, f"member {name!r} appears twice")
        members[name] = info
    total = sum(info.file_size for info in members.values())
    if total > MAX_BUNDLE_BYTES:
        raise _bad_bundle(bundle, f"it unpacks to {total / 2**30:.1f} GiB, more than the "
                                  f"{MAX_BUNDLE_BYTES / 2**30:.0f} GiB limit (a zip bomb?)")
    return members


def _check_member_name(name: str, bundle: Path) -> None:
    path = PurePosixPath(name)
    if (not name or "\\" in name or "\0" in name or ":" in name or path.is_absolute()
            or any(part in ("..", ".") for part in name.rstrip("/").split("/"))
            or "" in name.rstrip("/").split("/")):
        raise _bad_bundle(bundle, f"member {name!r} has an unsafe path (absolute, '..', or "
                                  "not a plain relative path)")


def _single_root(members: dict[str, zipfile.ZipInfo], bundle: Path) -> str:
    roots = sorted({name.split("/", 1)[0] for name in members})
    if len(roots) != 1 or any("/" not in name for name in members):
        found = ", ".join(roots[:5]) or "nothing"
        raise _bad_bundle(bundle, f"it must hold exactly one trace folder, found {found}")
    return roots[0]


def _bundle_manifest(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], root: str,
                     bundle: Path) -> dict:
    info = members.get(f"{root}/{MANIFEST}")
    if info is None:
        raise _bad_bundle(bundle, f"its folder {root} has no {MANIFEST}")
    if info.file_size > MAX_MANIFEST_BYTES:
        raise _bad_bundle(bundle, f"its {MANIFEST} is larger than 16 MB")
    try:
        manifest = json.loads(archive.read(info))
    except (ValueError, RecursionError) as err:
        raise _bad_bundle(bundle, f"its {MANIFEST} is not valid JSON") from err
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if type(version) is not int or version < 1:
        raise _bad_bundle(bundle, f"its {MANIFEST} has no valid schema_version")
    if version > SCHEMA_VERSION:
        raise StoreError(f"bundle {bundle} was written by a newer whisper-probe (schema "
                         f"{version} > {SCHEMA_VERSION}); upgrade whisper-probe to import it")
    return manifest


def _check_listed(members: dict[str, zipfile.ZipInfo], root: str, manifest: dict,
                  bundle: Path) -> None:
    """Refuse members the manifest does not name (the store would not copy them anyway)."""
    records = manifest.get("records")
    audio = manifest.get("audio")
    listed = {MANIFEST}
    listed |= {entry.get("file") for entry in records.values() if isinstance(entry, dict)} \
        if isinstance(records, dict) else set()
    listed |= {audio.get("file")} if isinstance(audio, dict) else set()
    extra = sorted(name for name in members if name[len(root) + 1:] not in listed)
    if extra:
        raise _bad_bundle(bundle, f"member {extra[0]!r} is not a file its manifest names")


def _check_space(members: dict[str, zipfile.ZipInfo], store: Store, bundle: Path) -> None:
    needed = sum(info.file_size for info in members.values())
    free = shutil.disk_usage(store.path).free
    if needed > free:
        raise StoreError(f"bundle {bundle} unpacks to {needed / 2**20:.0f} MB but the store at "
                         f"{store.path} has {free / 2**20:.0f} MB free; free space first")


@contextlib.contextmanager
def _staging(store: Store) -> Iterator[Path]:
    """A fresh folder in the store's temp area, removed (with the temp area if then empty)."""
    from probe.store import _remove_if_empty

    tmp = store._tmp_dir()
    staging = Path(tempfile.mkdtemp(prefix="bundle-", dir=tmp))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(tmp)


def _extract(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], staging: Path,
             bundle: Path) -> None:
    """Unpack checked members as new regular files, never writing more than each declares."""
    for name, info in members.items():
        target = staging.joinpath(*name.split("/"))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(target, "xb") as sink:
                _copy_bounded(source, sink, info.file_size, name, bundle)
        except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as err:
            raise _bad_bundle(bundle, f"member {name!r} cannot be unpacked ({err})") from err
        except OSError as err:
            raise StoreError(f"could not unpack bundle {bundle} into {staging.parent}: "
                             f"{err.strerror or err}; free space or use --store elsewhere") from err


def _copy_bounded(source: io.BufferedIOBase, sink: io.BufferedIOBase, limit: int, name: str,
                  bundle: Path) -> None:
    written = 0
    while chunk := source.read(2**20):
        written += len(chunk)
        if written > limit:
            raise _bad_bundle(bundle, f"member {name!r} unpacks to more than it declares")
        sink.write(chunk)


def _bad_bundle(bundle: Path, reason: str) -> StoreError:
    return StoreError(f"bundle {bundle} is not a valid trace bundle: {reason}; "
                      "export it again with `probe export -f zip`")
