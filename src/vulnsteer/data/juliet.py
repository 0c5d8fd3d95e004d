"""Juliet test suite (C/C++ 1.3, Java 1.2): turn test cases into de-labelled vulnerable/secure samples.

Choices:

* **Case** = one flow variant of one functional variant in one directory, e.g.
  ``CWE416_Use_After_Free__malloc_free_char_63``. Multi-file cases (``_63a.c`` + ``_63b.c``;
  ``_81a.cpp`` + ``_81_bad.cpp`` + ``_81_goodG2B.cpp`` + ``_81.h``; ``_01_bad.cpp`` + ``_01_good1.cpp``) are
  **bundled, not skipped**: every file of the case is read and each sample holds the entry function *plus* the
  helpers of the same role from all the case's files (``bad()`` + ``…_63b_badSink()``; ``goodG2B()`` +
  ``…_63b_goodG2BSink()``), so the flaw, which often sits in the sink of the ``b`` file, is inside the sample.
  Helpers without a role in their name (``staticReturnsTrue``, the abstract base class of ``_81``) are left
  out of both sides alike. A case is skipped (and counted) only when it has no ``bad`` or no good entry function.
* **Samples**: one ``vulnerable`` sample per case (``bad`` and its helpers) and one ``secure`` sample per good
  entry function (``goodG2B``, ``goodB2G``, ``good1``, ``goodG2B1`` … with their helpers). The dispatcher
  ``good()``, which only calls the others, is dropped. All samples of a case share ``pair_id`` = the case id,
  so a "pair" is a case (``count_by_cwe`` counts each case with both labels once).
* **De-labelling**: comments are removed with the pygments lexer (:mod:`vulnsteer.data.clean`), and every
  identifier carrying the label is renamed: entry functions ``bad``/``goodG2B``/… -> ``process``; helpers
  lose the role word (``badSink`` and ``goodG2BSink`` -> ``sink``, ``BadClass``/``GoodClass`` -> ``Class``,
  ``badData`` -> ``data``, or ``sharedData`` when ``data`` is already taken); identifiers that would end up
  with the same name are numbered instead (``dataBadBuffer``/``dataGoodBuffer`` -> ``dataBuffer1``/
  ``dataBuffer2``, in an order drawn from a hash of the case id, so the number says nothing about the label:
  merging them would make the vulnerable and the fixed code identical); identifiers with a test-case
  prefix (``CWE416_…_63b_badSink``) lose the prefix; a bare test-case name (the Java class) becomes ``Module``.
  Role words inside string literals are neutralised the same way (``"Good"`` -> ``"Text"``, ``"bad()"`` ->
  ``"process()"``). ``static``/``public``/``private``/``protected`` are dropped from function headers
  (``static void goodG2B()`` vs ``void bad()`` would give the label away).
* **Split group** = functional variant (file name without ``_NN[a-e]``), so flow copies never straddle splits.
* **CWE**: from the file-name prefix, mapped to the project's CWE list (23/36 -> 22, 121/122/124 -> 787,
  126/127 -> 125, 80/81/83 -> 79, others their own number); the Juliet CWE stays in ``meta["juliet_cwe"]``.
"""

from __future__ import annotations

import hashlib
import keyword
import re
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pygments.token import _TokenType

from vulnsteer.data.clean import TokenList, join_tokens_without_comments, lex, token_kind
from vulnsteer.data.sample import SECURE, VULNERABLE, Sample

__all__ = [
    "JULIET_CWE_MAP",
    "FunctionUnit",
    "JulietCase",
    "JulietName",
    "extract_units",
    "find_juliet_files",
    "group_cases",
    "juliet_cwe",
    "parse_case",
    "parse_juliet_name",
    "render_units",
]

#: Juliet CWE directories that map onto a parent CWE of the project's list.
JULIET_CWE_MAP: dict[int, int] = {
    23: 22,
    36: 22,
    121: 787,
    122: 787,
    124: 787,
    126: 125,
    127: 125,
    80: 79,
    81: 79,
    83: 79,
}

