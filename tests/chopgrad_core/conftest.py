"""Fixtures shared by the chopgrad_core tests."""

from __future__ import annotations

import pytest


def _key(value):
    """A memo key's part: numbers, strings and None as themselves, lists and tuples item by item,
    anything else (tensors, modules, plans) by identity."""
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return id(value)


@pytest.fixture(scope="module")
def memoise():
    """``memoise(fn)``: ``fn`` computed once per arguments (objects by identity), for the plain
    references several tests compare their levers against. Deterministic on the CPU, so a test gets
    the value it would compute itself; the returned tensors are only read. Keeps what each call was
    given alive, so that no later object takes an id of a key."""

    def memoise(fn):
        memo = {}

        def call(*args, **kw):
            key = (_key(args), tuple(sorted((k, _key(v)) for k, v in kw.items())))
            if key not in memo:
                memo[key] = (args, kw), fn(*args, **kw)
            return memo[key][1]

        return call

    return memoise
