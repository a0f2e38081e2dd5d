"""``rehost job ID`` prints the same lines locally and against a server: both format the JSON
view with ``rehost.jobs.views.job_lines``, the only thing a remote CLI has."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from rehost.jobs.views import job_lines, job_row, progress_text


def _job(**kw: Any) -> dict[str, Any]:
    steps = [
        {"name": "final_sync", "title": "Final sync", "state": "succeeded", "done": 0, "total": 0,
         "detail": "point abc\nmore", "started_at": None, "ended_at": None},
        {"name": "create", "title": "Create machine", "state": "running", "done": 512 << 20,
         "total": 1 << 30, "detail": "[not markup]", "started_at": None, "ended_at": None},
        {"name": "start", "title": "Start", "state": "pending", "done": 0, "total": 0, "detail": None,
         "started_at": None, "ended_at": None},
    ]
    return {"id": "j1", "kind": "failover", "machine": "web", "state": "running", "error": None,
            "steps": steps, **kw}


def test_a_running_job_shows_progress_in_bytes_and_first_lines_only() -> None:
    assert job_lines(_job()) == [
        "job j1  failover web  running",
        "  ✓ Final sync  point abc",
        "  … Create machine 50% (512.0 MiB of 1.0 GiB)  [not markup]",
        "    Start  ",
    ]
    assert job_row(_job()).split() == ["j1", "failover", "web", "running", "Create", "machine"]


def test_an_interrupted_job_says_how_to_resume_and_its_error_line() -> None:
    lines = job_lines(_job(state="interrupted", error="boom\nTraceback (most recent call last):"))
    assert lines[-2:] == ["  interrupted (its process is gone): resume with rehost job resume j1",
                          "  error: boom"]


def test_a_running_step_shows_its_rate_whether_its_start_is_a_time_or_json_text() -> None:
    step = {"done": 512 << 20, "total": 1 << 30}
    now = datetime(2026, 12, 5, 12, 0, 10, tzinfo=UTC)
    for started in (now - timedelta(seconds=8), "2026-12-05T12:00:02Z"):
        said = progress_text({**step, "started_at": started}, now)
        assert said == " 50% (512.0 MiB of 1.0 GiB, 64.0 MiB/s)"