_EXT_LANG = {".c": "c", ".h": "c", ".cpp": "cpp", ".java": "java"}

# CWE416_Use_After_Free__malloc_free_char_63b.c, ..._81_goodG2B.cpp, ..._81.h, ..._01_good1.cpp
_FILE_RE = re.compile(
    r"^(?P<variant>CWE(?P<cwe>\d+)_\w*?)_(?P<flow>\d{2})(?P<part>[a-e]|_bad|_good\w*)?\.(?P<ext>c|cpp|h|java)$"
)
# identifiers carrying a test-case prefix: CWE476_..._81_bad, CWE416_..._63b_badSink, CWE89_..._01 (Java class)
_PREFIX_RE = re.compile(r"^CWE\d+_\w*_\d{2}[a-e]?(?:_(?P<rest>\w*))?$")
_ROLE_RE = re.compile(r"(?:(?<![A-Za-z])(?P<low>bad|good)|(?P<up>Bad|Good))(?P<kind>G2B|B2G)?(?P<num>\d*)(?![a-z])")
_ENTRY_RE = re.compile(r"^(?:bad|good(?:G2B|B2G)?\d*)$")
_WORD_RE = re.compile(r"[A-Za-z_]\w*")
#: Juliet string literals whose wording gives the label away (mostly printed in good-side dead branches)
_LEAKY_STRINGS = {"Benign, fixed string": "Constant string"}
_MODIFIERS = frozenset({"static", "public", "private", "protected"})
_TYPE_KEYWORDS = frozenset({"class", "struct", "union", "enum", "namespace", "interface"})
_ACCESS = frozenset({"public", "private", "protected"})
#: names a renamed identifier must not become (C, C++, Java keywords; a few common library names)
_RESERVED = frozenset(keyword.kwlist) | frozenset(
    [
        "auto",
        "break",
        "case",
        "char",
        "class",
        "const",
        "continue",
        "default",
        "delete",
        "do",
        "double",
        "else",
        "enum",
        "extern",
        "float",
        "for",
        "goto",
        "if",
        "int",
        "long",
        "new",
        "private",
        "protected",
        "public",
        "register",
        "return",
        "short",
        "signed",
        "sizeof",
        "static",
        "struct",
        "switch",
        "this",
        "throw",
        "typedef",
        "union",
        "unsigned",
        "void",
        "volatile",
        "while",
        "boolean",
        "byte",
        "final",
        "abstract",
        "interface",
        "package",
        "super",
        "synchronized",
        "throws",
        "transient",
        "native",
        "strictfp",
        "catch",
        "try",
        "namespace",
        "template",
        "typename",
        "virtual",
        "operator",
        "friend",
        "inline",
        "bool",
        "main",
    ]
)


def juliet_cwe(number: int) -> str:
    """The project CWE for a Juliet CWE directory number (``23`` -> ``CWE-22``)."""
    return f"CWE-{JULIET_CWE_MAP.get(number, number)}"


@dataclass(frozen=True)
class JulietName:
    """What a Juliet file name says about the file."""

    variant: str  # functional variant: file name without _NN[a-e]
    flow: str  # flow variant: "01", "63", ...
    cwe_number: int
    language: str

    @property
    def case_id(self) -> str:
        return f"{self.variant}_{self.flow}"


def parse_juliet_name(path: Path) -> JulietName | None:
    """Parse a Juliet test-case file name; None for files that are not test-case files."""
    match = _FILE_RE.match(path.name)
    if match is None:
        return None
    language = _EXT_LANG["." + match.group("ext")]
    return JulietName(match.group("variant"), match.group("flow"), int(match.group("cwe")), language)


def find_juliet_files(root: Path) -> list[Path]:
    """All Juliet test-case files below *root* (or *root* itself when it is such a file), sorted."""
    if root.is_file():
        return [root] if parse_juliet_name(root) else []
    return sorted(p for p in root.rglob("CWE*") if p.is_file() and parse_juliet_name(p) is not None)


