"""Graph-Based Captioning: GBC graphs, GBC-CLIP and structure-induced attention.

The data library (:mod:`~bramley.gbc.graph`, :mod:`~bramley.gbc.io`, :mod:`~bramley.gbc.validate`,
:mod:`~bramley.gbc.views`) reads, checks and views GBC graphs in the official format; :mod:`~bramley.gbc.sia` packs a
graph's captions with the structure-induced attention mask; :mod:`~bramley.gbc.model` registers ``gbc_clip``.
"""

from . import model  # noqa: F401  (registers gbc_clip)
from .graph import Bbox, Description, Edge, GbcGraph, GraphFormatError, Vertex
from .io import GraphReader, load_hf_dataset, read_graphs, write_graphs
from .sia import collate_packed, collate_padded, pack_graph, sia_encode, sia_mask
from .validate import validate_graph
from .views import GraphStats, captions, graph_text, order, tree_view

__version__ = "0.1.0"

__all__ = [
    "Bbox",
    "Description",
    "Edge",
    "GbcGraph",
    "GraphFormatError",
    "GraphReader",
    "GraphStats",
    "Vertex",
    "captions",
    "collate_packed",
    "collate_padded",
    "graph_text",
    "load_hf_dataset",
    "order",
    "pack_graph",
    "read_graphs",
    "sia_encode",
    "sia_mask",
    "tree_view",
    "validate_graph",
    "write_graphs",
]
