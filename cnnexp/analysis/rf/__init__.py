"""Receptive-field machinery behind cnnexp.analysis.receptive_field: per-axis arithmetic
(axis), where H and W live in a tensor (layout), and one rule per kind of op (rules, sums)."""
