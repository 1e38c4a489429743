"""Demonstration datasets (`demos`: format, loader) and their collection by the scripted experts (`collect`)."""

from policytrim.data.collect import Suboptimality, collect_demos
from policytrim.data.demos import DemoDataset, load_demos, save_demos, summarize_demos

__all__ = ["DemoDataset", "Suboptimality", "collect_demos", "load_demos", "save_demos", "summarize_demos"]
