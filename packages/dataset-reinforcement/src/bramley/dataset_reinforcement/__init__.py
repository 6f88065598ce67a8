"""Dataset Reinforcement: reinforce a dataset once, train any model better."""

__version__ = "0.1.0"
