"""A V1 `:predict` body → the records × features matrix the models score, or a `RequestError`
naming the field and what was expected.

Each instance is an object `{"feature": value, …}` with every feature of the selection's
dataset, or a list of values in the dataset's feature order; the two may be mixed. A value is a
JSON number or `null`. `null` (and Python's `NaN` token) means missing: the models impute it as
they learned to in training (scikit-learn pipelines: the training mean; LightGBM: its
missing-value branch). Infinities and booleans are refused. Values are cast to float32, the
dtype the dataset was stored and the models were trained and batch-scored in, so a record
scores here exactly as in `aggregated_predictions`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, Final

import numpy as np
import orjson

from ml_assets.serve.limits import MAX_INSTANCES

_NAMED: Final = 5  # features named in a message, at most
_VALUE_TYPES: Final = frozenset({int, float, type(None)})  # not bool: `true` is no value


class RequestError(ValueError):
    """A request the server refuses: `status` (4xx) and a message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_NAMED])
    return shown + (f", … ({len(names)} in all)" if len(names) > _NAMED else "")


def _order_hint(features: Sequence[str]) -> str:
    if len(features) <= 3:
        return ", ".join(features)
    return f"{features[0]}, {features[1]}, …, {features[-1]}"


def parse_body(body: bytes, max_instances: int = MAX_INSTANCES) -> list[Any]:
    """The `instances` list of a JSON body (400 for what is not one, 413 beyond the limit)."""
    try:
        payload = orjson.loads(body)  # 5-10x the standard library's speed on numeric arrays
    except orjson.JSONDecodeError:
        try:  # the standard library also takes NaN (a missing value) and words its errors well
            payload = json.loads(body)
        except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
            raise RequestError(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise RequestError(
            400,
            f'the body must be a JSON object {{"instances": [...]}}, got {type(payload).__name__}',
        )
    if "instances" not in payload:
        raise RequestError(400, 'the body lacks "instances": expected {"instances": [record, …]}')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise RequestError(
            400, f'"instances" must be a list of records, got {type(instances).__name__}'
        )
    if not instances:
        raise RequestError(400, '"instances" is empty: send at least one record')
    if len(instances) > max_instances:
        raise RequestError(
            413,
            f'"instances" has {len(instances)} records; at most {max_instances} per request '
            "(split the batch)",
        )
    return instances


def instance_matrix(instances: Sequence[Any], features: Sequence[str]) -> np.ndarray:
    """The float32 matrix (records × `features`) of already parsed instances; 422 naming the
    instance and feature for what does not fit."""
    width = len(features)
    wanted = frozenset(features)
    pick = itemgetter(*features) if width > 1 else (lambda record: (record[features[0]],))
    rows: list[Sequence[Any]] = []
    for i, instance in enumerate(instances):
        if isinstance(instance, dict):
            if instance.keys() != wanted:
                _mismatch(i, instance, features, wanted)
            row = pick(instance)
        elif isinstance(instance, list):
            if len(instance) != width:
                raise RequestError(
                    422,
                    f"instances[{i}]: expected {width} values in the dataset's feature order "
                    f"({_order_hint(features)}), got {len(instance)}",
                )
            row = instance
        else:
            raise RequestError(
                422,
                f"instances[{i}]: expected an object of feature values or a list of {width} "
                f"numbers, got {type(instance).__name__}",
            )
        if not _VALUE_TYPES.issuperset(map(type, row)):  # one C-level pass per record
            j = next(j for j, value in enumerate(row) if type(value) not in _VALUE_TYPES)
            _bad_value(i, j, row[j], features, isinstance(instance, dict))
        rows.append(row)
    try:
        values = np.array(rows, dtype=np.float64)
    except OverflowError:  # an integer beyond any float
        values = np.array([[_as_float(v) for v in row] for row in rows], dtype=np.float64)
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused just below
        result = values.astype(np.float32)
    infinite = np.argwhere(np.isinf(result))
    if len(infinite):
        i, j = (int(k) for k in infinite[0])
        raise RequestError(
            422,
            f"{_where(i, j, features, isinstance(instances[i], dict))}: expected a finite "
            f"number (float32) or null, got {rows[i][j]!r}",
        )
    return result


def _as_float(value: Any) -> float:
    try:
        return float("nan") if value is None else float(value)
    except OverflowError:
        return math.inf


def _where(i: int, j: int, features: Sequence[str], named: bool) -> str:
    return f"instances[{i}][{features[j]!r}]" if named else f"instances[{i}][{j}] ({features[j]})"


def _bad_value(i: int, j: int, value: Any, features: Sequence[str], named: bool) -> None:
    raise RequestError(
        422,
        f"{_where(i, j, features, named)}: expected a number or null, got "
        f"{type(value).__name__} {json.dumps(value)[:40]}",
    )


def _mismatch(
    i: int, record: dict[str, Any], features: Sequence[str], wanted: frozenset[str]
) -> None:
    extra = [str(k) for k in record if k not in wanted]
    if extra:
        raise RequestError(
            422,
            f"instances[{i}]: unknown feature(s) {_names(extra)}; the dataset's features are "
            f"{_order_hint(features)} ({len(features)})",
        )
    missing = [f for f in features if f not in record]
    raise RequestError(
        422,
        f"instances[{i}]: missing {len(missing)} of the {len(features)} features: "
        f"{_names(missing)} (send every feature; null for an unknown value)",
    )
