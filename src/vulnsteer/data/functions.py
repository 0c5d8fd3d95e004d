"""Splitting a source file into functions and methods with tree-sitter, keeping exact regions.

Functions are the outermost function-like definitions: a nested function or a local class stays part of the
function around it (regions never overlap), while methods of classes nested in classes are found. Per language:

* C, C++: function definitions (C++: in namespaces, classes and templates; a template's ``template <...>`` line
  and a definition's qualified name ``ns::A::f`` are kept);
* Java: methods, constructors and record compact constructors with a body (annotations included), in classes,
  interfaces, enums and records at any depth;
* JavaScript, TypeScript (``.tsx`` too): function declarations, methods, class fields holding a function, and
  function expressions or arrow functions assigned to a name (``const f = () => ...``, ``exports.f = function``,
  ``{k: function () {}}``) with the assignment statement as their region; other anonymous functions outside a
  function (``app.get('/u', (req, res) => ...)``) are units of their own, named after the call they are passed to;
* Python: functions and methods, their decorators included;
* Go: functions and methods (named ``(*T).Name`` after the receiver).

A file whose language has no grammar here (or when tree-sitter is not installed), a file the parser cannot read,
and a file without any function are one whole-file unit, and :class:`SplitResult` says why.

**C and C++ the parser loses its way in** (macros in a function's signature or body, ``#ifdef`` branches that open
braces): tree-sitter's error recovery can swallow the rest of the file into one error node, so every function after
the first it cannot read would go unscored (zlib's ``inflate.c``: 13 of its 23 functions, ``inflate`` itself among
them). So where a parse had errors, the file is also read in chunks, each ending at a line that is only ``}``
(where C functions end): a chunk holding a line that looks like a function's head outside every function found is
parsed on its own, so one function's confusion stays in it, and its functions join the others (never overlapping
them); a chunk whose function still does not parse is one unit from that head (named by the identifier before its
``(``), so the code is scored all the same (:func:`_recovered`).

>>> splitter = FunctionSplitter()
>>> result = splitter.split("def f(x):\\n    return x\\n", "python")  # doctest: +SKIP
>>> [(u.name, u.region.start_line, u.region.end_line) for u in result.units]  # doctest: +SKIP
[('f', 1, 2)]
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

from .region import Region, TextIndex

__all__ = ["GRAMMARS", "CodeUnit", "FunctionSplitter", "SplitResult", "grammar_for", "tree_sitter_available"]

#: vulnsteer language -> tree-sitter grammar name (``.tsx`` files use ``tsx``, see :func:`grammar_for`).
GRAMMARS: dict[str, str] = {
    "c": "c",
    "cpp": "cpp",
    "java": "java",
    "javascript": "javascript",
    "typescript": "typescript",
    "python": "python",
    "go": "go",
}

# Node types that are function units when they are not inside another function.
_FUNCTIONS: dict[str, frozenset[str]] = {
    "c": frozenset({"function_definition"}),
    "cpp": frozenset({"function_definition"}),
    "java": frozenset({"method_declaration", "constructor_declaration", "compact_constructor_declaration"}),
    "javascript": frozenset(
        {
            "function_declaration",
            "generator_function_declaration",
            "method_definition",
            "function_expression",
            "function",
            "generator_function",
            "arrow_function",
        }
    ),
    "python": frozenset({"function_definition"}),
    "go": frozenset({"function_declaration", "method_declaration"}),
}
_FUNCTIONS["typescript"] = _FUNCTIONS["javascript"]
# Node types whose name qualifies the functions inside them (classes, namespaces ...).
_CONTAINERS = frozenset(
    {
        "class_declaration",
        "abstract_class_declaration",
        "class_definition",
        "class_specifier",
        "struct_specifier",
        "union_specifier",
        "namespace_definition",
        "interface_declaration",
        "enum_declaration",
        "record_declaration",
        "class",
    }
)
# Wrappers whose text belongs to the function they wrap (decorators, template headers, ``export``).
_WRAPPERS = frozenset({"decorated_definition", "template_declaration", "export_statement"})
# Declarator nodes that hold a C/C++ function's name.
_NAME_NODES = frozenset(
    {
        "identifier",
        "field_identifier",
        "qualified_identifier",
        "destructor_name",
        "operator_name",
        "template_function",
        "operator_cast",
    }
)
_METHOD_TYPES = frozenset({"method_definition", "method_declaration"})
_CONSTRUCTOR_TYPES = frozenset({"constructor_declaration", "compact_constructor_declaration"})


@dataclass(frozen=True)
class CodeUnit:
    """One function (or a whole file) of a source file.

    >>> CodeUnit("f", "function", Region(1, 1, 2, 12), "def f():\\n    return 1").region.end_line
    2

    Attributes:
        name: qualified name (``Outer.Inner.method``, ``ns::A::f``, ``(*T).Name``; ``<file>`` for a whole file).
        kind: ``function``, ``method``, ``constructor`` or ``file``.
        region: where it is (SARIF semantics: :mod:`vulnsteer.data.region`).
        text: the source text the region covers, exactly.
        indent: whitespace before the unit on its first line (to dedent the text for the model).
    """

    name: str
    kind: str
    region: Region
    text: str
    indent: str = ""


@dataclass(frozen=True)
class SplitResult:
    """The units of one file and how they were found.

    >>> FunctionSplitter().split("x = 1\\n", "ruby").whole_file
    'no grammar'

    Attributes:
        units: the functions, or one whole-file unit.
        whole_file: why the file is one unit (``no grammar``, ``tree-sitter not installed``, ``parse failed``,
            ``no functions``), or None when it was split.
        parse_errors: the parser met syntax it could not read (functions outside those places are still found).
    """

    units: list[CodeUnit]
    whole_file: str | None = None
    parse_errors: bool = False


def tree_sitter_available() -> bool:
    """True when ``tree_sitter_language_pack`` imports (``pip install 'vulnsteer[scan]'``).

    >>> isinstance(tree_sitter_available(), bool)
    True
    """
    try:
        importlib.import_module("tree_sitter_language_pack")
    except ImportError:
        return False
    return True


def grammar_for(language: str, suffix: str = "") -> str | None:
    """The tree-sitter grammar for a language (``tsx`` for ``.tsx`` files), or None when there is none here.

    >>> grammar_for("typescript", ".tsx"), grammar_for("cpp"), grammar_for("ruby")
    ('tsx', 'cpp', None)
    """
    if language == "typescript" and suffix.lower() == ".tsx":
        return "tsx"
    return GRAMMARS.get(language)


def _text(node: Any) -> str:
    return bytes(node.text).decode("utf-8", errors="replace")


def _declarator_name(node: Any) -> str | None:
    """The name in a C/C++ declarator chain (through pointer, reference and parenthesised declarators)."""
    current = node
    for _ in range(32):
        if current is None:
            return None
        if current.type in _NAME_NODES:
            return _text(current)
        nxt = current.child_by_field_name("declarator")
        if nxt is None:
            nxt = next((c for c in current.named_children if c.type not in ("parameter_list", "attribute")), None)
        current = nxt
    return None


def _call_name(node: Any) -> str:
    """``<callback of app.get>`` for a function passed to a call, ``<anonymous>`` otherwise."""
    parent = node.parent
    if parent is not None and parent.type == "arguments" and parent.parent is not None:
        callee = parent.parent.child_by_field_name("function")
        if callee is not None:
            return f"<callback of {' '.join(_text(callee).split())[:60]}>"
    return "<anonymous>"


class FunctionSplitter:
    """Splits source text into :class:`CodeUnit` s; holds one tree-sitter parser per grammar, made on first use.

    Not thread-safe (tree-sitter parsers are not): give each thread its own splitter.

    >>> [u.name for u in FunctionSplitter().split("int f(void) { return 0; }", "c").units]  # doctest: +SKIP
    ['f']
    """

    def __init__(self) -> None:
        self._parsers: dict[str, Any] = {}
        self._missing: dict[str, str] = {}

    def _parser(self, grammar: str) -> tuple[Any, str | None]:
        if grammar in self._parsers:
            return self._parsers[grammar], None
        if grammar in self._missing:
            return None, self._missing[grammar]
        try:
            pack = importlib.import_module("tree_sitter_language_pack")
        except ImportError:
            self._missing[grammar] = "tree-sitter not installed"
            return None, self._missing[grammar]
        try:
            parser = pack.get_parser(grammar)
        except Exception:  # a missing grammar, or a language pack that wants to download it (>= 1.0)
            self._missing[grammar] = "no grammar"
            return None, self._missing[grammar]
        self._parsers[grammar] = parser
        return parser, None

    def split(self, text: str, language: str, suffix: str = "") -> SplitResult:
        """The functions of *text* (a whole file written in *language*; *suffix* picks ``tsx``)."""
        grammar = grammar_for(language, suffix)
        if grammar is None:
            return SplitResult([_whole(text)], "no grammar")
        parser, missing = self._parser(grammar)
        if parser is None:
            return SplitResult([_whole(text)], missing)
        data = text.encode("utf-8")
        try:
            tree = parser.parse(data)
        except Exception:
            return SplitResult([_whole(text)], "parse failed")
        root = tree.root_node
        index = TextIndex(text)
        units: list[CodeUnit] = []
        _collect(root, language, [], index, units)
        if language in _RECOVERED:
            units = _recovered(parser, data, root, language, index, units)
        if not units:
            return SplitResult([_whole(text)], "parse failed" if root.has_error else "no functions", root.has_error)
        return SplitResult(units, None, root.has_error)


#: Languages whose files with parse errors are also read in chunks ending at a line that is only ``}``.
_RECOVERED = frozenset({"c", "cpp"})
#: A line that ends a C function: ``}`` alone at the start of a line (a comment may follow).
_FUNCTION_END = re.compile(rb"^\}[ \t]*(?:;[ \t]*)?(?://[^\n]*|/\*.*\*/[ \t]*)?\r?$", re.MULTILINE)
#: A line that looks like a C function's head: at the start of a line, no ``#``, ``;``, ``=`` or ``[``, a name then
#: ``(``.
_FUNCTION_HEAD = re.compile(
    r"^(?!#|typedef\b|return\b|if\b|else\b|for\b|while\b|switch\b|do\b)[A-Za-z_][^;=#{}()\[\]]*?\b([A-Za-z_]\w*)\s*\(",
    re.MULTILINE,
)


def _recovered(
    parser: Any, data: bytes, root: Any, language: str, index: TextIndex, units: list[CodeUnit]
) -> list[CodeUnit]:
    """*units* and, where the parse of *root* had errors, the functions whose head lies outside every unit, read
    again in chunks (see the module docstring); a recovered unit never overlaps one of *units*. The test
    ``test_c_functions_after_one_the_parser_loses_its_way_in_are_still_found`` shows one."""
    if not root.has_error:
        return units
    covered = [(u.region.start_line, u.region.end_line) for u in units]

    def free(line: int, last: int | None = None) -> bool:
        return not any(a <= (last if last is not None else line) and line <= b for a, b in covered)

    out = list(units)
    for start, end in _chunks(data, 0, len(data)):
        first, stop = index.char_offset(start), index.char_offset(end)
        heads = _heads(index, first, stop)
        if not any(free(_line(index, h)) for h in heads):
            continue
        found: list[CodeUnit] = []
        _collect(_parse_range(parser, data, start, end).root_node, language, [], index, found)
        found = [u for u in found if free(u.region.start_line, u.region.end_line)]
        inside = [(u.region.start_line, u.region.end_line) for u in found]
        rest = [h for h in heads if free(_line(index, h)) and not any(a <= _line(index, h) <= b for a, b in inside)]
        if rest:  # (a function that does not parse even alone: one unit from its head to the chunk's end, in place
            # of what the chunk's parse made of it, unless that would overlap a function found before)
            begin = rest[0].start()
            head = CodeUnit(rest[0].group(1), "function", index.region(begin, stop), index.text[begin:stop])
            if free(head.region.start_line, head.region.end_line):
                found = [u for u in found if u.region.end_line < head.region.start_line] + [head]
        covered += [(u.region.start_line, u.region.end_line) for u in found]
        out.extend(found)
    return sorted(out, key=lambda u: (u.region.start_line, u.region.start_column))


def _heads(index: TextIndex, first: int, stop: int) -> list[re.Match[str]]:
    """The lines of ``index.text[first:stop]`` that look like a function's head: :data:`_FUNCTION_HEAD`, its
    parameters' ``)`` followed by ``{`` or (K&R C) parameter declarations and then ``{``; a prototype or a macro
    call (``)`` then ``;``, or another call before any ``{``) is not a head."""
    text, out = index.text, []
    for head in _FUNCTION_HEAD.finditer(text, first, stop):
        depth, at = 0, head.end() - 1
        while at < stop:
            depth += (text[at] == "(") - (text[at] == ")")
            if depth == 0:
                break
            at += 1
        brace = text.find("{", at + 1, stop)
        between = text[at + 1 : brace]  # (K&R parameter declarations, else nothing)
        if depth == 0 and brace != -1 and "(" not in between and not between.lstrip().startswith((";", ",", ")")):
            out.append(head)
    return out


def _line(index: TextIndex, head: re.Match[str]) -> int:
    return index.position(head.start())[0]


def _parse_range(parser: Any, data: bytes, start: int, end: int) -> Any:
    """The tree of ``data[start:end]`` parsed alone, its positions those of *data* (the parser's included range;
    reset after)."""
    from tree_sitter import Range

    def point(at: int) -> tuple[int, int]:
        return data.count(b"\n", 0, at), at - (data.rfind(b"\n", 0, at) + 1)

    parser.included_ranges = [Range(point(start), point(end), start, end)]
    try:
        return parser.parse(data)
    finally:
        parser.included_ranges = []


def _chunks(data: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """Byte ranges of ``data[start:end]``, each ending after a line that is only ``}`` (the last: what remains, if
    it holds anything but whitespace)."""
    out, at = [], start
    for match in _FUNCTION_END.finditer(data, start, end):
        out.append((at, match.end()))
        at = match.end()
    if data[at:end].strip():
        out.append((at, end))
    return out


def _whole(text: str) -> CodeUnit:
    index = TextIndex(text)
    return CodeUnit("<file>", "file", index.region(0, len(text)), text)


def _separator(language: str) -> str:
    return "::" if language == "cpp" else "."


def _container_name(node: Any) -> str | None:
    name = node.child_by_field_name("name")
    return _text(name) if name is not None else None


def _collect(node: Any, language: str, scope: list[str], index: TextIndex, out: list[CodeUnit]) -> None:
    """Depth-first: a function node becomes a unit and is not entered; a container adds its name to *scope*."""
    functions = _FUNCTIONS[language]
    for child in node.named_children:
        target = child
        if child.type in _WRAPPERS:
            inner = child.child_by_field_name("definition")
            if inner is None:
                inner = child.child_by_field_name("declaration")
            if inner is None:
                inner = next((c for c in child.named_children if c.type in functions or c.type in _CONTAINERS), None)
            if inner is not None and inner.type in functions:
                target = inner
            elif inner is not None and inner.type in _CONTAINERS:
                _enter_container(inner, language, scope, index, out)
                continue
        if target.type in functions and _has_body(target, language):
            unit = _unit(child, target, language, scope, index)
            if unit is not None:
                out.append(unit)
                continue
        if child.type in _CONTAINERS:
            _enter_container(child, language, scope, index, out)
        else:
            _collect(child, language, scope, index, out)


def _enter_container(node: Any, language: str, scope: list[str], index: TextIndex, out: list[CodeUnit]) -> None:
    name = _container_name(node)
    _collect(node, language, [*scope, name] if name else scope, index, out)


def _has_body(node: Any, language: str) -> bool:
    if language in ("java", "go"):
        return node.child_by_field_name("body") is not None
    return True


def _unit(region_node: Any, node: Any, language: str, scope: list[str], index: TextIndex) -> CodeUnit | None:
    """A unit for function *node* (its region from *region_node*, which may be a decorator/template wrapper)."""
    name, kind, region_node = _name_and_kind(region_node, node, language, bool(scope))
    if name is None:
        return None
    qualified = _separator(language).join([*scope, name]) if not name.startswith("<") else name
    start = index.char_offset(region_node.start_byte)
    end = index.char_offset(region_node.end_byte)
    line_start = index.offset(index.position(start)[0], 1)
    before = index.text[line_start:start]
    return CodeUnit(
        qualified, kind, index.region(start, end), index.text[start:end], before if not before.strip() else ""
    )


def _name_and_kind(region_node: Any, node: Any, language: str, in_scope: bool) -> tuple[str | None, str, Any]:
    """(name, kind, region node) of a function node; the region grows to the statement that names it."""
    kind = "method" if in_scope or node.type in _METHOD_TYPES else "function"
    if node.type in _CONSTRUCTOR_TYPES:
        kind = "constructor"
    if language in ("c", "cpp"):
        name = _declarator_name(node.child_by_field_name("declarator"))
        return name, kind, region_node
    if language == "go" and node.type == "method_declaration":
        receiver = node.child_by_field_name("receiver")
        param = receiver.named_children[0] if receiver is not None and receiver.named_children else None
        rtype = param.child_by_field_name("type") if param is not None else None
        rname = _text(rtype) if rtype is not None else "?"
        name_node = node.child_by_field_name("name")
        label = f"({rname})" if rname.startswith("*") else rname
        return f"{label}.{_text(name_node) if name_node is not None else '?'}", "method", region_node
    name_node = node.child_by_field_name("name")
    if name_node is not None:
        name = _text(name_node)
        if name == "constructor" and node.type == "method_definition":
            kind = "constructor"
        return name, kind, region_node
    if node.type == "compact_constructor_declaration":
        return "<init>", "constructor", region_node
    return _assigned_name(node)


def _assigned_name(node: Any) -> tuple[str | None, str, Any]:
    """An anonymous JS/TS function: the name it is assigned to, and the statement doing it."""
    parent = node.parent
    if parent is None:
        return None, "function", node
    if parent.type == "variable_declarator" and parent.child_by_field_name("value") == node:
        name_node = parent.child_by_field_name("name")
        declaration = parent.parent
        single = declaration is not None and len(declaration.named_children) == 1
        if single and declaration.parent is not None and declaration.parent.type == "export_statement":
            declaration = declaration.parent
        return (_text(name_node) if name_node else None), "function", declaration if single else parent
    if parent.type == "assignment_expression" and parent.child_by_field_name("right") == node:
        left = parent.child_by_field_name("left")
        above = parent.parent
        statement = above if above is not None and above.type == "expression_statement" else parent
        return (" ".join(_text(left).split()) if left else None), "function", statement
    if parent.type == "pair" and parent.child_by_field_name("value") == node:
        key = parent.child_by_field_name("key")
        return (_text(key) if key else None), "method", parent
    if parent.type in ("field_definition", "public_field_definition") and parent.child_by_field_name("value") == node:
        key = parent.child_by_field_name("property") or parent.child_by_field_name("name")
        return (_text(key) if key else None), "method", parent
    return _call_name(node), "function", node
