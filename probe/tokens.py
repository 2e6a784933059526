"""Token texts that read right in every script: the raw bytes of each token, and how a sequence
of byte-level BPE pieces groups into the characters it spells.

Whisper's tokenizer is GPT-2's byte-level BPE: a Mandarin character is three UTF-8 bytes and often
two or three tokens, so ``tokenizer.decode([token_id])`` of one of them is "�".  The store keeps
no tokenizer, so a trace keeps each token's bytes (:func:`bytes_map`, the manifest's per-window
``token_bytes``) and everything that draws tokens groups them here:

- :func:`groups` joins consecutive pieces until their bytes decode as strict UTF-8 (a piece may
  end one character and start the next);
- :func:`labels` gives one label per token (one cell per token in figures and tables) naming the
  characters it belongs to, a character split over tokens marked with its part: ``万¹/₂ 万²/₂``;
- :func:`piece_text` shows an isolated piece (a top-k alternative): its text when it is valid
  UTF-8, otherwise its bytes as ``‹e4 b8›`` — never "�".

Nothing here imports torch; the tokenizer functions take any Hugging Face tokenizer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Sequence

_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte → printable character table, inverted.

    Byte-level BPE writes printable Latin-1 bytes ('!'–'~', '¡'–'¬', '®'–'ÿ') as themselves and
    every other byte b as chr(256 + n), n counting those bytes in order (a space is 'Ġ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in set(printable)]
    table.update({chr(256 + n): b for n, b in enumerate(others)})
    return table


def token_bytes(tokenizer, ids: Iterable[int]) -> dict[int, bytes]:
    """The raw bytes of each token id the tokenizer knows (special and added tokens: their text)."""
    ids = sorted({int(i) for i in ids})
    added = {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {}) or {}}
    added |= {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    decoder = _byte_decoder()
    found = {}
    for token_id, piece in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        if piece is None:
            continue
        if token_id in added or any(c not in decoder for c in piece):
            found[token_id] = piece.encode("utf-8")
        else:
            found[token_id] = bytes(decoder[c] for c in piece)
    return found


def bytes_map(tokenizer, ids: Iterable[int]) -> dict[str, str]:
    """``{str(id): hex of its bytes}``: the JSON form a trace keeps (see :func:`read_bytes_map`)."""
    return {str(token_id): raw.hex() for token_id, raw in token_bytes(tokenizer, ids).items()}


def read_bytes_map(entries: dict | None) -> dict[int, bytes]:
    """The inverse of :func:`bytes_map` (entries that are not hex are skipped: traces are untrusted)."""
    found = {}
    for key, value in (entries or {}).items():
        try:
            found[int(key)] = bytes.fromhex(value)
        except (TypeError, ValueError):
            continue
    return found


def piece_text(raw: bytes) -> str:
    """One piece shown on its own: its text, with bytes that are not valid UTF-8 as ``‹e4 b8›``."""
    text = raw.decode("utf-8", errors="surrogateescape")
    out, pending = [], []
    for char in text:
        if "\udc80" <= char <= "\udcff":  # an undecodable byte, escaped
            pending.append(f"{ord(char) - 0xDC00:02x}")
            continue
        if pending:
            out.append("‹" + " ".join(pending) + "›")
            pending = []
        out.append(char)
    if pending:
        out.append("‹" + " ".join(pending) + "›")
    return "".join(out)


def piece_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """:func:`piece_text` of each id: what a plugin stores as the text of an isolated token
    (instead of ``tokenizer.decode([id])``, which turns part of a character into "�")."""
    found = token_bytes(tokenizer, ids)
    return [piece_text(found[int(i)]) if int(i) in found else f"#{int(i)}" for i in ids]


@dataclass(frozen=True)
class Group:
    """Tokens ``start`` … ``stop - 1`` of a sequence, whose bytes together spell ``text``."""

    start: int
    stop: int
    text: str
    valid: bool = True  # False: a piece that no neighbour completes, shown as its bytes


def _complete(raw: bytes) -> bool | None:
    """True: valid UTF-8; None: valid so far but the last character is cut; False: invalid."""
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError as err:
        return None if err.end == len(raw) and err.reason == "unexpected end of data" else False


def groups(pieces: Sequence[bytes]) -> list[Group]:
    """Consecutive pieces joined until their bytes decode as strict UTF-8.

    A piece that no following piece completes (a cut sequence, or bytes that are not UTF-8 at all)
    stays a group of its own, shown with :func:`piece_text`."""
    found, start = [], 0
    while start < len(pieces):
        raw, stop, state = b"", start, None
        while stop < len(pieces):
            raw += pieces[stop]
            stop += 1
            state = _complete(raw)
            if state is not None:
                break
        if state:
            found.append(Group(start, stop, raw.decode("utf-8")))
            start = stop
        else:
            found.append(Group(start, start + 1, piece_text(pieces[start]), valid=False))
            start += 1
    return found


def _part(index: int, count: int) -> str:
    return str(index).translate(_SUPERSCRIPT) + "/" + str(count).translate(_SUBSCRIPT)


def labels(pieces: Sequence[bytes]) -> list[str]:
    """One label per piece: the characters it helps spell, each character split over several
    pieces marked with this piece's part (``万¹/₂`` then ``万²/₂``)."""
    out = [""] * len(pieces)
    for group in groups(pieces):
        if group.stop - group.start == 1:
            out[group.start] = group.text
            continue
        bounds, offset = [], 0  # byte span of each piece within the group
        for raw in pieces[group.start:group.stop]:
            bounds.append((offset, offset + len(raw)))
            offset += len(raw)
        offset = 0
        for char in group.text:
            end = offset + len(char.encode("utf-8"))
            parts = [i for i, (a, b) in enumerate(bounds) if a < end and offset < b]
            for number, i in enumerate(parts, 1):
                out[group.start + i] += char + (_part(number, len(parts)) if len(parts) > 1 else "")
            offset = end
    return out


def describe(pieces: Sequence[bytes]) -> str:
    """The pieces of one group for a hover: ``‹e4 b8› + ‹87›``."""
    return " + ".join(piece_text(raw) if _complete(raw) else "‹" + raw.hex(" ") + "›" for raw in pieces)


def text(pieces: Sequence[bytes]) -> str:
    """The pieces as running text, split characters joined."""
    return "".join(group.text for group in groups(pieces))


def prompt_pieces(window: dict) -> list[bytes]:
    """The bytes of each prompt token of a manifest window entry (``window["prompt"]``); a trace
    written before token bytes were kept gives the texts it stored."""
    raw = read_bytes_map(window.get("token_bytes"))
    texts = window.get("prompt_tokens") or []
    return [raw.get(int(t)) or (str(texts[i]) if i < len(texts) else f"#{t}").encode("utf-8")
            for i, t in enumerate(window.get("prompt") or [])]


def prompt_entries(manifest: dict, window: int = 0) -> list[dict]:
    """Window ``window``'s decoder prompt as ``{"id", "token"}`` entries to show, one per token
    (special tokens as their text, the previous text's tokens as :func:`labels` names them); the
    manifest's ``prompt`` when the windows do not say."""
    windows = manifest.get("windows") or []
    entry = windows[window] if 0 <= window < len(windows) and isinstance(windows[window], dict) else {}
    if not entry.get("prompt"):
        prompt = manifest.get("prompt")
        return [t for t in prompt if isinstance(t, dict)] if isinstance(prompt, list) else []
    return [{"id": int(t), "token": label.strip() or "␣"}
            for t, label in zip(entry["prompt"], labels(prompt_pieces(entry)))]
