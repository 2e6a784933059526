"""Whisper tokenizers for converted models: every special token registered, timestamps in place.

This module owns turning a ``tokenizer.json`` into a ``WhisperTokenizer`` with all Whisper special
tokens and the 1501 timestamp tokens right after ``<|notimestamps|>``, looking up the named
special-token and language-token ids, deriving large-v3's vocabulary (base's plus ``<|yue|>``),
and checking that a tokenizer belongs to a model's vocabulary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from probe.constants import N_TIMESTAMP_TOKENS, TIMESTAMP_SECONDS
from probe.convert.reading import first_line
from probe.errors import ModelError

TIMESTAMP_COUNT = N_TIMESTAMP_TOKENS  # <|0.00|> ... <|30.00|> in 0.02 s steps


_REQUIRED_SPECIALS = {
    "eot": ("<|endoftext|>",),
    "sot": ("<|startoftranscript|>",),
    "translate": ("<|translate|>",),
    "transcribe": ("<|transcribe|>",),
    "sot_lm": ("<|startoflm|>",),
    "sot_prev": ("<|startofprev|>",),
    "no_speech": ("<|nospeech|>", "<|nocaptions|>"),
    "no_timestamps": ("<|notimestamps|>",),
}


def _token_id(tokenizer, token: str) -> int | None:
    """The id of ``token``, or None when the vocabulary lacks it (no fallback to the unknown token)."""
    return tokenizer.backend_tokenizer.token_to_id(token)


def special_token_ids(tokenizer) -> dict[str, int]:
    """Ids of Whisper's named special tokens (``eot``, ``sot``, ``translate``, ``transcribe``,
    ``sot_lm``, ``sot_prev``, ``no_speech``, ``no_timestamps``, ``timestamp_begin``), looked up in
    ``tokenizer``; a tokenizer missing any of them raises :class:`ModelError`."""
    ids = {}
    for key, spellings in _REQUIRED_SPECIALS.items():
        found = [index for index in (_token_id(tokenizer, s) for s in spellings) if index is not None]
        if not found:
            raise ModelError(f"the tokenizer has no {spellings[0]} token; it is not a Whisper tokenizer")
        ids[key] = found[0]
    timestamp_begin = _token_id(tokenizer, "<|0.00|>")
    ids["timestamp_begin"] = ids["no_timestamps"] + 1 if timestamp_begin is None else timestamp_begin
    return ids


def language_token_ids(tokenizer) -> dict[str, int]:
    """``{"<|en|>": 50259, ...}``: the tokens between ``<|startoftranscript|>`` and ``<|translate|>``."""
    ids = special_token_ids(tokenizer)
    indices = list(range(ids["sot"] + 1, ids["translate"]))
    return dict(zip(tokenizer.convert_ids_to_tokens(indices), indices))


def _timestamp_token(index: int) -> str:
    return f"<|{index * TIMESTAMP_SECONDS:.2f}|>"


def whisper_tokenizer(tokenizer_json: Path | dict):
    """A ``WhisperTokenizer`` from a ``tokenizer.json`` file (or its parsed dict) with every Whisper
    special token registered and the 1501 timestamp tokens present right after ``<|notimestamps|>``."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import WhisperTokenizer

    try:
        if isinstance(tokenizer_json, dict):
            backend = Tokenizer.from_str(json.dumps(tokenizer_json))
        else:
            backend = Tokenizer.from_file(str(tokenizer_json))
    except Exception as exc:  # tokenizers raises a bare Exception for missing or malformed files
        raise ModelError(f"{tokenizer_json} is not a valid tokenizer.json ({first_line(exc)}); re-install/re-convert it") from exc
    # Sorted by id, <|notimestamps|> comes last: WhisperTokenizer puts timestamps right after it.
    specials = [token.content for _, token in sorted(backend.get_added_tokens_decoder().items()) if token.special]
    tokenizer = WhisperTokenizer(tokenizer_object=backend)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    ids = special_token_ids(tokenizer)
    if _token_id(tokenizer, "<|0.00|>") is None:
        if len(tokenizer) != ids["no_timestamps"] + 1:
            raise ModelError(
                f"{tokenizer_json} has tokens after <|notimestamps|> but no timestamp tokens; re-install/re-convert it"
            )
        tokenizer.add_tokens(
            [AddedToken(_timestamp_token(i), lstrip=False, rstrip=False, normalized=False, special=False)
             for i in range(TIMESTAMP_COUNT)]
        )
    if _token_id(tokenizer, "<|0.00|>") != ids["no_timestamps"] + 1:
        raise ModelError(f"{tokenizer_json} does not place <|0.00|> right after <|notimestamps|>; it is not a Whisper tokenizer")
    return tokenizer


def tokenizer_json_with_extra_language(spec: dict, language_token: str) -> dict:
    """A copy of a multilingual ``tokenizer.json`` dict with ``language_token`` added after the
    last language and every later added token shifted by one id (how large-v3 added ``<|yue|>``)."""
    spec = json.loads(json.dumps(spec))
    translate_id = next(t["id"] for t in spec["added_tokens"] if t["content"] == "<|translate|>")
    new_token = dict(next(t for t in spec["added_tokens"] if t["content"] == "<|startoftranscript|>"))
    new_token.update(id=translate_id, content=language_token)
    for token in spec["added_tokens"]:
        if token["id"] >= translate_id:
            token["id"] += 1
    spec["added_tokens"].append(new_token)
    spec["added_tokens"].sort(key=lambda token: token["id"])
    for special in ((spec.get("post_processor") or {}).get("special_tokens") or {}).values():
        special["ids"] = [i + 1 if i >= translate_id else i for i in special["ids"]]
    return spec


def _remap_token_ids(ids: Iterable[int], source_tokenizer, target_tokenizer) -> list[int]:
    """The same tokens' ids in another tokenizer (they differ only where large-v3 shifted them)."""
    tokens = source_tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    return [int(i) for i in target_tokenizer.convert_tokens_to_ids(tokens)]


def _check_vocab(tokenizer, vocab_size: int, where: Path | str) -> None:
    if len(tokenizer) != vocab_size:
        raise ModelError(
            f"{where} has {len(tokenizer)} tokens but the model's vocabulary has {vocab_size}; "
            "the tokenizer does not belong to these weights"
        )
