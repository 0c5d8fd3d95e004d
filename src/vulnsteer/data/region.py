"""Source regions in SARIF's terms: 1-based lines and columns, ``endColumn`` exclusive, columns counted in
Unicode code points (the run declares ``columnKind: unicodeCodePoints``), lines ended by LF, CR LF or CR.

>>> text = "int a;\\r\\nint f(void) {\\n  return 1;\\n}\\n"
>>> index = TextIndex(text)
>>> region = index.region(text.index("int f"), text.index("}") + 1)
>>> region
Region(start_line=2, start_column=1, end_line=4, end_column=2)
>>> index.slice(region) == text[text.index("int f") : text.index("}") + 1]
True
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

__all__ = ["Region", "TextIndex"]

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Region:
    """A span of a file: 1-based start line/column, end line and exclusive end column (code points).

    >>> Region(3, 1, 5, 2).to_sarif()
    {'startLine': 3, 'startColumn': 1, 'endLine': 5, 'endColumn': 2}
    """

    start_line: int
    start_column: int
    end_line: int
    end_column: int

    def to_sarif(self) -> dict[str, int]:
        """The SARIF ``region`` object."""
        return {
            "startLine": self.start_line,
            "startColumn": self.start_column,
            "endLine": self.end_line,
            "endColumn": self.end_column,
        }

    def to_dict(self) -> dict[str, int]:
        return self.to_sarif()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Region:
        return cls(int(data["startLine"]), int(data["startColumn"]), int(data["endLine"]), int(data["endColumn"]))


class TextIndex:
    """Line starts of a text, to turn character (or UTF-8 byte) offsets into SARIF positions and back.

    >>> index = TextIndex("é = 1\\nf()")
    >>> index.char_offset(len("é = 1\\n".encode())), index.position(6)
    (6, (2, 1))
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._line_starts = [0] + [m.end() for m in _LINE_END.finditer(text)]
        self._ascii = text.isascii()
        self._byte_starts: list[int] = []
        if not self._ascii:
            ends = [*self._line_starts[1:], len(text)]
            total = 0
            for start, end in zip(self._line_starts, ends):
                self._byte_starts.append(total)
                total += len(text[start:end].encode("utf-8"))

    def char_offset(self, byte_offset: int) -> int:
        """Character offset of a byte offset into ``text.encode("utf-8")`` (what tree-sitter reports)."""
        if self._ascii:
            return byte_offset
        line = bisect_right(self._byte_starts, byte_offset) - 1
        start = self._line_starts[line]
        end = self._line_starts[line + 1] if line + 1 < len(self._line_starts) else len(self.text)
        within = byte_offset - self._byte_starts[line]
        # the line's bytes up to the offset, decoded back: offsets from a parser always fall on a character boundary
        return start + len(self.text[start:end].encode("utf-8")[:within].decode("utf-8", errors="replace"))

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a character offset."""
        line = bisect_right(self._line_starts, offset) - 1
        return line + 1, offset - self._line_starts[line] + 1

    def offset(self, line: int, column: int) -> int:
        """Character offset of a 1-based (line, column)."""
        return self._line_starts[line - 1] + column - 1

    def region(self, start: int, end: int) -> Region:
        """The region of the characters ``text[start:end]``."""
        start_line, start_column = self.position(start)
        end_line, end_column = self.position(end)
        return Region(start_line, start_column, end_line, end_column)

    def slice(self, region: Region) -> str:
        """The text a region covers."""
        start = self.offset(region.start_line, region.start_column)
        return self.text[start : self.offset(region.end_line, region.end_column)]
