"""One prompt builder, shared by activation extraction and detection.

The prompt is the model's chat template around a fixed question, the code verbatim in a fenced block, and a
fixed answer format. The assistant turn is pre-filled with ``Answer:`` so that the very next token is the
verdict: logit mode reads it there, generation mode continues from it, and steering at the ``last`` position
acts exactly on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are made: templates and prompts load without it (fast ``scan``)
    import torch

__all__ = [
    "DEFAULT_TEMPLATE",
    "PROBE_PROMPTS",
    "STRICT_TEMPLATE",
    "TEMPLATES",
    "WEAKNESSES_TEMPLATE",
    "Prompt",
    "PromptBatch",
    "PromptTemplate",
    "answer_token_ids",
    "build_prompt",
    "code_token_counts",
    "template_from_dict",
    "tokenize_prompts",
]

_FENCE_LANG = {
    "c": "c",
    "cpp": "cpp",
    "python": "python",
    "javascript": "javascript",
    "java": "java",
    "go": "go",
    "ruby": "ruby",
    "php": "php",
    "csharp": "csharp",
    "rust": "rust",
}


@dataclass(frozen=True)
class PromptTemplate:
    """The fixed wording. Changing it changes every number: it is recorded in each run's config.

    >>> PromptTemplate().answer_prefix, PromptTemplate(system="Be terse.").system
    ('Answer:', 'Be terse.')
    """

    system: str = "You are an expert application security auditor reviewing code for vulnerabilities."
    question: str = "Is the following {language} code vulnerable? If it is, name the weakness (CWE id and name)."
    answer_format: str = (
        "Reply with the line 'Answer: vulnerable' or the line 'Answer: secure', then the line "
        "'Weakness: CWE-<id> (<name>)', or 'Weakness: none' if the code is secure."
    )
    answer_prefix: str = "Answer:"
    #: The answer words read in logit mode (first = the 'vulnerable' answer).
    vulnerable_answer: str = " vulnerable"
    secure_answer: str = " secure"
    #: worked examples shown before the question: ``(code, language, the assistant's full answer)``
    shots: tuple[tuple[str, str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.__dict__)
        data["shots"] = [list(shot) for shot in self.shots]
        return data

    def with_shots(self, *examples: tuple[str, str, str]) -> PromptTemplate:
        """This template with worked examples (``(code, language, answer)``) before the question.

        >>> PromptTemplate().with_shots(("x = 1", "python", "Answer: secure")).shots[0][2]
        'Answer: secure'
        """
        return replace(self, shots=tuple(tuple(e) for e in examples))  # type: ignore[misc]


DEFAULT_TEMPLATE = PromptTemplate()


def template_from_dict(data: dict[str, Any]) -> PromptTemplate:
    """The template :meth:`PromptTemplate.to_dict` wrote (unknown keys refused by name).

    >>> template_from_dict(DEFAULT_TEMPLATE.to_dict()) == DEFAULT_TEMPLATE
    True
    """
    known = set(PromptTemplate.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"prompt template: unknown field {unknown[0]!r}")
    values: dict[str, Any] = {k: str(v) for k, v in data.items() if k != "shots"}
    shots = tuple((str(c), str(lang), str(a)) for c, lang, a in data.get("shots", ()))
    return PromptTemplate(**values, shots=shots)


#: The prompting baseline that asks for evidence: "secure" unless the model can name the weakness.
STRICT_TEMPLATE = PromptTemplate(
    answer_format=(
        "Reply with the line 'Answer: secure' unless you can name the specific weakness and the statement that "
        "causes it; only then reply with the line 'Answer: vulnerable', then the line 'Weakness: CWE-<id> (<name>)'. "
        "If the code is secure, the second line is 'Weakness: none'."
    )
)
#: The question naming the weakness classes vulnsteer's CWEs fall in (a probe design's ``template = "weaknesses"``):
#: the code's states are read after it, so it can make them tell the classes apart better than the bare question.
WEAKNESSES_TEMPLATE = PromptTemplate(
    question=(
        "Does the following {language} code have a buffer overflow, an out-of-bounds read, an integer overflow, a use "
        "after free, a NULL pointer dereference, a path traversal, an OS command injection, an SQL injection or a "
        "cross-site scripting weakness? If it does, name the weakness (CWE id and name)."
    )
)
#: Prompt templates by name (``[baselines] templates``); ``one_shot`` is built from a training pair at run time.
TEMPLATES: dict[str, PromptTemplate] = {"default": DEFAULT_TEMPLATE, "strict": STRICT_TEMPLATE}
#: The prompts a probe design reads its states under, by the name its ``template`` field holds
#: (:data:`~vulnsteer.config.vocabulary.PROBE_TEMPLATES`).
PROBE_PROMPTS: dict[str, PromptTemplate] = {"default": DEFAULT_TEMPLATE, "weaknesses": WEAKNESSES_TEMPLATE}


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt and the character span of the code inside it."""

    text: str
    code_span: tuple[int, int]


