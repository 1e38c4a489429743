"""Evaluation: metrics (pure) and evaluation on held-out states."""
