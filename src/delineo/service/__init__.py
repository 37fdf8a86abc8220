"""The delineation web service: FastAPI app, SQLAlchemy persistence, huey job queue, static web UI.

Layout (after FastAPI's full-stack template): :mod:`config` (settings from the environment),
:mod:`db` and :mod:`models` (SQLAlchemy 2.x + Alembic migrations in ``alembic/``),
:mod:`storage` (files under the data directory), :mod:`queue` (huey: embedded SQLite or Redis),
:mod:`security` (argon2 passwords, session cookies, API tokens), :mod:`api` + :mod:`routes`
(the HTTP API) and ``web/`` (the browser front end on NiiVue).
"""
