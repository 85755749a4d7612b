"""The job store: the URL comes from settings, and times come back timezone-aware."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from api.db import RunRow, make_engine, make_session_factory


def test_the_database_url_setting_chooses_the_store(make_api, tmp_path, data_dir):
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'jobs.db'}"
    api = make_api("succeed", database_url=url)
    run_id = api.submit()["run_id"]
    api.wait(run_id)
    assert (tmp_path / "elsewhere" / "jobs.db").exists()
    assert not (data_dir / "agentcpt-api.sqlite3").exists()
    sessions = make_session_factory(make_engine(url))
    with sessions() as s:
        assert [r.run_id for r in s.scalars(select(RunRow))] == [run_id]


def test_times_round_trip_as_utc_and_naive_ones_are_refused(tmp_path):
    sessions = make_session_factory(make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}"))
    created = datetime(2025, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    row = dict(name="n", state="queued", backend="local", run_dir="d", spec_path="s", log_path="l")
    with sessions() as s:
        s.add(RunRow(run_id="r1", created_at=created, **row))
        s.commit()
    with sessions() as s:
        got = s.get(RunRow, "r1")
        assert got.created_at == created and got.created_at.tzinfo == UTC
    with sessions() as s, pytest.raises(Exception, match="naive datetime"):
        s.add(RunRow(run_id="r2", created_at=datetime(2025, 1, 1), **row))
        s.commit()