def _language_label(language: str) -> str:
    names = {
        "c": "C",
        "cpp": "C++",
        "python": "Python",
        "javascript": "JavaScript",
        "java": "Java",
        "go": "Go",
        "ruby": "Ruby",
        "php": "PHP",
        "csharp": "C#",
        "rust": "Rust",
    }
    return names.get(language.lower(), language or "source")


def _question(template: PromptTemplate, code: str, language: str) -> str:
    fence = _FENCE_LANG.get(language.lower(), "")
    return (
        f"{template.question.format(language=_language_label(language))}\n\n"
        f"```{fence}\n{code}\n```\n\n{template.answer_format}"
    )


def build_prompt(tokenizer: Any, code: str, language: str, template: PromptTemplate = DEFAULT_TEMPLATE) -> Prompt:
    """Render the detection prompt for one function. The code appears verbatim, exactly once."""
    fence = _FENCE_LANG.get(language.lower(), "")
    messages = [{"role": "system", "content": template.system}]
    for shot_code, shot_language, answer_text in template.shots:
        messages.append({"role": "user", "content": _question(template, shot_code, shot_language)})
        messages.append({"role": "assistant", "content": answer_text})
    user = _question(template, code, language)
    messages.append({"role": "user", "content": user})
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        rendered = "".join(f"{m['content']}\n\n" for m in messages)
    text = rendered + template.answer_prefix
    start = text.rfind(f"```{fence}\n{code}\n```")  # the last occurrence: worked examples come first
    if start < 0:  # a chat template that rewrites content: fall back to any verbatim occurrence
        start = text.rfind(code) - len(f"```{fence}\n")
        if start < 0:
            raise ValueError("the chat template does not keep the code verbatim; cannot locate code tokens")
    code_start = start + len(f"```{fence}\n")
    return Prompt(text=text, code_span=(code_start, code_start + len(code)))


@dataclass
class PromptBatch:
    """Left-padded token ids; ``code_mask`` marks the tokens that overlap the code span."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    code_mask: torch.Tensor

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(self.input_ids.to(device), self.attention_mask.to(device), self.code_mask.to(device))


def _tokens(tokenizer: Any, prompt: Prompt) -> tuple[list[int], list[bool]]:
    """A prompt's token ids and, per token, whether it overlaps the code span."""
    enc = tokenizer(prompt.text, add_special_tokens=False, return_offsets_mapping=True)
    start, end = prompt.code_span
    return list(enc["input_ids"]), [s < end and e > start for s, e in enc["offset_mapping"]]


def tokenize_prompts(tokenizer: Any, prompts: Sequence[Prompt], *, through_code: bool = False) -> PromptBatch:
    """Tokenise with left padding (the last column is every row's last prompt token). *through_code*: each prompt
    ends at its last code token (a prompt without code tokens stays whole): what the code poolings read, since
    under causal attention no code token's state depends on a later token; there is no answer position then."""
    import torch

    ids_list: list[list[int]] = []
    code_list: list[list[bool]] = []
    for prompt in prompts:
        ids, code = _tokens(tokenizer, prompt)
        if through_code and any(code):
            end = len(code) - code[::-1].index(True)
            ids, code = ids[:end], code[:end]
        ids_list.append(ids)
        code_list.append(code)
    width = max(len(ids) for ids in ids_list)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    code_mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, (ids, code) in enumerate(zip(ids_list, code_list)):
        n = len(ids)
        input_ids[row, width - n :] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - n :] = 1
        code_mask[row, width - n :] = torch.tensor(code, dtype=torch.bool)
    return PromptBatch(input_ids, attention, code_mask)


def code_token_counts(tokenizer: Any, prompts: Sequence[Prompt]) -> list[int]:
    """How many tokens of each prompt overlap its code (what ``code_mean`` averages over; the length a probe's
    length term reads), without padding.

    >>> code_token_counts(tokenizer, [build_prompt(tokenizer, "int x;", "c")])  # doctest: +SKIP
    [3]
    """
    return [sum(_tokens(tokenizer, prompt)[1]) for prompt in prompts]


def answer_token_ids(tokenizer: Any, template: PromptTemplate = DEFAULT_TEMPLATE) -> tuple[list[int], list[int]]:
    """Token ids of the 'vulnerable' and 'secure' answers as they follow the prompt's ``Answer:``."""
    vuln = list(tokenizer.encode(template.vulnerable_answer, add_special_tokens=False))
    secure = list(tokenizer.encode(template.secure_answer, add_special_tokens=False))
    if not vuln or not secure:
        raise ValueError("the answer words tokenise to nothing")
    if vuln == secure:
        raise ValueError("the 'vulnerable' and 'secure' answers tokenise identically")
    return vuln, secure
