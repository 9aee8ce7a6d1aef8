"""What every registered computation does, and the sans-IO driver interface.

Theory of operation. A computation kind is a vetted function of a node's
data: the coordinator sends only its *name* and JSON parameters. Its life in
one secure aggregation:

1. node: :meth:`Computation.policy_check` -- allowed? parameters valid? bins
   wide enough? every released aggregate over at least k of my records?
2. node: :meth:`Computation.node_vector` -- the node's float contribution (sums
   over its rows of quantities in [-1, 1], so every coordinate is at most
   ``max_rows``), encoded by :class:`~securefed.encoding.FixedPointEncoder` at
   the cohort's fixed point into uint32;
3. secure aggregation sums the vectors mod 2^32 (no wrap by construction);
4. coordinator: :meth:`Computation.finish` decodes the sum, checks it could be
   a sum of honest contributions, and computes the JSON result together with a
   bound on its error from the encoding.

A :class:`Driver` strings several aggregations together (quantile refinement,
Lloyd iterations) without doing any I/O: ``next_request()`` says what to
aggregate next, ``receive(summed, survivors)`` takes the unmasked sum.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Generic, Protocol, TypeVar

import numpy as np

from securefed.analytics.params import MAX_VECTOR_LENGTH, Cohort, ParameterError
from securefed.analytics.policy import AnalyticsPolicy, Refusal
from securefed.dp.noise import UniformSource
from securefed.errors import EncodingError, InvalidParameter, LocalProtocolError

__all__ = ["Computation", "Driver", "Request"]


class Parsed(Protocol):
    """What every kind's parsed parameters have: the cohort that fixes the encoding."""

    @property
    def cohort(self) -> Cohort: ...


P = TypeVar("P", bound=Parsed)


