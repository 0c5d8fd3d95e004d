"""Data: samples, dataset loaders, cleaning, splits and truncation."""

from .sample import LABELS, SECURE, VULNERABLE, Label, Sample, count_by_cwe, dataset_hash

__all__ = ["LABELS", "SECURE", "VULNERABLE", "Label", "Sample", "count_by_cwe", "dataset_hash"]
