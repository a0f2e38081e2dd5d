"""The overview lists what needs attention first: critical alerts before warnings."""

from __future__ import annotations

from rehost.web.pages import templates


def test_critical_alerts_come_first() -> None:
    overview = {"items": 3, "by_health": {"critical": 1, "warning": 2}, "worst_rpo_seconds": 900.0,
                "scheduler_running": True, "by_state": {"protected": 3},
                "alerts": [{"severity": "warning", "subject": "a", "message": "RPO 6m exceeds 5m"},
                           {"severity": "critical", "subject": "b", "message": "RPO 15m exceeds 5m"},
                           {"severity": "warning", "subject": "job 1", "message": "failed"}]}
    html = templates.env.get_template("overview.html").render(overview=overview, caller=None)
    assert html.index("<b>b</b>") < html.index("<b>a</b>") < html.index("<b>job 1</b>")