class Computation(ABC, Generic[P]):
    """One registered kind, over its parsed parameters ``P``. Stateless: parameters come in with every call."""

    name: ClassVar[str]
    #: What the coordinator learns, in one line (shown in docs and the node's audit log).
    reveals: ClassVar[str]
    needs_y: ClassVar[bool] = False

    # -- to implement -------------------------------------------------------------------------

    @abstractmethod
    def parse(self, params: Mapping[str, object]) -> P:
        """Validate JSON parameters strictly into a frozen dataclass with a ``cohort``; raise ParameterError."""

    @abstractmethod
    def vector_length(self, p: P) -> int: ...

    @abstractmethod
    def n_features(self, p: P) -> int | None:
        """Columns the node's data must have (None: any)."""

    @abstractmethod
    def contribution(self, p: P, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        """The node's float64 sums, every coordinate in [-rows, rows]."""

    @abstractmethod
    def cell_counts(self, p: P, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        """How many of the node's records each released aggregate covers (for ``min_records``)."""

    @abstractmethod
    def result(self, p: P, sums: np.ndarray, survivors: int) -> dict:
        """The JSON result from the decoded sums (normalised units)."""

    def used_columns(self, p: P) -> tuple[int, ...]:
        """The data columns the computation reads (checked to exist and to be finite)."""
        width = self.n_features(p)
        return tuple(range(width)) if width is not None else ()

    def static_policy(self, p: P, policy: AnalyticsPolicy) -> Refusal | None:
        """Checks on the parameters alone beyond the allow-list (e.g. bin widths)."""
        return None

    def describe(self, params: Mapping[str, object] | P) -> str:
        p = self.ensure(params)
        return f"{self.name} over at most {p.cohort.max_nodes} nodes x {p.cohort.max_rows} rows ({self.vector_length(p)} coordinates)"

    # -- shared machinery ---------------------------------------------------------------------

    def ensure(self, params: Mapping[str, object] | P) -> P:
        """Parsed parameters from either JSON or an already parsed object."""
        if isinstance(params, Mapping):
            parsed = self.parse(params)
        else:
            parsed = params
            if not hasattr(parsed, "cohort"):
                raise TypeError(f"{self.name}: expected JSON parameters or parsed ones, got {type(params).__name__}")
        return parsed

    def checked_length(self, p: P, key: str) -> int:
        length = self.vector_length(p)
        if length > MAX_VECTOR_LENGTH:
            raise ParameterError(
                self.name, key, f"asks for a {length}-coordinate vector; at most {MAX_VECTOR_LENGTH} are allowed"
            )
        return length

    def check_data(self, p: P, X: object, y: object = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The node's data as float64 arrays; raises InvalidParameter/EncodingError when it does not fit."""
        try:
            X_arr = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError):
            raise EncodingError(f"{self.name}: the data is not a numeric array") from None
        if X_arr.ndim == 1 and self.n_features(p) in (None, 1):
            X_arr = X_arr.reshape(-1, 1)
        if X_arr.ndim != 2:
            raise InvalidParameter(f"{self.name}: the data must be 2-D (rows x features), got shape {X_arr.shape}")
        width = self.n_features(p)
        if width is not None and X_arr.shape[1] != width:
            raise InvalidParameter(f"{self.name}: the request declares {width} features, this site's data has {X_arr.shape[1]}")
        used = self.used_columns(p)
        if used and X_arr.shape[1] <= max(used):
            raise InvalidParameter(
                f"{self.name}: the request uses column {max(used)}, this site's data has {X_arr.shape[1]} columns"
            )
        rows = X_arr.shape[0]
        if rows > p.cohort.max_rows:
            raise InvalidParameter(
                f"{self.name}: this site holds {rows} rows, more than the request's max_rows {p.cohort.max_rows}; "
                "its contribution could wrap the sum"
            )
        if used:
            finite = np.all(np.isfinite(X_arr[:, list(used)]), axis=0)
            if not np.all(finite):
                bad = list(used)[int(np.flatnonzero(~finite)[0])]
                raise EncodingError(f"{self.name}: column {bad} holds NaN or infinity; clean or impute the data first")
        y_arr = None
        if self.needs_y:
            if y is None:
                raise InvalidParameter(f"{self.name} needs a target y")
            y_arr = np.asarray(y, dtype=np.float64).reshape(-1)
            if y_arr.shape[0] != rows:
                raise InvalidParameter(f"{self.name}: y has {y_arr.shape[0]} values for {rows} rows")
            if not np.all(np.isfinite(y_arr)):
                raise EncodingError(f"{self.name}: y holds NaN or infinity; clean or impute the data first")
        return X_arr, y_arr

    def node_vector(
        self, params: Mapping[str, object] | P, X: object, y: object = None, *, rng: UniformSource | None = None
    ) -> np.ndarray:
        """The node's encoded contribution (uint32), ready for secure aggregation.

        ``rng`` drives the stochastic rounding (default: a fresh AES-CTR
        :class:`~securefed.dp.noise.NoiseSource` keyed from ``os.urandom``).
        """
        p = self.ensure(params)
        X_arr, y_arr = self.check_data(p, X, y)
        values = np.asarray(self.contribution(p, X_arr, y_arr), dtype=np.float64)
        length = self.vector_length(p)
        if values.shape != (length,):  # pragma: no cover - a kind's own bug
            raise LocalProtocolError(f"{self.name}: contribution has shape {values.shape}, expected ({length},)")
        rows = X_arr.shape[0]
        if values.size and float(np.max(np.abs(values))) > rows * (1 + 1e-12):  # pragma: no cover - a kind's own bug
            raise LocalProtocolError(f"{self.name}: a coordinate exceeds the row bound")
        return p.cohort.encoder(length).encode(values, rng)

    def finish(self, params: Mapping[str, object] | P, summed: np.ndarray, survivors: int) -> dict:
        """The coordinator's JSON result from the unmasked sum of ``survivors`` contributions."""
        p = self.ensure(params)
        length = self.vector_length(p)
        array = np.asarray(summed)
        if array.dtype != np.uint32 or array.shape != (length,):
            raise EncodingError(
                f"{self.name}: expected a summed uint32 vector of length {length}, got {array.dtype} {array.shape}"
            )
        if type(survivors) is not int or not 1 <= survivors <= p.cohort.max_nodes:
            raise InvalidParameter(
                f"{self.name}: survivors must be 1..max_nodes ({p.cohort.max_nodes}), got {survivors!r}; "
                "more nodes than declared could have wrapped the sum"
            )
        sums = p.cohort.encoder(length).decode(array)
        out = self.result(p, sums, survivors)
        out["computation"] = self.name
        out["encoding"] = p.cohort.describe(survivors)
        return out

    def policy_check(
        self, params: Mapping[str, object] | P, policy: AnalyticsPolicy, X: object = None, y: object = None
    ) -> Refusal | None:
        """None if the site's ``policy`` lets this request run, else the :class:`Refusal`.

        Without data only the request itself is checked; with ``X`` (and ``y``)
        the ``min_records`` rule is checked on the site's records too.
        """
        if not isinstance(policy, AnalyticsPolicy):
            raise TypeError("policy must be an AnalyticsPolicy")
        if self.name not in policy.allowed_computations:
            return Refusal(
                "computation-not-allowed",
                f"{self.name!r} is not in this site's allowed_computations {sorted(policy.allowed_computations)}",
            )
        try:
            p = self.ensure(params)
        except InvalidParameter as exc:
            return Refusal("invalid-parameters", str(exc))
        refused = self.static_policy(p, policy)
        if refused is not None or X is None:
            return refused
        try:
            X_arr, y_arr = self.check_data(p, X, y)
        except (InvalidParameter, EncodingError) as exc:
            return Refusal("data-mismatch", str(exc))
        counts = np.asarray(self.cell_counts(p, X_arr, y_arr))
        k = policy.min_records
        if k > 1 and np.any((counts > 0) & (counts < k)):
            return Refusal(
                "too-few-records",
                f"{self.name} would release an aggregate over fewer than min_records = {k} of this site's records",
            )
        return None

    # -- helpers for finish -------------------------------------------------------------------

    def whole(self, values: np.ndarray, p: P, survivors: int, what: str) -> np.ndarray:
        """Summed counts as int64; refuses a sum no honest cohort could produce."""
        counts = np.rint(values)
        limit = survivors * p.cohort.max_rows
        if values.size and np.any(values != counts):
            raise EncodingError(f"{self.name}: the summed {what} is not a whole number; a contribution was malformed")
        if values.size and (np.any(counts < 0) or np.any(counts > limit)):
            raise EncodingError(f"{self.name}: the summed {what} is outside 0..{limit}; a contribution was malformed")
        return counts.astype(np.int64)

    def within(self, values: np.ndarray, limit: np.ndarray | float, p: P, survivors: int, what: str) -> None:
        """Refuse sums of normalised values larger than the records behind them allow."""
        slack = p.cohort.sum_error(survivors)
        if values.size and np.any(np.abs(values) > np.asarray(limit) + slack):
            raise EncodingError(
                f"{self.name}: the summed {what} exceeds what its record count allows; a contribution was malformed"
            )


@dataclass(frozen=True)
class Request:
    """One secure aggregation to run: a registered kind's name and its JSON parameters."""

    kind: str
    params: Mapping[str, object]

    def to_json(self) -> dict:
        return {"kind": self.kind, "params": dict(self.params)}

    @classmethod
    def from_json(cls, raw: object) -> Request:
        if not isinstance(raw, Mapping) or set(raw) != {"kind", "params"}:
            raise InvalidParameter('an analytics request is an object {"kind": name, "params": {...}}')
        if not isinstance(raw["kind"], str) or not isinstance(raw["params"], Mapping):
            raise InvalidParameter("an analytics request's kind must be a string and its params an object")
        return cls(raw["kind"], dict(raw["params"]))


class Driver(ABC):
    """Runs one analytics task as a sequence of secure aggregations, without I/O.

    Loop: ``while (request := driver.next_request()) is not None: ...aggregate...;
    driver.receive(summed, survivors)``; then ``driver.result``.
    """

    def __init__(self) -> None:
        self._pending: Request | None = None
        self._result: dict | None = None
        self.aggregations = 0

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> dict:
        if self._result is None:
            raise LocalProtocolError(
                "the analytics task has not finished; call next_request() and receive() until it returns None"
            )
        return self._result

    def next_request(self) -> Request | None:
        """The next aggregation to run (the same one until its sum is received), or None when done."""
        if self._result is not None:
            return None
        if self._pending is None:
            self._pending = self._plan()
        return self._pending

    def receive(self, summed: np.ndarray, survivors: int) -> None:
        """Feed the unmasked sum of the pending request."""
        if self._pending is None:
            raise LocalProtocolError("no request is pending; call next_request() first")
        request, self._pending = self._pending, None
        self.aggregations += 1
        self._absorb(request, summed, survivors)

    def finish_with(self, result: dict) -> None:
        result["aggregations"] = self.aggregations
        self._result = result

    @abstractmethod
    def _plan(self) -> Request: ...

    @abstractmethod
    def _absorb(self, request: Request, summed: np.ndarray, survivors: int) -> None: ...
