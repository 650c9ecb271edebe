"""Insight into trained and untrained nets: receptive fields and effective receptive fields."""
