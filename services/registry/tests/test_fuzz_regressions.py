"""Inputs the public-API fuzz test (tests/integration/test_public_api_fuzz.py) found crashing, now 404s.

A version number beyond the 32-bit ``versions.number`` column made PostgreSQL raise "integer out of
range" (an unhandled 500 behind the gateway's 502) for every route that looks a version up.
"""

from __future__ import annotations

import pytest
from registry_support import ALICE, Registry

from mlp_core.errors import NotFound

NUMBERS = [0, -1, 2**31, 2156016966, 2150406537353996800, 2**64]


@pytest.mark.parametrize("number", NUMBERS)
def test_impossible_version_numbers_are_not_found(registry: Registry, number: int) -> None:
    service = registry.service
    calls = [
        lambda: service.catalog.get_version(ALICE, "fraud", "scorer", number),
        lambda: service.uploads.abort(ALICE, "fraud", "scorer", number),
        lambda: service.uploads.commit(ALICE, "fraud", "scorer", number),
        lambda: service.downloads.manifest(ALICE, "fraud", "scorer", number),
        lambda: service.housekeeping.archive(ALICE, "fraud", "scorer", number),
        lambda: service.releases.set_alias(ALICE, "fraud", "scorer", "staging", number),
    ]
    for call in calls:
        with pytest.raises(NotFound):
            call()
