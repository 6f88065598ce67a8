"""Dataset Decomposition: Faster LLM Training with Variable Sequence Length Curriculum."""

__version__ = "0.1.0"
