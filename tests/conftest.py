import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from synthetic import make_dataset  # noqa: E402

REAL_DATA = Path(os.environ.get("COVIDNET_TEST_DATA", ROOT.parent / "shared" / "data" / "covid-ct"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A read-only-by-convention synthetic dataset shared by the tests."""
    root = tmp_path_factory.mktemp("synthetic") / "covid-ct"
    make_dataset(root)
    return root


@pytest.fixture
def fresh_synthetic(tmp_path) -> Path:
    """A synthetic dataset a test may damage."""
    root = tmp_path / "covid-ct"
    make_dataset(root, {"train": 6, "val": 3, "test": 3})
    return root


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The official COVID-CT copy; mandatory in CI, skipped elsewhere when absent."""
    if not (REAL_DATA / "Data-split").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the COVID-CT data at {REAL_DATA} (set COVIDNET_TEST_DATA)")
        pytest.skip(f"COVID-CT data not found at {REAL_DATA}")
    return REAL_DATA
