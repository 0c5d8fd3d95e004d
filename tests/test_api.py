"""The public API: every name in ``vulnsteer.__all__`` resolves, has a usage example, and the doctests run."""

from __future__ import annotations

import doctest
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

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
