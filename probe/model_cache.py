"""The converted-model cache: where conversions live (:func:`cache_dir`), what identifies one
(a fingerprint of its inputs' paths, sizes and times, and the converter's version), and converting
each input once — the embedded weights, a local CTranslate2 directory or an openai-whisper ``.pt``
file — published whole with :mod:`probe.publish`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from probe import convert
from probe.embedded import DEFAULT_EMBEDDED, _embedded
from probe.errors import ModelError
from probe.publish import PublishError, publish

CONVERTER_VERSION = 2  # bump when a conversion's output changes, so cached conversions are redone
_MARKER = ".whisper-probe-conversion.json"


def cache_dir() -> Path:
    """``$WHISPER_PROBE_CACHE``, else ``$XDG_CACHE_HOME/whisper-probe``, else ``~/.cache/whisper-probe``."""
    if explicit := os.environ.get("WHISPER_PROBE_CACHE"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "whisper-probe"


def _fingerprint(files: list[Path]) -> str:
    """Identifies a conversion's inputs by path, size and modification time (no hashing of GBs)."""
    digest = hashlib.sha256(f"converter {CONVERTER_VERSION}".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"\n{path.resolve()} {stat.st_size} {stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _is_cached(directory: Path, fingerprint: str) -> bool:
    try:
        marker = json.loads((directory / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("fingerprint") == fingerprint and (directory / "model.safetensors").is_file()


def _convert_cached(final: Path, fingerprint: str, run_conversion: Callable[[Path], Path]) -> Path:
    """Return ``final`` holding a conversion with ``fingerprint``, converting it if needed.

    The conversion is staged in a private folder beside ``final`` and published by one rename
    (:func:`probe.publish.publish`), so concurrent callers never see a half-written directory; the
    last rename loses and reuses the winner's, and a stale conversion is moved aside first.
    """
    if _is_cached(final, fingerprint):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        converted = run_conversion(staging / "model")
        marker = {"fingerprint": fingerprint, "converter_version": CONVERTER_VERSION}
        (converted / _MARKER).write_text(json.dumps(marker), encoding="utf-8")
        try:
            publish(converted, final)
        except PublishError:
            if _is_cached(final, fingerprint):  # another process finished first
                return final
            with contextlib.suppress(FileNotFoundError):  # a stale or outdated conversion: out of the way
                os.rename(final, staging / "stale")
            try:
                publish(converted, final)
            except PublishError as exc:
                if not _is_cached(final, fingerprint):
                    raise ModelError(f"cannot write the converted model to {final}; check the cache directory "
                                     f"({cache_dir()})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def embedded_model_dir(name: str = DEFAULT_EMBEDDED) -> Path:
    """The transformers directory for embedded model ``name``, converted on first use and cached."""
    model = _embedded(name)
    parts = model.model_bin_parts()
    metadata = model.metadata_dir()
    fingerprint = _fingerprint([*parts, metadata / "config.json", metadata / "tokenizer.json"])
    final = cache_dir() / "models" / name
    return _convert_cached(final, fingerprint, lambda dest: convert.convert_ctranslate2(metadata, dest, parts))


def _converted_local_dir(source: Path, fmt: str) -> Path:
    """Convert a local CTranslate2 directory or ``.pt`` file once; keyed by its path, sizes and mtimes."""
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    fingerprint = _fingerprint([source, *files])
    final = cache_dir() / "converted" / f"{source.stem or 'model'}-{fingerprint}"
    if fmt == "openai":
        return _convert_cached(final, fingerprint, lambda dest: convert.convert_openai_checkpoint(source, dest))
    return _convert_cached(final, fingerprint, lambda dest: convert.convert_ctranslate2(source, dest))
