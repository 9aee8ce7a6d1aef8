"""Histogram-based federated trees: random forests and gradient boosting over secure sums.

Nodes never ship code or rows: per tree level each node computes one integer
vector of per-(tree node, feature, bin) statistics from its own data, secure
aggregation sums the vectors, and the coordinator chooses splits and leaf
values from the sum alone. Everything here is sans-IO: :class:`ForestBuilder`
and :class:`BoostingBuilder` say what to compute and take the sums; the
workers are the nodes' side. See docs/trees.md.
"""

from __future__ import annotations

from securefed.trees.binning import Bins
from securefed.trees.boosting import BoostingBuilder, BoostingParams, BoostingWorker
from securefed.trees.forest import ForestBuilder, ForestParams, ForestWorker
from securefed.trees.model import TreeEnsemble
from securefed.trees.request import COMPUTATIONS, HistogramRequest

__all__ = [
    "COMPUTATIONS",
    "Bins",
    "BoostingBuilder",
    "BoostingParams",
    "BoostingWorker",
    "ForestBuilder",
    "ForestParams",
    "ForestWorker",
    "HistogramRequest",
    "TreeEnsemble",
]
