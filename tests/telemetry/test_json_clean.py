"""json_clean's fast paths agree with the plain definition on every kind of value."""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from selfimprove_rl.telemetry.builder import json_clean


def reference(value: Any, depth: int = 0) -> bool:
    """The definition, written plainly: valid Unicode, finite numbers, str keys, depth <= 64."""
    if depth > 64:
        return False
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, str):
        return not any("\ud800" <= char <= "\udfff" for char in value)
    if isinstance(value, numbers.Integral):
        return abs(int(value)) < 2**63
    if isinstance(value, numbers.Real):
        return math.isfinite(float(value))
    if isinstance(value, Mapping):
        return all(
            isinstance(k, str) and reference(k, depth + 1) and reference(v, depth + 1)
            for k, v in value.items()
        )
    if isinstance(value, list | tuple):
        return all(reference(item, depth + 1) for item in value)
    return False


class Text(str):
    pass


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())),
    st.text().map(Text),
    st.binary(max_size=3),
    st.integers(min_value=-(2**31), max_value=2**31).map(np.int64),
    st.floats(allow_nan=True).map(np.float64),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.text(), st.integers()), children, max_size=4),
        st.dictionaries(st.text(), children, max_size=3).map(OrderedDict),
    ),
    max_leaves=20,
)


@settings(max_examples=600, deadline=None)
@given(values)
def test_fast_paths_agree_with_the_definition(value: Any) -> None:
    assert json_clean(value) == reference(value)


def test_edge_cases() -> None:
    assert json_clean("caf\u00e9 \u2615 \U0001f600")
    assert not json_clean("lone \ud800 surrogate")
    assert not json_clean({"k\udfff": 1})
    assert not json_clean({1: "int key"})
    assert not json_clean([2**63])
    assert json_clean([2**63 - 1, -(2**63) + 1])
    assert not json_clean(float("inf"))
    assert not json_clean(b"bytes")
    nested: Any = "leaf"
    for _ in range(64):
        nested = [nested]
    assert json_clean(nested)
    assert not json_clean([nested])
