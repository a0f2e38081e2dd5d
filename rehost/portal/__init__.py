"""The portal: the REST API and the dashboard in one application (``app``), and ``rehost
serve`` (``server``), which runs it beside the scheduler and the agents' enrollment.

The one place that imports both edges. The dashboard builds on the API (its sign-in, its
views), the API knows nothing of the dashboard, so mounting the two together lives above
both (``docs/design.md``, Layers).
"""
