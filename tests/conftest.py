"""Shared fixtures: a small SynthPA on disk and the reference label files when present."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def synthpa_root(tmp_path_factory) -> Path:
    from parlab.data.synthpa import generate

    return generate(tmp_path_factory.mktemp("synthpa") / "synthpa", 200, seed=3, workers=1)


def shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"reference file {path} not present (only on machines with ../shared/data)")
    return path