@dataclass
class JulietCase:
    """The files of one test case (one flow variant of one functional variant, in one directory)."""

    case_id: str
    variant: str
    cwe_number: int
    files: list[Path] = field(default_factory=list)

    @property
    def multi_file(self) -> bool:
        return sum(1 for f in self.files if f.suffix != ".h") > 1


def _file_order(path: Path) -> tuple[int, str]:
    # headers first (class declarations), then a, b, c ..., then the _bad / _goodX files
    return (0 if path.suffix == ".h" else 1, path.name)


def group_cases(files: Iterable[Path]) -> list[JulietCase]:
    """Group test-case files into cases, in a stable order."""
    cases: dict[tuple[Path, str], JulietCase] = {}
    for path in files:
        name = parse_juliet_name(path)
        if name is None:
            continue
        key = (path.parent, name.case_id)
        case = cases.setdefault(key, JulietCase(name.case_id, name.variant, name.cwe_number))
        case.files.append(path)
    for case in cases.values():
        case.files.sort(key=_file_order)
    return [cases[k] for k in sorted(cases, key=lambda k: (str(k[0]), k[1]))]


@dataclass
class FunctionUnit:
    """A top-level function definition (or a role-named class) cut out of a file's token stream."""

    name: str  # as written, possibly qualified: "CWE..._81_bad::action", "goodG2B", "BadClass"
    tokens: list[tuple[_TokenType, str]]
    name_index: int  # index in tokens of the name (function units); the header ends there
    is_class: bool = False


def _significant(ttype: _TokenType) -> bool:
    """Not whitespace, not a comment, not a preprocessor directive."""
    return token_kind(ttype) not in ("whitespace", "comment", "preproc")


def _line_start(toks: TokenList, first: int) -> int:
    """Token index where the line holding token *first* starts."""
    i = first
    while i > 0 and "\n" not in toks[i - 1][2]:
        i -= 1
    return i


def _function_name(head: list[int], toks: TokenList) -> tuple[str, int] | None:
    """Name and name-token index of a function definition head, or None when *head* is not one."""
    if not head or toks[head[0]][2] in _TYPE_KEYWORDS:
        return None
    depth = 0
    for pos, idx in enumerate(head):
        kind, text = token_kind(toks[idx][1]), toks[idx][2]
        if kind == "operator" and text == "=" and depth == 0 and (pos == 0 or toks[head[pos - 1]][2] != "operator"):
            return None  # an initialiser "int x[] = {", not a function
        if kind == "punctuation" and text == "(":
            if depth == 0 and pos > 0:
                prev_type, prev = toks[head[pos - 1]][1], toks[head[pos - 1]][2]
                decorator = token_kind(prev_type) == "name" and prev.startswith("@")
                if not decorator and (token_kind(prev_type) in ("name", "operator") or prev == "operator"):
                    return _qualified_name(head[:pos], toks)
            depth += 1
        elif kind == "punctuation" and text == ")":
            depth -= 1
    return None


def _qualified_name(head: list[int], toks: TokenList) -> tuple[str, int] | None:
    i = len(head) - 1
    last_kind, last = token_kind(toks[head[i]][1]), toks[head[i]][2]
    if last_kind == "operator" and i > 0 and toks[head[i - 1]][2] == "operator":
        parts = ["operator", last]  # operator= / operator()
        name_index = head[i - 1]
        i -= 2
    elif last_kind == "name":
        parts = [last]
        name_index = head[i]
        i -= 1
    else:
        return None
    while i >= 0:
        text = toks[head[i]][2]
        if text in ("::", "~") or (token_kind(toks[head[i]][1]) == "name" and parts[0] == "::"):
            parts.insert(0, text)
            i -= 1
            continue
        break
    return "".join(parts), name_index


def _local(identifier: str) -> str:
    """Identifier without its ``CWE<n>_…_NN[a-e]_`` test-case prefix (``""`` when nothing is left)."""
    match = _PREFIX_RE.match(identifier)
    if match is None:
        return identifier
    return match.group("rest") or ""


