"""The public API: every name in ``vulnsteer.__all__`` resolves, has a usage example, and the doctests run."""

from __future__ import annotations

import doctest
import importlib
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import vulnsteer

SRC = Path(vulnsteer.__file__).parent


def _modules_with_examples() -> list[str]:
    """Every library module whose source holds a ``>>>`` example (found, not listed: none is missed; examples
    that need a real model are marked +SKIP)."""
    names = []
    for path in sorted(SRC.rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(SRC.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


DOCTEST_MODULES = _modules_with_examples()


@pytest.mark.parametrize("name", vulnsteer.__all__)
def test_every_public_name_resolves_and_shows_an_example(name: str) -> None:
    value = getattr(vulnsteer, name)
    if name in ("__version__", "SIGN_CONVENTION"):
        assert isinstance(value, str) and value
        return
    doc = inspect.getdoc(value) or ""
    assert ">>>" in doc, f"{name} has no usage example in its docstring"


def test_import_is_cheap_and_the_cli_does_not_pull_torch() -> None:
    code = "import sys, vulnsteer, vulnsteer.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'steer_everything'"):
        vulnsteer.steer_everything  # noqa: B018


@pytest.mark.parametrize("module", DOCTEST_MODULES)
def test_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def _readme_python_block() -> str:
    readme = (SRC.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    return block.split("\nconfig = ", 1)[0]  # (the protocol run after it is the protocol tests' business)


@pytest.mark.model
@pytest.mark.slow
def test_the_readme_python_example_fits_on_train_and_steers_visibly(
    embedded: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19 item 15: the README's example fits on a train split, steers so that a reader sees it (the README
    quotes the numbers), and its vector exports to GGUF (fit_vector recorded the model type)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(vulnsteer, "load_model", lambda *a, **k: embedded)  # (the session's copy: same model)
    scope: dict[str, Any] = {}
    exec(_readme_python_block(), scope)  # the README's own code, verbatim
    splits, vector, plain, steered = scope["splits"], scope["vector"], scope["plain"], scope["steered"]
    assert not {s.group for s in splits.train} & {s.group for s in splits.test}
    assert vector.provenance.model_type == "llama" and (tmp_path / "cwe-89.gguf").is_file()
    before = sum(r.score for r in plain) / len(plain)
    after = sum(r.score for r in steered) / len(steered)
    flipped = sum(a.verdict != b.verdict for a, b in zip(plain, steered))
    assert before > 0.9 and after < 0.5 and flipped >= len(plain) // 2, (before, after, flipped)
    assert scope["texts"][0].text != vulnsteer.generate_verdicts(embedded, splits.test[:1], max_new_tokens=12)[0].text
