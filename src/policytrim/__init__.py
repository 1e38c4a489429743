"""PolicyTrim: two-stage GRPO post-training that makes action-chunking robot policies execute
longer chunks reliably and drop redundant physical steps, so they need fewer inference calls."""

__version__ = "0.1.0"
