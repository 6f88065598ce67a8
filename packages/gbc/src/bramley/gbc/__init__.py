"""Graph-Based Captioning: GBC graphs, GBC-CLIP and structure-induced attention."""

__version__ = "0.1.0"
