"""Demonstration datasets: collection with the scripted experts, the on-disk format, the loader."""

from policytrim.data.demos import DemoDataset, Suboptimality, collect_demos, load_demos, save_demos, summarize_demos

__all__ = ["DemoDataset", "Suboptimality", "collect_demos", "load_demos", "save_demos", "summarize_demos"]
