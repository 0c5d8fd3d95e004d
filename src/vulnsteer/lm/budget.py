"""Token budgets against the model's context: the code budget plus the prompt around it plus the generated tokens
must fit, or the model silently attends past its positions (and a long budget runs for tens of minutes first).

>>> fits = check_token_budget(None, None, 10**9)  # an unknown context length cannot be checked
>>> fits is None
True
"""

from __future__ import annotations

from typing import Any

from ..config.defaults import DEFAULT_MAX_CODE_TOKENS
from ..config.sections import ModelSection
from .prompts import DEFAULT_TEMPLATE, PromptTemplate, build_prompt

__all__ = ["TokenBudgetError", "check_token_budget", "fit_code_tokens", "model_budget", "prompt_overhead"]

#: Tokens allowed for the ``...`` truncation markers and for tokenising the code differently inside the prompt.
SLACK_TOKENS = 16
#: The language names whose prompt wording is longest (the overhead is measured with each, the largest kept).
_PROBE_LANGUAGES = ("javascript", "cpp", "unknown")


class TokenBudgetError(ValueError):
    """The token budget does not fit the model's context; the message names the option to change."""


def prompt_overhead(tokenizer: Any, template: PromptTemplate = DEFAULT_TEMPLATE) -> int:
    """Tokens of the prompt around the code (chat template, question, answer format, ``Answer:``), plus the
    longer answer word's tokens (logit mode teacher-forces them) and :data:`SLACK_TOKENS`.

    >>> from types import SimpleNamespace
    >>> tok = SimpleNamespace(chat_template=None, encode=lambda text, add_special_tokens=False: text.split())
    >>> prompt_overhead(tok) > SLACK_TOKENS
    True
    """
    longest = 0
    for language in _PROBE_LANGUAGES:
        prompt = build_prompt(tokenizer, "", language, template)
        longest = max(longest, len(tokenizer.encode(prompt.text, add_special_tokens=False)))
    answer_tokens = max(
        len(tokenizer.encode(word, add_special_tokens=False))
        for word in (template.vulnerable_answer, template.secure_answer)
    )
    return longest + answer_tokens + SLACK_TOKENS


def check_token_budget(
    context: int | None,
    tokenizer: Any,
    max_code_tokens: int,
    *,
    max_new_tokens: int = 0,
    model: str = "the model",
    template: PromptTemplate = DEFAULT_TEMPLATE,
) -> int | None:
    """Raise :class:`TokenBudgetError` if ``max_code_tokens`` + the prompt overhead + ``max_new_tokens`` exceeds
    the *context* length (from :attr:`~vulnsteer.lm.model.LoadedModel.context_length`); return the largest code
    budget that fits, or None when the context length is unknown (nothing to check).

    The message names ``--max-code-tokens`` (and ``--max-new-tokens`` when it takes part) and the largest value
    that fits.
    """
    if max_code_tokens < 1:
        raise TokenBudgetError(f"--max-code-tokens must be a positive integer, got {max_code_tokens}")
    if max_new_tokens < 0:
        raise TokenBudgetError(f"--max-new-tokens must not be negative, got {max_new_tokens}")
    if context is None:
        return None
    overhead = prompt_overhead(tokenizer, template)
    room = context - overhead - max_new_tokens
    if room < 1:
        raise TokenBudgetError(
            f"--max-new-tokens {max_new_tokens} leaves no room for code in {model}'s context of {context} tokens "
            f"(the prompt itself takes {overhead}); lower --max-new-tokens"
        )
    if max_code_tokens > room:
        new = f" + {max_new_tokens} new tokens (--max-new-tokens)" if max_new_tokens else ""
        raise TokenBudgetError(
            f"--max-code-tokens {max_code_tokens} does not fit {model}'s context of {context} tokens: "
            f"{max_code_tokens} code tokens + {overhead} prompt tokens{new} > {context}; "
            f"use --max-code-tokens {room} or less"
        )
    return room


def fit_code_tokens(
    context: int | None,
    tokenizer: Any,
    *,
    max_new_tokens: int = 0,
    preferred: int = DEFAULT_MAX_CODE_TOKENS,
    template: PromptTemplate = DEFAULT_TEMPLATE,
) -> int:
    """The default code budget for a model: *preferred*, lowered to what fits its context (see
    :func:`check_token_budget`); *preferred* when the context length is unknown.

    >>> fit_code_tokens(None, None, preferred=300)
    300
    """
    if context is None:
        return preferred
    room = context - prompt_overhead(tokenizer, template) - max_new_tokens
    if room < 1:
        check_token_budget(context, tokenizer, 1, max_new_tokens=max_new_tokens, template=template)
    return max(1, min(preferred, room))


def model_budget(model: ModelSection, max_code_tokens: int | None, *, max_new_tokens: int = 0) -> tuple[Any, Any, int]:
    """Before any weights load: the ``[model]`` section's config and tokenizer (cheap), and the code budget:
    *max_code_tokens* checked against the context (:class:`TokenBudgetError` naming ``--max-code-tokens`` if it
    does not fit), or, when None, the default lowered to what fits (:func:`fit_code_tokens`).

    >>> config, tokenizer, budget = model_budget(ModelSection(), None)  # doctest: +SKIP
    """
    from .source import context_length, load_model_config, load_tokenizer

    config = load_model_config(model.name, trust_remote_code=model.trust_remote_code)
    tokenizer = load_tokenizer(model.name, trust_remote_code=model.trust_remote_code)
    context = context_length(config)
    if max_code_tokens is None:
        return config, tokenizer, fit_code_tokens(context, tokenizer, max_new_tokens=max_new_tokens)
    name = model.name or "the default model"
    check_token_budget(context, tokenizer, max_code_tokens, max_new_tokens=max_new_tokens, model=name)
    return config, tokenizer, max_code_tokens
