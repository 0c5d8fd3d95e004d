"""Function splitting: exact SARIF regions in every supported language, checked against hand-written sources."""

from __future__ import annotations

import doctest
import itertools

import pytest

from checks import slice_region
from vulnsteer.data import functions as functions_module
from vulnsteer.data import region as region_module
from vulnsteer.data.functions import FunctionSplitter, tree_sitter_available
from vulnsteer.data.region import TextIndex

needs_grammars = pytest.mark.skipif(not tree_sitter_available(), reason="tree-sitter-language-pack not installed")


C_SOURCE = """#include <string.h>

/* copies a name */
static int copy(char *dst, const char *src)
{
    strcpy(dst, src);
    return 0;
}

int (*pick(int which))(int);

char *find(char *s, int c) { return strchr(s, c); }
"""

CPP_SOURCE = """namespace net {
class Conn {
public:
    Conn() : fd_(-1) {}
    ~Conn() { close(fd_); }
    int read(char *buf, int n) const {
        return ::read(fd_, buf, n);
    }
private:
    int fd_;
};
}

template <typename T>
T twice(T x) { return x + x; }

void net::Conn::reset() { fd_ = -1; }
"""

JAVA_SOURCE = """package demo;

public class Store {
    private final Map<String, String> data = new HashMap<>();

    public Store() {
        super();
    }

    @Override
    public String get(String key) {
        return data.get(key);
    }

    static class Entry {
        int size() { return 1; }
    }

    interface Visitor {
        void visit(String key);
        default void done() {}
    }
}
"""

JS_SOURCE = """const fs = require("fs");

function load(name) {
  const helper = () => name.trim();
  return fs.readFileSync(helper());
}

const save = (name, data) => {
  fs.writeFileSync(name, data);
};

class Cache {
  constructor() { this.items = {}; }
  get(key) { return this.items[key]; }
}

exports.remove = function (name) { fs.unlinkSync(name); };

app.post("/upload", (req, res) => {
  res.send(req.body);
});
"""

TS_SOURCE = """export interface Repo { find(id: string): Promise<User>; }

export class UserRepo implements Repo {
  constructor(private readonly db: Db) {}

  async find(id: string): Promise<User> {
    return this.db.one(`SELECT * FROM users WHERE id = ${id}`);
  }
}

export const hash = (s: string): string => s.split("").reverse().join("");

function overload(a: string): void;
function overload(a: unknown): void {}
"""

TSX_SOURCE = """export function Greeting({ name }: { name: string }) {
  return <div dangerouslySetInnerHTML={{ __html: name }} />;
}
"""

PY_SOURCE = '''import os


@app.route("/run")
def run(cmd: str) -> int:
    def inner():
        return cmd
    return os.system(inner())


class Handler:
    """Handles things."""

    def handle(self, path):
        with open(path) as f:
            return f.read()

    class Nested:
        async def go(self):
            await something()
'''

GO_SOURCE = """package main

import "os/exec"

type Server struct{}

func (s *Server) Run(cmd string) error {
	return exec.Command("sh", "-c", cmd).Run()
}

func (Server) Name() string { return "s" }

func main() {
	s := &Server{}
	_ = s.Run("ls")
}
"""

