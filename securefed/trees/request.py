"""The request a coordinator sends for one tree level: a small JSON object a node checks before computing.

Theory of operation. A node never runs code it is sent; it runs one of the
named computations below, registered in securefed, with the task's agreed
parameters. The request says which (``computation``), repeats the parameters
(the node refuses any that differ from those it agreed to), and defines the
frontier: the trees grown so far (routing arrays only: feature, bin,
children) and the (tree, node) entries whose histograms it wants, each with
its features. From these alone the node routes its rows and fills the vector
in the layout of :class:`~securefed.trees.histograms.Layout`; so the request
fixes the vector's meaning and length, and nothing the node sends depends on
anything but its data and this request.

- ``trees.forest-level``: class counts for a random forest's frontier;
- ``trees.boosting-base``: class counts (or the target sum) for the base score;
- ``trees.boosting-level``: gradient, hessian and row-count sums for a boosting
  round's frontier; it also carries the trees finished since the node's last
  round (``previous``, with leaf values) and the digest of the whole model so
  far, so the node updates its local predictions and checks that it holds the
  same model as the coordinator.

:meth:`HistogramRequest.from_json` checks the shape of the JSON; the node's
worker checks the meaning (indices in range, frontier entries are open nodes
at the stated depth, features as the parameters derive them).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np

from securefed.errors import InvalidParameter
from securefed.trees._checks import check_int, check_keys, int_list, is_int
from securefed.trees.histograms import Layout
from securefed.trees.structure import check_tree, route

__all__ = [
    "COMPUTATIONS",
    "REQUEST_VERSION",
    "CheckedTree",
    "HistogramRequest",
    "check_request_tree",
    "entry_of_row",
    "frontier_lookup",
]

REQUEST_VERSION = 1
FOREST_LEVEL = "trees.forest-level"
BOOSTING_BASE = "trees.boosting-base"
BOOSTING_LEVEL = "trees.boosting-level"
#: The computations a node can be asked for, each with the keys its request carries.
COMPUTATIONS: dict[str, tuple[str, ...]] = {
    FOREST_LEVEL: ("computation", "version", "params", "level", "trees", "frontier", "features"),
    BOOSTING_BASE: ("computation", "version", "params"),
    BOOSTING_LEVEL: (
        "computation", "version", "params", "round", "level", "trees", "frontier", "features",
        "base_score", "previous", "model_digest",
    ),
}  # fmt: skip
_TREE_KEYS = ("feature", "bin", "left", "right")
_BIG = 1 << 62


@dataclass(frozen=True)
class HistogramRequest:
    """One request; build with the drivers, carry as :meth:`to_json`, read with :meth:`from_json`."""

    computation: str
    params: dict
    level: int = 0
    round: int = 0
    trees: tuple[dict, ...] = ()
    frontier: tuple[tuple[int, int], ...] = ()
    features: tuple[tuple[int, ...], ...] = ()
    base_score: tuple[float, ...] = ()
    previous: tuple[tuple[dict, ...], ...] = ()
    model_digest: str = ""

    def layout(self, n_bins: int, channels: int) -> Layout:
        """The layout of the vector this request asks for."""
        slots = len(self.features[0]) if self.features else 0
        return Layout(len(self.frontier), slots, n_bins, channels)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON: bind it into the secure-aggregation round's context hash, so
        nodes handed different requests derive masks that do not cancel (the model-inconsistency defence)."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def to_json(self) -> dict:
        full = {
            "computation": self.computation,
            "version": REQUEST_VERSION,
            "params": self.params,
            "round": self.round,
            "level": self.level,
            "trees": list(self.trees),
            "frontier": [list(entry) for entry in self.frontier],
            "features": [list(f) for f in self.features],
            "base_score": list(self.base_score),
            "previous": [list(r) for r in self.previous],
            "model_digest": self.model_digest,
        }
        return {key: full[key] for key in COMPUTATIONS[self.computation]}

    @classmethod
    def from_json(cls, raw: object) -> HistogramRequest:
        """Check a request's JSON shape strictly; raises :class:`InvalidParameter` naming the problem."""
        if not isinstance(raw, dict) or raw.get("computation") not in COMPUTATIONS:
            got = raw.get("computation") if isinstance(raw, dict) else raw
            raise InvalidParameter(f"unknown tree computation {got!r}; known: {sorted(COMPUTATIONS)}")
        data = check_keys(f"a {raw['computation']} request", raw, COMPUTATIONS[raw["computation"]])
        if data["version"] != REQUEST_VERSION or not is_int(data["version"]):
            raise InvalidParameter(
                f"request version {data['version']!r} is not supported; this node speaks version {REQUEST_VERSION}"
            )
        if not isinstance(data["params"], dict):
            raise InvalidParameter("request params must be a JSON object")
        fields: dict = {"computation": data["computation"], "params": data["params"]}
        if "level" in data:
            fields["level"] = check_int("request level", data["level"], 0, 64)
            fields["trees"] = tuple(_tree_json(t, with_value=False) for t in _list("trees", data["trees"]))
            frontier = _list("frontier", data["frontier"])
            if not all(isinstance(e, list) and len(e) == 2 for e in frontier):
                raise InvalidParameter("request frontier must list [tree, node] pairs")
            fields["frontier"] = tuple(tuple(int_list("a frontier entry", e, 0, _BIG)) for e in frontier)
            features = _list("features", data["features"])
            fields["features"] = tuple(tuple(int_list("a frontier entry's features", f, 0, _BIG)) for f in features)
            if len(fields["features"]) != len(fields["frontier"]) or len({len(f) for f in fields["features"]}) > 1:
                raise InvalidParameter("request features must give one equally long list per frontier entry")
            if fields["features"] and not fields["features"][0]:
                raise InvalidParameter("request features must not be empty")
        if data["computation"] == BOOSTING_LEVEL:
            fields["round"] = check_int("request round", data["round"], 0, _BIG)
            base = _list("base_score", data["base_score"])
            if not base or not all(_finite(v) for v in base):
                raise InvalidParameter("request base_score must be a non-empty list of finite numbers")
            fields["base_score"] = tuple(float(v) for v in base)
            rounds = _list("previous", data["previous"])
            fields["previous"] = tuple(
                tuple(_tree_json(t, with_value=True) for t in _list("a previous round", r)) for r in rounds
            )
            digest = data["model_digest"]
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise InvalidParameter("request model_digest must be 64 lowercase hex digits")
            fields["model_digest"] = digest
        return cls(**fields)

    @classmethod
    def coerce(cls, request: HistogramRequest | dict) -> HistogramRequest:
        """A request object, parsing (and so checking) it if it came as JSON."""
        return request if isinstance(request, HistogramRequest) else cls.from_json(request)


