"""Data: samples, dataset loaders, cleaning, splits and truncation."""

from .sample import LABELS, SECURE, VULNERABLE, Label, Sample, count_by_cwe

__all__ = ["LABELS", "SECURE", "VULNERABLE", "Label", "Sample", "count_by_cwe"]