def extract_units(toks: TokenList) -> list[FunctionUnit]:
    """Top-level function definitions and role-named classes/structs of one file, in file order.

    A function definition is a ``{`` outside any function body whose declaration head holds a parameter list
    (``name(...)``), at file, namespace or class level. Member functions of a role-named class (``BadClass``)
    belong to the class unit instead of being units of their own.
    """
    units: list[FunctionUnit] = []
    head: list[int] = []
    blocks: list[tuple[str, int]] = []  # open non-function blocks: (name, start token index)
    class_level: int | None = None  # depth in blocks of the open role-named class
    func_depth = 0
    func_start = func_name_index = 0
    func_name = ""
    n = len(toks)
    i = 0
    while i < n:
        ttype, text = toks[i][1], toks[i][2]
        kind = token_kind(ttype)
        if func_depth:
            if kind == "punctuation" and text in "{}":
                func_depth += 1 if text == "{" else -1
                if func_depth == 0 and class_level is None:
                    body = [(t, s) for _, t, s in toks[func_start : i + 1]]
                    units.append(FunctionUnit(func_name, body, func_name_index - func_start))
            i += 1
            continue
        if kind in ("whitespace", "comment", "preproc"):
            i += 1
            continue
        if kind == "punctuation" and text == "{":
            found = _function_name(head, toks)
            if found is not None:
                func_depth = 1
                func_name, func_name_index = found
                func_start = _line_start(toks, head[0])
            else:
                block_kind, name = _block_kind(head, toks)
                blocks.append((name, _line_start(toks, head[0]) if head else i))
                if class_level is None and block_kind in ("class", "struct") and _ROLE_RE.search(_local(name)):
                    class_level = len(blocks) - 1
            head = []
        elif kind == "punctuation" and text == "}":
            if blocks:
                name, start = blocks.pop()
                if class_level is not None and class_level == len(blocks):
                    j = i + 1
                    while j < n and not _significant(toks[j][1]):
                        j += 1
                    end = j if j < n and toks[j][2] == ";" else i
                    units.append(FunctionUnit(name, [(t, s) for _, t, s in toks[start : end + 1]], 0, True))
                    class_level = None
                    i = end
            head = []
        elif text == ";" or (text == ":" and len(head) == 1 and toks[head[0]][2] in _ACCESS):
            head = []
        else:
            head.append(i)
        i += 1
    return units


def _block_kind(head: list[int], toks: TokenList) -> tuple[str, str]:
    for pos, idx in enumerate(head):
        text = toks[idx][2]
        if text in _TYPE_KEYWORDS:
            name = next((toks[j][2] for j in head[pos + 1 :] if token_kind(toks[j][1]) == "name"), "")
            return text, name
    return "block", ""


def _role_key(name: str) -> str | None:
    """``bad``, ``goodG2B``, ``goodB2G1``, ``good1``, ``good`` … for a (qualified) name; None without a role."""
    for part in re.split(r"::|~", name):
        match = _ROLE_RE.search(_local(part))
        if match:
            word = (match.group("low") or match.group("up") or "").lower()
            return word + (match.group("kind") or "") + match.group("num")
    return None


def _is_entry(name: str) -> bool:
    return "::" not in name and bool(_ENTRY_RE.match(_local(name)))


def _helper_matches(helper_key: str, entry_key: str) -> bool:
    """Does a helper with role *helper_key* belong to the entry function *entry_key*?"""
    if helper_key == entry_key:
        return True
    if "bad" in (helper_key, entry_key):
        return False
    if helper_key == "good":  # GoodClass, helperGood: shared by every good entry
        return True
    # goodB2GSink serves goodB2G1 and goodB2G2; goodB2G1Sink serves goodB2G1 only
    return not any(c.isdigit() for c in helper_key) and entry_key.rstrip("0123456789") == helper_key


