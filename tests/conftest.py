from __future__ import annotations

from pathlib import Path

import pytest
from fix_services import (  # noqa: F401 - fixtures
    clickhouse_database,
    make_settings,
    make_source_db,
    pipeline_settings,
    run_id,
    services,
)

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
