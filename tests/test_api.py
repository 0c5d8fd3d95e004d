"""The public API: every name in ``vulnsteer.__all__`` resolves, has a usage example, and the doctests run."""

from __future__ import annotations

import doctest
import importlib
import inspect
import subprocess
import sys

import pytest

import vulnsteer

#: Modules whose doctests run without a model (the others' examples need one and are marked +SKIP).
DOCTEST_MODULES = [
    "vulnsteer.data.builtin",
    "vulnsteer.data.sample",
    "vulnsteer.data.text",
    "vulnsteer.detection.records",
    "vulnsteer.experiment.config",
    "vulnsteer.experiment.grid",
    "vulnsteer.experiment.prepare",
    "vulnsteer.experiment.protocol",
    "vulnsteer.experiment.rundir",
    "vulnsteer.experiment.select",
    "vulnsteer.experiment.values",
    "vulnsteer.io",
    "vulnsteer.lm.activations",
    "vulnsteer.lm.model",
    "vulnsteer.lm.prompts",
    "vulnsteer.report.markdown",
    "vulnsteer.stats.compare",
]


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