def _neutral(identifier: str) -> tuple[str, bool] | None:
    """Label-free replacement for *identifier*, None to keep it; the flag means "nothing left but the role"."""
    prefixed = _PREFIX_RE.match(identifier)
    if prefixed is not None:
        local = prefixed.group("rest") or ""
        if not local:
            return "Module", False  # the test-case name itself (Java class, C++ namespace)
    elif re.match(r"^CWE\d+_", identifier):
        return "Module", False
    else:
        local = identifier
    match = _ROLE_RE.search(local)
    if match is None:
        return (local, False) if prefixed is not None else None
    rest = (local[: match.start()] + local[match.end() :]).strip("_")
    if not rest:
        return "", True
    if match.group("low") and match.start() == 0:
        rest = rest[0].lower() + rest[1:]  # badSink -> sink, BadClass -> Class
    return rest, False


def _rename_map(names: Iterable[str], keep: set[str], class_names: set[str], seed: str) -> dict[str, str]:
    """Label-free names for the label-carrying identifiers among *names*; injective within one sample.

    Two identifiers that would get the same name (``dataBadBuffer`` and ``dataGoodBuffer`` -> ``dataBuffer``)
    are numbered instead (``dataBuffer1``/``dataBuffer2``), in an order drawn from a hash of *seed* and the
    original name, so "which one got 1" says nothing about the label.
    """
    wanted: dict[str, str] = {}
    for identifier in names:
        if identifier in wanted:
            continue
        found = _neutral(identifier)
        if found is None:
            continue
        new, empty = found
        if empty:
            new = "Impl" if identifier in class_names else "process"
        if new in _RESERVED:
            new += "Value"
        if new in keep:
            new = "shared" + new[0].upper() + new[1:]
        wanted[identifier] = new
    groups: dict[str, list[str]] = {}
    for identifier, new in wanted.items():
        groups.setdefault(new, []).append(identifier)
    out: dict[str, str] = {}
    for new, members in groups.items():
        if len(members) == 1:
            out[members[0]] = new
            continue
        members.sort(key=lambda m: hashlib.sha1(f"{seed}:{m}".encode()).hexdigest())
        for number, identifier in enumerate(members, 1):
            out[identifier] = f"{new}{number}"
    return out


@dataclass
class _Renamer:
    """Renames label-carrying identifiers consistently within one sample."""

    mapping: dict[str, str]

    def __call__(self, identifier: str) -> str:
        if "::" in identifier:  # pygments lexes "Class::method" as one name in some positions
            return "::".join(self(part) if part else part for part in identifier.split("::"))
        return self.mapping.get(identifier, identifier)

    def in_string(self, text: str) -> str:
        """Neutralise role words inside a string literal: ``"Good"`` -> ``"Text"``, ``"bad()"`` -> ``"process()"``."""

        def swap(match: re.Match[str]) -> str:
            word = match.group(0)
            if _ROLE_RE.search(word) is None and not word.startswith("CWE"):
                return word
            if _ENTRY_RE.match(word):
                return "process"
            found = _neutral(word)
            if found is None:
                return word
            new, empty = found
            if empty:
                return "Text" if word[:1].isupper() else "text"
            return new

        for leaky, plain in _LEAKY_STRINGS.items():
            text = text.replace(leaky, plain)
        return _WORD_RE.sub(swap, text)


def _neighbour(toks: list[tuple[_TokenType, str]], i: int, step: int) -> str:
    j = i + step
    while 0 <= j < len(toks):
        if _significant(toks[j][0]):
            return toks[j][1]
        j += step
    return ""


