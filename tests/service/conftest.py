"""Fixtures of the web-service tests (defined in ``svc.py``, which the tests also import helpers from)."""

from service.svc import client, home, live_server, models_env, pg_url, service_models, settings  # noqa: F401
