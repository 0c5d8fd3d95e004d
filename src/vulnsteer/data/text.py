"""Reading source files as text: byte-order marks, UTF-16 without a BOM, binary content, undecodable bytes.

Every path that turns a file's bytes into code to score goes through :func:`decode_source` (datasets, ``detect``,
``scan``), so a UTF-16 file is read as the text it holds, an executable renamed ``x.c`` is refused instead of
getting a confident verdict, and a file with a few bytes that are not UTF-8 is read with replacement characters
and says so.

>>> decode_source(b"int x;\\n").text
'int x;\\n'
>>> decode_source("int x;".encode("utf-16")).encoding
'utf-16'
>>> decode_source(b"\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00", "a.out")
Traceback (most recent call last):
...
vulnsteer.data.text.BinaryContentError: a.out: binary content (NUL bytes), not source text
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BinaryContentError", "SourceText", "binary_reason", "decode_source", "read_source"]

#: Bytes looked at to tell text from binary content.
SNIFF_BYTES = 8192
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
#: Control bytes that occur in ordinary text files (tab, newline, carriage return, form feed, escape, backspace).
_TEXT_CONTROLS = frozenset(b"\t\n\r\f\x1b\b")


class BinaryContentError(ValueError):
    """The bytes are not source text (NUL bytes, or mostly control bytes); the message names the file."""


@dataclass(frozen=True)
class SourceText:
    """Decoded source text and how it was read.

    Attributes:
        text: the decoded text (a BOM is not part of it).
        encoding: the codec used (``utf-8``, ``utf-8-sig``, ``utf-16``, ``utf-16-le``, ``utf-16-be``, ``utf-32``).
        replaced: True when bytes that the encoding cannot decode were replaced by U+FFFD.
    """

    text: str
    encoding: str
    replaced: bool = False


def _utf16_without_bom(head: bytes) -> str | None:
    """``utf-16-le``/``utf-16-be`` when the bytes look like NUL-interleaved ASCII (UTF-16 text without a BOM)."""
    n = len(head) - len(head) % 2
    if n < 4:
        return None
    even, odd = head[0:n:2], head[1:n:2]
    half = n // 2
    even_nul, odd_nul = even.count(0), odd.count(0)
    if odd_nul >= 0.6 * half and even_nul <= 0.05 * half:
        return "utf-16-le"
    if even_nul >= 0.6 * half and odd_nul <= 0.05 * half:
        return "utf-16-be"
    return None


def binary_reason(raw: bytes) -> str | None:
    """Why *raw* is not text (``"NUL bytes"``, ``"mostly control bytes"``), or None if it looks like text.

    Only the first :data:`SNIFF_BYTES` are looked at; UTF-16/32 text (with a BOM, or NUL-interleaved ASCII) is
    text.
    """
    head = raw[:SNIFF_BYTES]
    if any(head.startswith(bom) for bom, _ in _BOMS) or _utf16_without_bom(head):
        return None
    if b"\0" in head:
        return "NUL bytes"
    controls = sum(1 for b in head if b < 32 and b not in _TEXT_CONTROLS)
    if head and controls > 0.1 * len(head):
        return "mostly control bytes"
    return None


def decode_source(raw: bytes, name: str = "<bytes>") -> SourceText:
    """Decode a source file's bytes: BOM first, then UTF-16 without a BOM, then UTF-8 (undecodable bytes are
    replaced and :attr:`SourceText.replaced` is set). Binary content raises :class:`BinaryContentError` naming
    *name*."""
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            return _decode(raw, codec)
    guessed = _utf16_without_bom(raw[:SNIFF_BYTES])
    if guessed:
        return _decode(raw, guessed)
    reason = binary_reason(raw)
    if reason:
        raise BinaryContentError(f"{name}: binary content ({reason}), not source text")
    return _decode(raw, "utf-8")


def _decode(raw: bytes, codec: str) -> SourceText:
    try:
        return SourceText(raw.decode(codec), codec)
    except UnicodeDecodeError:
        return SourceText(raw.decode(codec, errors="replace"), codec, replaced=True)


def read_source(path: str | Path) -> SourceText:
    """:func:`decode_source` of a file's bytes; an unreadable file is an ``OSError`` whose message names it."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except IsADirectoryError:
        raise IsADirectoryError(f"{file}: is a directory, not a file") from None
    except OSError as exc:
        raise type(exc)(f"{file}: cannot read ({exc.strerror or exc})") from None
    return decode_source(raw, str(file))