# (language, suffix, source, [(name, kind, exact text)]), the texts written out by hand
CASES = [
    (
        "c",
        ".c",
        C_SOURCE,
        [
            (
                "copy",
                "function",
                "static int copy(char *dst, const char *src)\n{\n    strcpy(dst, src);\n    return 0;\n}",
            ),
            ("find", "function", "char *find(char *s, int c) { return strchr(s, c); }"),
        ],
    ),
    (
        "cpp",
        ".cpp",
        CPP_SOURCE,
        [
            ("net::Conn::Conn", "method", "Conn() : fd_(-1) {}"),
            ("net::Conn::~Conn", "method", "~Conn() { close(fd_); }"),
            (
                "net::Conn::read",
                "method",
                "int read(char *buf, int n) const {\n        return ::read(fd_, buf, n);\n    }",
            ),
            ("twice", "function", "template <typename T>\nT twice(T x) { return x + x; }"),
            ("net::Conn::reset", "function", "void net::Conn::reset() { fd_ = -1; }"),
        ],
    ),
    (
        "java",
        ".java",
        JAVA_SOURCE,
        [
            ("Store.Store", "constructor", "public Store() {\n        super();\n    }"),
            (
                "Store.get",
                "method",
                "@Override\n    public String get(String key) {\n        return data.get(key);\n    }",
            ),
            ("Store.Entry.size", "method", "int size() { return 1; }"),
            ("Store.Visitor.done", "method", "default void done() {}"),
        ],
    ),
    (
        "javascript",
        ".js",
        JS_SOURCE,
        [
            (
                "load",
                "function",
                "function load(name) {\n  const helper = () => name.trim();\n  return fs.readFileSync(helper());\n}",
            ),
            ("save", "function", "const save = (name, data) => {\n  fs.writeFileSync(name, data);\n};"),
            ("Cache.constructor", "constructor", "constructor() { this.items = {}; }"),
            ("Cache.get", "method", "get(key) { return this.items[key]; }"),
            ("exports.remove", "function", "exports.remove = function (name) { fs.unlinkSync(name); };"),
            ("<callback of app.post>", "function", "(req, res) => {\n  res.send(req.body);\n}"),
        ],
    ),
    (
        "typescript",
        ".ts",
        TS_SOURCE,
        [
            ("UserRepo.constructor", "constructor", "constructor(private readonly db: Db) {}"),
            (
                "UserRepo.find",
                "method",
                "async find(id: string): Promise<User> {\n"
                "    return this.db.one(`SELECT * FROM users WHERE id = ${id}`);\n  }",
            ),
            ("hash", "function", 'export const hash = (s: string): string => s.split("").reverse().join("");'),
            ("overload", "function", "function overload(a: unknown): void {}"),
        ],
    ),
    (
        "typescript",
        ".tsx",
        TSX_SOURCE,
        [
            (
                "Greeting",
                "function",
                "export function Greeting({ name }: { name: string }) {\n"
                "  return <div dangerouslySetInnerHTML={{ __html: name }} />;\n}",
            ),
        ],
    ),
    (
        "python",
        ".py",
        PY_SOURCE,
        [
            (
                "run",
                "function",
                '@app.route("/run")\ndef run(cmd: str) -> int:\n    def inner():\n        return cmd\n'
                "    return os.system(inner())",
            ),
            (
                "Handler.handle",
                "method",
                "def handle(self, path):\n        with open(path) as f:\n            return f.read()",
            ),
            ("Handler.Nested.go", "method", "async def go(self):\n            await something()"),
        ],
    ),
    (
        "go",
        ".go",
        GO_SOURCE,
        [
            (
                "(*Server).Run",
                "method",
                'func (s *Server) Run(cmd string) error {\n\treturn exec.Command("sh", "-c", cmd).Run()\n}',
            ),
            ("Server.Name", "method", 'func (Server) Name() string { return "s" }'),
            ("main", "function", 'func main() {\n\ts := &Server{}\n\t_ = s.Run("ls")\n}'),
        ],
    ),
]