def _list(name: str, value: object) -> list:
    if not isinstance(value, list):
        raise InvalidParameter(f"request {name} must be a list")
    return value


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _tree_json(raw: object, *, with_value: bool) -> dict:
    keys = (*_TREE_KEYS, "value") if with_value else _TREE_KEYS
    data = check_keys("a request tree", raw, keys)
    for key in _TREE_KEYS:
        int_list(f"a request tree's {key}", data[key], -1, _BIG)
    if with_value:
        values = data["value"]
        if not isinstance(values, list) or not all(isinstance(v, list) and all(_finite(x) for x in v) for v in values):
            raise InvalidParameter("a finished tree's value must be a list of lists of finite numbers")
    return data


@dataclass(frozen=True)
class CheckedTree:
    """A request tree after :func:`check_request_tree`: int64 arrays, node depths, optional values."""

    feature: np.ndarray
    bin: np.ndarray
    left: np.ndarray
    right: np.ndarray
    depth: np.ndarray
    value: np.ndarray | None = None

    @property
    def max_depth(self) -> int:
        return int(self.depth.max())


def check_request_tree(raw: dict, n_features: int, n_bins: int, max_depth: int, value_size: int | None = None) -> CheckedTree:
    """A request tree's arrays, checked as a tree over the task's features and bins, no deeper than ``max_depth``."""
    feature, bin_, left, right = (np.asarray(raw[key], dtype=np.int64) for key in _TREE_KEYS)
    depth = check_tree(feature, bin_, left, right, n_features=n_features, n_bins=n_bins)
    if int(depth.max()) > max_depth:
        raise InvalidParameter(f"a request tree is deeper than the task's max_depth {max_depth}")
    value = None
    if value_size is not None:
        value = np.asarray(raw["value"], dtype=np.float64)
        if value.shape != (feature.shape[0], value_size):
            raise InvalidParameter(f"a finished tree needs {value_size} value(s) per node")
    return CheckedTree(feature, bin_, left, right, depth=depth, value=value)


def frontier_lookup(request: HistogramRequest, trees: list[CheckedTree]) -> list[dict[int, int]]:
    """Per tree, frontier node -> entry index; every entry must be a distinct open node at the request's level."""
    lookup: list[dict[int, int]] = [{} for _ in trees]
    for index, (t, node) in enumerate(request.frontier):
        if t >= len(trees) or node >= trees[t].feature.shape[0]:
            raise InvalidParameter(f"frontier entry ({t}, {node}) names no node of the request's trees")
        tree = trees[t]
        if tree.feature[node] != -1 or tree.depth[node] != request.level:
            raise InvalidParameter(f"frontier entry ({t}, {node}) is not an open node at level {request.level}")
        if node in lookup[t]:
            raise InvalidParameter(f"frontier entry ({t}, {node}) is listed twice")
        lookup[t][node] = index
    return lookup


def entry_of_row(codes: np.ndarray, trees: list[CheckedTree], lookup: list[dict[int, int]]) -> np.ndarray:
    """Trees x rows: the frontier entry each row is in for each tree, -1 for none."""
    out = np.full((len(trees), codes.shape[0]), -1, dtype=np.int64)
    for t, tree in enumerate(trees):
        if not lookup[t]:
            continue
        table = np.full(tree.feature.shape[0], -1, dtype=np.int64)
        for node, index in lookup[t].items():
            table[node] = index
        out[t] = table[route(codes, tree.feature, tree.bin, tree.left, tree.right, tree.max_depth)]
    return out
