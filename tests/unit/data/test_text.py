"""Reading source bytes: BOMs, UTF-16 without a BOM, binary content, replacement of undecodable bytes."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

from vulnsteer.data import text as text_mod
from vulnsteer.data.text import BinaryContentError, binary_reason, decode_source, read_source

CODE = "int main(void) {\n  char buf[8]; /* é */\n  return 0;\n}\n"


@pytest.mark.parametrize("codec", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_every_unicode_encoding_reads_back_the_same_text(codec: str) -> None:
    assert decode_source(CODE.encode(codec)).text == CODE


def test_utf16_without_bom_is_detected_by_its_nul_pattern() -> None:
    assert decode_source(CODE.encode("utf-16-le")).encoding == "utf-16-le"
    assert decode_source(CODE.encode("utf-16-be")).encoding == "utf-16-be"


def test_invalid_utf8_is_replaced_and_flagged() -> None:
    src = decode_source(b"x = '\xff\xfe\xfa'\n" * 3)
    assert src.replaced and "\ufffd" in src.text and src.encoding == "utf-8"
    assert not decode_source(CODE.encode()).replaced


@pytest.mark.parametrize(
    "raw", [b"\x7fELF\x02\x01\x01\x00" + bytes(200), bytes(range(0, 32)) * 20, b"MZ\x90\x00\x03\x00\x00\x00\x04\x00"]
)
def test_binary_content_is_refused_with_the_name(raw: bytes) -> None:
    assert binary_reason(raw) is not None
    with pytest.raises(BinaryContentError, match=r"prog\.c: binary content"):
        decode_source(raw, "prog.c")


def test_ordinary_text_with_tabs_and_escapes_is_text() -> None:
    assert binary_reason(b'\tprintf("\x1b[0m\\n");\r\n\f') is None
    assert binary_reason(b"") is None


def test_read_source_names_unreadable_paths(tmp_path: Path) -> None:
    (tmp_path / "a.c").write_bytes(CODE.encode("utf-16"))
    assert read_source(tmp_path / "a.c").text == CODE
    with pytest.raises(FileNotFoundError, match=r"missing\.c"):
        read_source(tmp_path / "missing.c")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_source(tmp_path)


def test_module_doctests() -> None:
    assert doctest.testmod(text_mod).failed == 0
