"""What a node sends per tree level: one integer vector of per-(tree node, feature, bin) sums.

Theory of operation. The coordinator asks for the histograms of a *frontier*:
a list of entries (tree, tree node), each with the features to histogram
(its random-forest feature subset, or every feature). The vector is, entry
after entry, feature after feature, bin after bin, the ``channels`` sums of
the node's rows that are in that tree node and whose feature code is that
bin: class counts (weighted by the row's bootstrap weight) for a forest;
gradient, hessian and row count for boosting. Its layout is fixed by the
request alone (:class:`Layout`), so the vectors of all sites add up entry by
entry, and their sum is exactly the histogram of the pooled data.

Everything is an integer before it is summed. Class counts and row counts
already are. Gradients and hessians are clipped to declared bounds
(``|g| <= grad_clip``, ``0 <= h <= hess_clip``) and *each row's* value is
rounded to the nearest multiple of 2^-f (:func:`quantise`). Because the
rounding happens per row, not per site, the sum is the same integer whatever
the split of rows among sites: a federated tree equals the tree grown on the
pooled histograms, split for split, and a bin's decoded sum is within
``rows * 2^-(f+1)`` of the exact real sum.

The wrap bound. Secure aggregation adds mod 2^32 and the coordinator reads
every sum as a signed 32-bit integer, which is right exactly when each true
sum lies in [-(2^31 - 1), 2^31 - 1]. A bin's sum is at most the whole cohort's
rows times the largest per-row integer, so a computation declares
``max_nodes`` and ``max_rows_per_node`` and is refused unless

    max_nodes * max_rows_per_node * max_per_row_integer < 2^31

(:func:`check_no_wrap`). For forests the per-row integer is the bootstrap
weight (capped at ``max_weight``); for boosting ``round(clip * 2^f)``, and f is
the largest that passes (:func:`fractional_bits`). A node refuses to compute
with more rows than declared, so the bound holds for every honest cohort of
at most ``max_nodes`` sites.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from securefed.errors import InvalidParameter, LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from securefed.trees.binning import Bins

__all__ = [
    "MAX_FRACTIONAL_BITS",
    "MIN_SIGNIFICANT_BITS",
    "SIGNED_LIMIT",
    "Layout",
    "check_no_wrap",
    "class_count_histogram",
    "class_indices",
    "coded_rows",
    "decode_sum",
    "fractional_bits",
    "quantise",
    "secure_sum",
    "stat_histogram",
    "to_uint32",
]

#: A summed entry must stay strictly inside (-2^31, 2^31) to read back correctly as int32.
SIGNED_LIMIT = 1 << 31
#: The finest fixed-point resolution used (2^-30).
MAX_FRACTIONAL_BITS = 30
#: A clip bound must keep at least this many bits (clip * 2^f >= 2^8), or the statistic is too coarse to split on.
MIN_SIGNIFICANT_BITS = 8


def check_no_wrap(max_per_row: int, max_rows_total: int, what: str) -> None:
    """Refuse a computation whose largest possible summed entry could reach 2^31."""
    worst = max_per_row * max_rows_total
    if worst >= SIGNED_LIMIT:
        raise InvalidParameter(
            f"{what}: {max_rows_total} rows in the cohort x {max_per_row} per row could reach {worst} >= 2^31 "
            "and wrap in the secure sum; lower max_nodes or max_rows_per_node"
        )


def fractional_bits(clip: float, max_rows_total: int, what: str) -> int:
    """The largest f (<= 30) with ``max_rows_total * round(clip * 2^f) < 2^31``; refused below 8 significant bits."""
    best = -1
    for bits in range(MAX_FRACTIONAL_BITS + 1):
        if max_rows_total * _unit(clip, bits) < SIGNED_LIMIT:
            best = bits
    if best < 0 or clip * (1 << best) < (1 << MIN_SIGNIFICANT_BITS):
        raise InvalidParameter(
            f"{what}: {max_rows_total} rows in the cohort leave fewer than {MIN_SIGNIFICANT_BITS} bits of precision "
            f"for |values| <= {clip:g} below 2^31; lower max_nodes or max_rows_per_node"
        )
    return best


def _unit(clip: float, bits: int) -> int:
    """The largest per-row integer a value clipped to ``clip`` can round to (ceil, as a safe bound)."""
    return math.ceil(clip * (1 << bits))


def quantise(values: np.ndarray, clip: float, bits: int, *, non_negative: bool = False) -> np.ndarray:
    """Clip every value to [-clip, clip] (or [0, clip]) and round it to an integer multiple of 2^-bits (int64)."""
    low = 0.0 if non_negative else -clip
    scaled = np.clip(np.asarray(values, dtype=np.float64), low, clip) * float(1 << bits)
    return np.rint(scaled).astype(np.int64)


@dataclass(frozen=True)
class Layout:
    """The flat vector of a request: ``entries`` x ``features`` x ``n_bins`` x ``channels``, C order."""

    entries: int
    features: int
    n_bins: int
    channels: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.entries, self.features, self.n_bins, self.channels)

    @property
    def length(self) -> int:
        return self.entries * self.features * self.n_bins * self.channels

    def unflatten(self, vector: np.ndarray) -> np.ndarray:
        return vector.reshape(self.shape)


def _cells(codes: np.ndarray, features: np.ndarray, n_bins: int, entry_of_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows in some entry, and each one's (entry, feature slot, bin) cell for every slot (rows x slots)."""
    rows = np.flatnonzero(entry_of_row >= 0)
    entry = entry_of_row[rows]
    slots = features.shape[1]
    chosen = np.take_along_axis(codes[rows], features[entry], axis=1).astype(np.int64)
    cells = (entry[:, None] * slots + np.arange(slots)[None, :]) * n_bins + chosen
    return rows, cells


