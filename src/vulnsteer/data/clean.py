"""Source-text cleaning shared by the loaders and the prompt builder.

:func:`strip_comments` removes comments with a real lexer (pygments), so comment markers inside string
literals survive and string contents are never mangled. C/C++ preprocessor directives (which pygments files
under ``Token.Comment.Preproc``) are kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache, lru_cache

from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.token import Comment, Keyword, Name, Operator, Punctuation, String, Text, _TokenType
from pygments.util import ClassNotFound

__all__ = [
    "LANGUAGE_ALIASES",
    "TokenList",
    "canonical_language",
    "get_lexer",
    "is_comment",
    "join_tokens_without_comments",
    "lex",
    "strip_comments",
    "token_kind",
]

#: Lower-case language names and file extensions accepted by :func:`canonical_language`.
LANGUAGE_ALIASES: dict[str, str] = {
    "c": "c",
    "h": "c",
    "cpp": "cpp",
    "c++": "cpp",
    "cc": "cpp",
    "cxx": "cpp",
    "hpp": "cpp",
    "hh": "cpp",
    "hxx": "cpp",
    "java": "java",
    "javascript": "javascript",
    "js": "javascript",
    "jsx": "javascript",
    "mjs": "javascript",
    "cjs": "javascript",
    "typescript": "typescript",
    "ts": "typescript",
    "tsx": "typescript",
    "python": "python",
    "py": "python",
    "go": "go",
    "golang": "go",
    "ruby": "ruby",
    "rb": "ruby",
    "php": "php",
    "rust": "rust",
    "rs": "rust",
    "csharp": "csharp",
    "c#": "csharp",
    "cs": "csharp",
    "kotlin": "kotlin",
    "kt": "kotlin",
    "scala": "scala",
    "swift": "swift",
    "shell": "bash",
    "sh": "bash",
    "bash": "bash",
}

TokenList = list[tuple[int, _TokenType, str]]

_MARK = "\x00"
_KEEP_COMMENT_TYPES = (Comment.Preproc, Comment.PreprocFile)


def canonical_language(name: str) -> str:
    """Canonical lower-case language name for a language name or file extension (``.cc`` -> ``cpp``).

    Unknown names are returned lower-cased without a leading dot.
    """
    key = name.strip().lower().lstrip(".")
    return LANGUAGE_ALIASES.get(key, key)


@lru_cache(maxsize=64)
def get_lexer(language: str) -> Lexer:
    """A pygments lexer for *language* that leaves the input text untouched (no newline stripping)."""
    name = canonical_language(language)
    try:
        return get_lexer_by_name(name, stripnl=False, stripall=False, ensurenl=False)
    except ClassNotFound:
        raise ValueError(f"no lexer for language {language!r}") from None


def lex(code: str, language: str) -> TokenList:
    """``(offset, token type, text)`` triples covering *code* exactly (newlines normalised to ``\\n`` first)."""
    code = code.replace("\r\n", "\n").replace("\r", "\n")
    return list(get_lexer(language).get_tokens_unprocessed(code))


@cache
def token_kind(ttype: _TokenType) -> str:
    """Coarse, cached class of a pygments token type.

    One of ``"comment"``, ``"preproc"`` (C/C++ directives, which pygments files under ``Token.Comment``),
    ``"whitespace"``, ``"name"``, ``"string"``, ``"keyword"``, ``"punctuation"``, ``"operator"``, ``"other"``.
    """
    if ttype in Comment:
        return "preproc" if any(ttype in keep for keep in _KEEP_COMMENT_TYPES) else "comment"
    for kind, parent in (
        ("whitespace", Text),
        ("name", Name),
        ("string", String),
        ("keyword", Keyword),
        ("punctuation", Punctuation),
        ("operator", Operator),
    ):
        if ttype in parent:
            return kind
    return "other"


def is_comment(ttype: _TokenType) -> bool:
    """True for comment tokens, False for preprocessor directives (which pygments also files as comments)."""
    return token_kind(ttype) == "comment"


def _unbalanced_quote(text: str) -> bool:
    """True when *text* (a preprocessor line so far) has an open string literal."""
    stripped = re.sub(r"\\.", "", text)
    return stripped.count('"') % 2 == 1


def join_tokens_without_comments(tokens: Iterable[tuple[_TokenType, str]]) -> str:
    """Concatenate token texts, dropping comments, and tidy the lines the comments were on.

    Lines that held only a comment disappear (no blank-line piles are left behind), lines that lost a trailing
    comment lose their trailing whitespace, and ``a/*x*/b`` becomes ``a b`` so tokens never fuse.
    """
    pieces: list[str] = []
    preproc_line = ""
    in_preproc = False
    for ttype, text in tokens:
        kind = token_kind(ttype)
        if kind == "preproc" and ttype in Comment.Preproc:
            if text.startswith("#") and not in_preproc:
                in_preproc = True
                preproc_line = ""
            preproc_line += text
            if text.endswith("\n") and not preproc_line.endswith("\\\n"):
                in_preproc = False
            pieces.append(text)
            continue
        if kind == "comment":
            if in_preproc and _unbalanced_quote(preproc_line):
                # pygments mis-lexes "/* ... */" inside a string in a #define as a comment: keep it verbatim
                preproc_line += text
                pieces.append(text)
                continue
            pieces.append(_MARK + ("\n" if text.endswith("\n") else ""))
            if text.endswith("\n"):
                in_preproc = False
            continue
        if in_preproc:
            preproc_line += text
            if "\n" in text and not preproc_line.endswith("\\\n"):
                in_preproc = False
        pieces.append(text)
    return _tidy("".join(pieces))


def _tidy_line(line: str) -> str:
    out: list[str] = []
    pos = 0
    for match in re.finditer(rf"[ \t]*{_MARK}+[ \t]*", line):
        before = line[pos : match.start()]
        out.append(before)
        prefix = "".join(out)
        rest = line[match.end() :]
        gap = match.group(0).replace(_MARK, "")
        if not prefix.strip():
            # comment at the start of the line: keep the indentation in front of it
            lead = match.group(0).split(_MARK, 1)[0]
            out.append(lead if rest.strip() else "")
        elif not rest.strip():
            pass
        elif gap or ((prefix[-1:].isalnum() or prefix[-1:] == "_") and (rest[:1].isalnum() or rest[:1] == "_")):
            out.append(" ")
        pos = match.end()
    out.append(line[pos:])
    return "".join(out).rstrip()


def _tidy(text: str) -> str:
    if _MARK not in text:
        return text
    kept: list[str] = []
    dropped_since_kept = False
    for line in text.split("\n"):
        if _MARK in line:
            line = _tidy_line(line)
            if not line.strip():
                dropped_since_kept = True
                continue
        elif not line.strip() and dropped_since_kept and (not kept or not kept[-1].strip()):
            # a blank line next to a removed comment line: avoid leaving a pile of blank lines
            continue
        if line.strip():
            dropped_since_kept = False
        kept.append(line)
    return "\n".join(kept)


def strip_comments(code: str, language: str) -> str:
    """Remove every comment from *code* (written in *language*: c, cpp, java, javascript, python, go, ruby, ...).

    String literals are left intact (``"// not a comment"`` stays), C/C++ preprocessor directives are kept,
    lines that held only a comment are removed and no trailing whitespace is left where a comment was.
    The body of a C/C++ ``#if 0`` block is lexed as a comment by pygments and goes too (it is dead code).

    >>> strip_comments('int x = 1; /* set x */\\nchar *s = "/* kept */"; // note\\n', "c")
    'int x = 1;\\nchar *s = "/* kept */";\\n'

    Raises:
        ValueError: no lexer is known for *language*.
    """
    # some lexers (C, C++, Java) only see a "//" comment when a newline ends it
    added = not code.endswith(("\n", "\r"))
    text = join_tokens_without_comments(
        (ttype, text) for _, ttype, text in lex(code + "\n" if added else code, language)
    )
    return text[:-1] if added and text.endswith("\n") else text
