"""Fixtures of the Wan tests: the tiny Wan2.2 TI2V, built once, and a private copy per test."""

from __future__ import annotations

import copy

import pytest

from interdyn.models.wan import WanComponents
from tests.models.wan.helpers import tiny_wan


@pytest.fixture(scope="session")
def tiny_wan_session() -> WanComponents:
    return tiny_wan(seed=0)


@pytest.fixture
def wan(tiny_wan_session: WanComponents) -> WanComponents:
    """A private deep copy per test, so that no test can leak weight changes into another."""
    return copy.deepcopy(tiny_wan_session)