def class_count_histogram(
    codes: np.ndarray,
    features: np.ndarray,
    n_bins: int,
    n_classes: int,
    entry_of_row: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None,
) -> np.ndarray:
    """Weighted class counts per (entry, feature slot, bin, class), flat int64.

    ``entry_of_row`` is trees x rows (the frontier entry each row is in for that
    tree, -1 for none), ``weights`` trees x rows non-negative integers (None: 1).
    """
    layout = Layout(features.shape[0], features.shape[1], n_bins, n_classes)
    index_parts, weight_parts = [], []
    for tree in range(entry_of_row.shape[0]):
        rows, cells = _cells(codes, features, n_bins, entry_of_row[tree])
        if rows.size == 0:
            continue
        index_parts.append((cells * n_classes + labels[rows, None]).ravel())
        row_weights = np.ones(rows.size) if weights is None else weights[tree, rows].astype(np.float64)
        weight_parts.append(np.repeat(row_weights, cells.shape[1]))
    return _bincount(index_parts, weight_parts, layout.length)


def stat_histogram(
    codes: np.ndarray,
    features: np.ndarray,
    n_bins: int,
    entry_of_row: np.ndarray,
    stats: np.ndarray,
) -> np.ndarray:
    """Integer statistics per (entry, feature slot, bin, channel), flat int64.

    ``stats`` is trees x rows x channels of integers (e.g. quantised gradient,
    quantised hessian, 1); tree t's rows add their own ``stats[t]``.
    """
    channels = stats.shape[2]
    layout = Layout(features.shape[0], features.shape[1], n_bins, channels)
    index_parts, weight_parts = [], []
    for tree in range(entry_of_row.shape[0]):
        rows, cells = _cells(codes, features, n_bins, entry_of_row[tree])
        if rows.size == 0:
            continue
        for channel in range(channels):
            index_parts.append((cells * channels + channel).ravel())
            weight_parts.append(np.repeat(stats[tree, rows, channel].astype(np.float64), cells.shape[1]))
    return _bincount(index_parts, weight_parts, layout.length)


def _bincount(index_parts: list[np.ndarray], weight_parts: list[np.ndarray], length: int) -> np.ndarray:
    if not index_parts:
        return np.zeros(length, dtype=np.int64)
    # float64 sums of integers stay exact below 2^53; the wrap bound keeps them below 2^31.
    summed = np.bincount(np.concatenate(index_parts), weights=np.concatenate(weight_parts), minlength=length)
    return np.rint(summed).astype(np.int64)


def to_uint32(vector: np.ndarray) -> np.ndarray:
    """A node's int64 sums as the uint32 (two's complement) vector it feeds to secure aggregation."""
    if vector.size and int(np.max(np.abs(vector))) >= SIGNED_LIMIT:
        raise LocalProtocolError("a local histogram entry reached 2^31: the declared row bound does not hold")
    return vector.astype(np.int32).view(np.uint32)


def secure_sum(vectors: list[np.ndarray]) -> np.ndarray:
    """What secure aggregation reveals: the entrywise sum mod 2^32 (masks cancel exactly)."""
    if not vectors:
        raise InvalidParameter("nothing to sum")
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.uint32))
    for vector in vectors:
        total += np.asarray(vector, dtype=np.uint32)  # uint32 wraps mod 2^32
    return total


def decode_sum(summed: np.ndarray, layout: Layout) -> np.ndarray:
    """The unmasked sum read as signed 32-bit integers (int64), shaped entries x features x bins x channels."""
    array = np.asarray(summed)
    if array.dtype != np.uint32 or array.ndim != 1:
        raise LocalProtocolError(f"a summed histogram must be a 1-D uint32 vector, got {array.dtype} with shape {array.shape}")
    if array.shape[0] != layout.length:
        raise LocalProtocolError(f"the request expects {layout.length} entries, the sum has {array.shape[0]}")
    return layout.unflatten(array.view(np.int32).astype(np.int64))


def require_non_negative(values: np.ndarray, what: str) -> None:
    """Counts and hessians of honest nodes are never negative: a negative sum means a node sent garbage."""
    if values.size and int(values.min()) < 0:
        raise RemoteProtocolError(
            f"summed {what} is negative: some node's input was out of range", reason="inconsistent-histogram"
        )


def coded_rows(bins: Bins, X: np.ndarray, max_rows: int) -> np.ndarray:
    """A node's features as bin codes, refused when it holds more rows than the wrap bound allows."""
    codes = bins.digitize(X)
    n = codes.shape[0]
    if n > max_rows:
        raise InvalidParameter(
            f"this node has {n} rows, the task allows at most {max_rows} per node (the wrap bound); raise max_rows_per_node in the task"
        )
    return codes


def class_indices(labels: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    """``labels`` as int64 class indices 0..n_classes-1, one per row; anything else is refused."""
    y = np.asarray(labels)
    if y.shape != (n,) or y.dtype.kind not in "iu" or (n and (int(y.min()) < 0 or int(y.max()) >= n_classes)):
        raise InvalidParameter(f"labels must be {n} class indices in 0..{n_classes - 1}")
    return y.astype(np.int64)
