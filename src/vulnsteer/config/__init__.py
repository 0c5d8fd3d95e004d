"""Configuration, at the bottom of the package: the names options take, their defaults, the configuration keys
(declared once per section: default, parser, help text, flag) and the experiment configuration built from them.

Torch-free and importable by every layer (data, lm, steering, detection, experiment, scan, report, cli), so a key
or a name is declared once and read everywhere.

>>> ExperimentConfig().detection.max_new_tokens
20
"""

from __future__ import annotations

from .experiment import (
    APPLIES,
    UNIT_FLAGS,
    ExperimentConfig,
    check_overrides,
    config_document,
    config_keys,
    default_identity,
    identity_of,
    key_info,
    load_config,
    parse_config,
)
from .resolved import dump_config
from .sections import (
    SECTIONS,
    BaselinesSection,
    ConditionalSection,
    DataSection,
    DetectionSection,
    Key,
    ModelSection,
    ReportSection,
    RunSection,
    SteeringSection,
    VectorsSection,
)
from .values import ConfigError

__all__ = [
    "APPLIES",
    "SECTIONS",
    "UNIT_FLAGS",
    "BaselinesSection",
    "ConditionalSection",
    "ConfigError",
    "DataSection",
    "DetectionSection",
    "ExperimentConfig",
    "Key",
    "ModelSection",
    "ReportSection",
    "RunSection",
    "SteeringSection",
    "VectorsSection",
    "check_overrides",
    "config_document",
    "config_keys",
    "default_identity",
    "dump_config",
    "identity_of",
    "key_info",
    "load_config",
    "parse_config",
]