def render_units(units: list[FunctionUnit], seed: str = "") -> str:
    """Comment-free, de-labelled source text of *units* (one sample), joined by blank lines.

    *seed* (the case id) fixes the numbering of identifiers that would otherwise get the same neutral name.
    """
    keep: set[str] = set()
    class_names: set[str] = set()
    names: list[str] = []
    for unit in units:
        for i, (ttype, text) in enumerate(unit.tokens):
            if token_kind(ttype) != "name":
                continue
            for part in text.split("::"):
                if not part:
                    continue
                names.append(part)
                if _neutral(part) is None:
                    keep.add(part)
            if _neighbour(unit.tokens, i, 1) == "::" or _neighbour(unit.tokens, i, -1) in ("class", "struct"):
                class_names.add(text)
            if "::" in text:
                class_names.update(p for p in text.split("::")[:-1] if p)
    rename = _Renamer(_rename_map(names, keep, class_names, seed))
    parts: list[str] = []
    for unit in units:
        out: list[tuple[_TokenType, str]] = []
        dropped = False
        for i, (ttype, text) in enumerate(unit.tokens):
            kind = token_kind(ttype)
            if not unit.is_class and i < unit.name_index and kind == "keyword" and text in _MODIFIERS:
                dropped = True
                continue
            if dropped and kind == "whitespace" and "\n" not in text:
                dropped = False
                continue
            dropped = False
            if kind == "name":
                text = rename(text)
            elif kind == "string":
                text = rename.in_string(text)
            out.append((ttype, text))
        text = textwrap.dedent(join_tokens_without_comments(out)).strip("\n")
        text = "\n".join(line.rstrip() for line in text.split("\n"))
        if text.strip():
            parts.append(text)
    return "\n\n".join(parts) + "\n"


def parse_case(
    case: JulietCase,
    read_text: Callable[[Path], str],
    source_root: Path | None = None,
) -> tuple[list[Sample], str | None]:
    """The samples of one case, or ``([], reason)`` when the case cannot be used.

    *read_text* reads a file (the caller decides how to handle bad bytes); paths in ``meta["files"]`` are
    relative to *source_root* when given.
    """
    units: list[FunctionUnit] = []
    languages: set[str] = set()
    for path in case.files:
        language = "cpp" if path.suffix == ".h" else _EXT_LANG[path.suffix]
        if path.suffix != ".h":
            languages.add(language)
        text = read_text(path)
        # the stand-alone main() at the end of every C/C++ file is not needed: skip lexing it
        text = text.split("\n#ifdef INCLUDEMAIN", 1)[0]
        units.extend(extract_units(lex(text, language)))
    language = "java" if "java" in languages else "cpp" if "cpp" in languages else "c"
    entries: dict[str, FunctionUnit] = {}
    helpers: list[tuple[str, FunctionUnit]] = []
    for unit in units:
        key = _role_key(unit.name)
        if key is None:
            continue
        if not unit.is_class and _is_entry(unit.name):
            if key != "good":  # the dispatcher good() only calls the real good functions
                entries.setdefault(key, unit)
        else:
            helpers.append((key, unit))
    if "bad" not in entries:
        return [], f"{case.case_id}: no bad() function found"
    goods = [k for k in entries if k != "bad"]
    if not goods:
        return [], f"{case.case_id}: no good*() function found"
    cwe = juliet_cwe(case.cwe_number)
    source = "juliet-java" if language == "java" else "juliet-c"
    pair_id = f"{source}:{case.case_id}"
    files = [_relative(p, source_root) for p in case.files]
    samples: list[Sample] = []
    for key in ["bad", *goods]:
        entry = entries[key]
        chosen = [u for k, u in helpers if _helper_matches(k, key)]
        ordered = [u for u in units if u is entry or any(u is c for c in chosen)]
        samples.append(
            Sample(
                id=f"{pair_id}:{key}",
                code=render_units(ordered, case.case_id),
                language=language,
                cwe=cwe,
                label=VULNERABLE if key == "bad" else SECURE,
                pair_id=pair_id,
                source=source,
                group=f"{source}:{case.variant}",
                meta={
                    "juliet_cwe": f"CWE-{case.cwe_number}",
                    "juliet_case": case.case_id,
                    "juliet_function": key,
                    "functional_variant": case.variant,
                    "files": files,
                    "multi_file": case.multi_file,
                    "helpers": [u.name for u in ordered if u is not entry],
                },
            )
        )
    return samples, None


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.as_posix()