@needs_grammars
@pytest.mark.parametrize(("language", "suffix", "source", "expected"), CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
def test_functions_and_their_exact_regions(language: str, suffix: str, source: str, expected: list) -> None:  # type: ignore[type-arg]
    result = FunctionSplitter().split(source, language, suffix)
    assert result.whole_file is None
    assert not result.parse_errors
    assert [(u.name, u.kind) for u in result.units] == [(name, kind) for name, kind, _ in expected]
    for unit, (_, _, text) in zip(result.units, expected):
        assert unit.text == text
        assert slice_region(source, unit.region) == text
        assert unit.region.start_line == source[: source.index(text)].count("\n") + 1


@needs_grammars
@pytest.mark.parametrize(("language", "suffix", "source", "expected"), CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
def test_regions_survive_crlf_line_ends(language: str, suffix: str, source: str, expected: list) -> None:  # type: ignore[type-arg]
    crlf = source.replace("\n", "\r\n")
    units = FunctionSplitter().split(crlf, language, suffix).units
    plain = FunctionSplitter().split(source, language, suffix).units
    assert [u.region for u in units] == [u.region for u in plain]
    for unit, (_, _, text) in zip(units, expected):
        assert slice_region(crlf, unit.region) == text.replace("\n", "\r\n") == unit.text


@needs_grammars
def test_columns_count_code_points_not_bytes() -> None:
    source = 'const s = "é😀"; function f() { return s; }\nlet t = "日本"; const g = () => t;\n'
    units = FunctionSplitter().split(source, "javascript", ".js").units
    assert [u.name for u in units] == ["f", "g"]
    f, g = units
    assert (f.region.start_line, f.region.start_column) == (1, 17)  # 16 code points before it (19 UTF-8 bytes)
    assert f.region.end_column == 17 + len("function f() { return s; }")
    assert (g.region.start_line, g.region.start_column, g.region.end_column) == (2, 15, 15 + len("const g = () => t;"))
    for unit in units:
        assert slice_region(source, unit.region) == unit.text


@needs_grammars
def test_whole_file_when_there_is_no_function_or_the_parse_fails() -> None:
    splitter = FunctionSplitter()
    script = "import os\nprint(os.getcwd())\n"
    result = splitter.split(script, "python")
    assert result.whole_file == "no functions"
    assert [(u.name, u.kind, u.text) for u in result.units] == [("<file>", "file", script)]
    assert slice_region(script, result.units[0].region) == script
    broken = splitter.split("def (:\n  ))))\n", "python")
    assert broken.whole_file == "parse failed" and broken.parse_errors


@needs_grammars
def test_c_functions_after_one_the_parser_loses_its_way_in_are_still_found() -> None:
    """An ``#ifdef`` that opens a brace in each branch makes tree-sitter swallow the rest of the file into one
    error node (checked first); read again in chunks, every function is found with its exact region, and a
    function that does not parse even alone is still one unit from its head (macro-heavy bodies, multi-byte
    text before it)."""
    lost = "int lost(int n) {\n#ifdef X\n  if (n) {\n#else\n  if (!n) {\n#endif\n    return 1;\n  }\n  return 0;\n}\n"
    source = (
        '/* é */ static const char *s = "日本";\nint ok(void) { return 0; }\n'
        + "int lost(int n);\nEXPORT(ok);\n"  # (a prototype and a macro call: no function of their own)
        + lost
        + "static int after(char *p) PRINTF(1, 2);\nstatic const char *names[SIZE(t)] = { 0 };\n"  # (as curl has)
        + "\nstatic int after(char *p) {\n  return p[0];\n}\n"
        + "int knr(a, b)\nint a;\nint b;\n{\n  return a + b;\n}\n"  # (K&R C, as zlib before 1.2.12)
        + "struct t { int a; };\n"
        + "int ZEXPORT last(z_streamp strm)\n{\n  return 2;\n}\n"
    )
    splitter = FunctionSplitter()
    parser, _ = splitter._parser("c")
    tree = parser.parse(source.encode("utf-8"))
    assert [c.type for c in tree.root_node.named_children][-1] == "ERROR"  # what the chunks recover from
    units = splitter.split(source, "c").units
    assert [u.name for u in units] == ["ok", "lost", "after", "knr", "last"]
    for unit in units:
        assert slice_region(source, unit.region) == unit.text
    spans = [(u.region.start_line, u.region.end_line) for u in units]
    assert all(b < c for (_, b), (c, _) in itertools.pairwise(spans))  # no two overlap
    assert units[1].text == lost.rstrip("\n") and units[1].region.start_line == 5
    assert units[2].text == "static int after(char *p) {\n  return p[0];\n}"
    for cpp in (False, True):  # the same recovery in C++; a clean file is untouched
        clean = "int a(void) { return 0; }\nint b(void) { return 1; }\n"
        assert [u.name for u in splitter.split(clean, "cpp" if cpp else "c").units] == ["a", "b"]


def test_whole_file_for_a_language_without_grammar() -> None:
    result = FunctionSplitter().split("def hello\n  puts 1\nend\n", "ruby")
    assert result.whole_file == "no grammar"
    assert len(result.units) == 1 and result.units[0].kind == "file"


def test_whole_file_when_tree_sitter_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = functions_module.importlib.import_module

    def fake(name: str, *args: object) -> object:
        if name == "tree_sitter_language_pack":
            raise ImportError(name)
        return real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(functions_module.importlib, "import_module", fake)
    result = FunctionSplitter().split("int f(void) { return 0; }\n", "c")
    assert result.whole_file == "tree-sitter not installed"
    assert result.units[0].text == "int f(void) { return 0; }\n"


def test_text_index_maps_utf8_byte_offsets_to_characters() -> None:
    text = "a = 'ü'\r\nb = '€€'\rc = 1\n"
    index = TextIndex(text)
    data = text.encode("utf-8")
    for char_offset in range(len(text) + 1):
        assert index.char_offset(len(text[:char_offset].encode("utf-8"))) == char_offset
    assert index.position(text.index("c")) == (3, 1)
    assert len(data) > len(text)


def test_module_doctests() -> None:
    for module in (region_module, functions_module):
        assert doctest.testmod(module).failed == 0
