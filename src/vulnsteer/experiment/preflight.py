"""Before a model loads: what can be checked from the configuration, the data and the model's config alone."""

from __future__ import annotations

from ..config import ExperimentConfig
from .prepare import LoadedData
from .ray_executor import check_executor

__all__ = ["check_before_loading"]


def check_before_loading(config: ExperimentConfig, loaded: LoadedData, need_model: bool = True) -> None:
    """What can be checked before a model loads: the executor is installed, the device against this machine,
    every CWE has both labels (vectors and evaluation need both), and the code budget + prompt + generated tokens
    against the model's context (read from its config alone). Each failure is one line naming the option or the
    CWE."""
    from ..lm.budget import check_token_budget
    from ..lm.model import resolve_device
    from ..lm.source import context_length, load_model_config, load_tokenizer

    check_executor(config.run)
    resolve_device(config.model.device)
    one_sided = (loaded.notes or {}).get("one_sided_cwes") or {}
    one_sided = {cwe: what for cwe, what in one_sided.items() if not config.data.cwes or cwe in config.data.cwes}
    if one_sided:
        cwe, missing = next(iter(one_sided.items()))
        raise ValueError(
            f"{loaded.source}: {cwe} has no {missing} samples, so it cannot be used for steering vectors "
            "or evaluation; leave it out with --cwe (data.cwes) or add the missing samples"
        )
    if need_model:
        m = config.model
        new_tokens = config.detection.max_new_tokens if "generation" in config.detection.modes else 1
        check_token_budget(
            context_length(load_model_config(m.name, trust_remote_code=m.trust_remote_code)),
            load_tokenizer(m.name, trust_remote_code=m.trust_remote_code),
            config.data.max_code_tokens,
            max_new_tokens=new_tokens,
            model=m.name or "the default model",
        )
