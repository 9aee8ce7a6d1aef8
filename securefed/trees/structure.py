"""One tree as four integer arrays, checked before use, and the routing of rows through it.

A tree is ``feature``, ``bin``, ``left``, ``right`` (one entry per tree node,
node 0 the root). A leaf (or a node still open) has feature -1 and both
children -1; an internal node sends the rows whose code of ``feature`` is
<= ``bin`` to ``left``, the others to ``right``. Children always have larger
indices than their parent and every node but the root has exactly one
parent, so a checked tree is a tree: routing terminates within its depth.
Requests (from a coordinator) and model files (from anywhere) carry trees in
this form, so both pass through :func:`check_tree` before any row is routed.
"""

from __future__ import annotations

import numpy as np

from securefed.errors import InvalidParameter

__all__ = ["check_tree", "route"]


def check_tree(
    feature: np.ndarray, bin_: np.ndarray, left: np.ndarray, right: np.ndarray, n_features: int, n_bins: int
) -> np.ndarray:
    """Validate one tree's arrays; return every node's depth (int64). Raises :class:`InvalidParameter`."""
    arrays = (feature, bin_, left, right)
    size = feature.shape[0] if feature.ndim == 1 else -1
    if size < 1 or any(a.ndim != 1 or a.shape[0] != size or a.dtype.kind != "i" for a in arrays):
        raise InvalidParameter("a tree needs feature, bin, left and right as equal-length, non-empty integer arrays")
    internal = feature >= 0
    leaf = ~internal
    if np.any(feature < -1) or np.any(feature >= n_features):
        raise InvalidParameter(f"a tree node splits on a feature outside 0..{n_features - 1}")
    if np.any(internal & ((bin_ < 0) | (bin_ > n_bins - 2))):
        raise InvalidParameter(f"a tree node splits at a bin outside 0..{n_bins - 2}")
    if np.any(leaf & ((left != -1) | (right != -1) | (bin_ != -1))):
        raise InvalidParameter("a leaf (feature -1) must have bin and children -1")
    index = np.arange(size)
    if np.any(internal & ((left <= index) | (right <= index) | (left >= size) | (right >= size) | (left == right))):
        raise InvalidParameter("a tree node's children must be distinct nodes after it")
    children = np.concatenate([left[internal], right[internal]])
    if children.size != size - 1 or np.unique(children).size != size - 1 or np.any(children == 0):
        raise InvalidParameter("every tree node but the root must have exactly one parent")
    depth = np.zeros(size, dtype=np.int64)
    for node in np.flatnonzero(internal):  # parents precede children, so one pass suffices
        depth[left[node]] = depth[right[node]] = depth[node] + 1
    return depth


def route(
    codes: np.ndarray, feature: np.ndarray, bin_: np.ndarray, left: np.ndarray, right: np.ndarray, depth: int
) -> np.ndarray:
    """The node each row ends in (a leaf or an open node) of a checked tree of the given maximum depth."""
    node = np.zeros(codes.shape[0], dtype=np.int64)
    rows = np.arange(codes.shape[0])
    for _ in range(depth):
        split_on = feature[node]
        inside = split_on >= 0
        if not inside.any():
            break
        code = codes[rows[inside], split_on[inside]]
        here = node[inside]
        node[inside] = np.where(code <= bin_[here], left[here], right[here])
    return node
