"""Fixtures of the fault tests."""

import pytest

from db.session import make_engine


@pytest.fixture
def sqlite_engine(tmp_path, monkeypatch):
    from db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'faults.db'}"
    upgrade(url)
    monkeypatch.setenv("DATABASE_URL", url)
    engine = make_engine(url)
    yield engine
    engine.dispose()
