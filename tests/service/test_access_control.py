"""Access control, round 2 (issue 36, items 6, 7, 8 and 10): account events in the access log,
API tokens with an expiry and a scope, sign-in throttling per (address, account), and the
Origin check against cross-site requests made with the session cookie. Every test goes through
HTTP (TestClient) with the fixtures of ``svc.py``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from service.svc import ADMIN_PASSWORD, make_settings, nifti_bytes, upload

FOREIGN = "https://evil.example"


def _app(home, **kw):
    from delineo.service.api import create_app

    return TestClient(create_app(make_settings(home, **kw)))


def _login(c, user="admin", password=ADMIN_PASSWORD):
    return c.post("/api/auth/login", json={"username": user, "password": password})


def _signed_in(app, user: str, password: str, address: str = "testclient") -> TestClient:
    c = TestClient(app, client=(address, 50000))
    assert _login(c, user, password).status_code == 200
    return c


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# ---- 6. account events in the access log ------------------------------------------------------

def test_account_events_are_in_the_access_log(client):
    assert client.post("/api/users", json={"username": "alice", "password": "alice-password"}).status_code == 201
    uid = next(u["id"] for u in client.get("/api/users").json() if u["username"] == "alice")
    alice = _signed_in(client.app, "alice", "alice-password", address="10.1.2.3")
    r = alice.post("/api/auth/password", json={"old_password": "alice-password", "new_password": "alice-password-2"})
    assert r.status_code == 204, r.text
    r = alice.post("/api/auth/tokens", json={"name": "nightly script", "scope": "read", "days": 7})
    assert r.status_code == 201, r.text
    assert client.delete(f"/api/users/{uid}/sessions").json()["revoked"] == 2
    assert client.put("/api/send/destinations/Planning", json={"address": "TPS@10.0.0.9:104"}).status_code == 200
    assert client.delete("/api/send/destinations/Planning").status_code == 204

    events = client.get("/api/audit").json()
    rows = [(e["actor"], e["action"]) for e in reversed(events)]
    assert rows == [("admin", "login"), ("admin", "user-create"), ("alice", "login"), ("alice", "password-change"),
                    ("alice", "token-create"), ("admin", "sessions-revoke"), ("admin", "destination-set"),
                    ("admin", "destination-delete")], rows
    by = {e["action"]: e for e in events}
    assert by["login"]["address"] == "testclient"
    assert [e["address"] for e in events if e["actor"] == "alice"] == ["10.1.2.3"] * 3
    assert "alice" in by["user-create"]["detail"] and "administrator" not in by["user-create"]["detail"]
    assert "nightly script" in by["token-create"]["detail"] and "read" in by["token-create"]["detail"]
    assert "alice" in by["sessions-revoke"]["detail"] and "2" in by["sessions-revoke"]["detail"]
    assert "Planning" in by["destination-set"]["detail"] and "TPS@10.0.0.9:104" in by["destination-set"]["detail"]
    assert "Planning" in by["destination-delete"]["detail"]
    for e in events:  # no password, no token in the log
        assert "alice-password" not in str(e) and r.json()["token"] not in str(e)
    assert client.get("/api/audit", params={"action": "login"}).json()[0]["actor"] == "alice"


# ---- 7. API tokens: expiry, scope, no minting with a token -----------------------------------

def test_tokens_expire_by_default_and_within_the_administrators_maximum(home, models_env):
    with _app(home, token_default_days=30, token_max_days=90) as c:
        assert _login(c).status_code == 200
        r = c.post("/api/auth/tokens", json={"name": "default"})
        assert r.status_code == 201, r.text
        made = r.json()
        expires = datetime.fromisoformat(made["expires_at"])
        assert abs(expires - (datetime.now(timezone.utc) + timedelta(days=30))) < timedelta(minutes=5)
        assert made["scope"] == "contour"  # not the account's full power unless asked for
        r = c.post("/api/auth/tokens", json={"name": "long", "days": 400})
        assert r.status_code == 422 and "90 days" in r.json()["detail"], r.text
        assert c.post("/api/auth/tokens", json={"name": "zero", "days": 0}).status_code == 422
        assert c.post("/api/auth/tokens", json={"name": "bad", "scope": "everything"}).status_code == 422
        listed = c.get("/api/auth/tokens").json()
        assert [(t["name"], t["scope"], t["token"]) for t in listed] == [("default", "contour", None)]
        assert listed[0]["expires_at"] == made["expires_at"]

        anon = TestClient(c.app)
        assert anon.get("/api/auth/me", headers=_bearer(made["token"])).status_code == 200
        # a token aged past its expiry stops working, saying why
        from delineo.service.models import ApiToken

        with c.app.state.ctx.db.session() as s:
            s.get(ApiToken, made["id"]).expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)
        r = anon.get("/api/auth/me", headers=_bearer(made["token"]))
        assert r.status_code == 401 and "expired" in r.json()["detail"], r.text


def test_token_scopes_are_enforced_on_the_routes(client):
    tokens = {s: client.post("/api/auth/tokens", json={"name": s, "scope": s}).json()["token"] for s in ("read", "contour", "admin")}
    anon = TestClient(client.app)
    # read-only: reads, never writes
    sid = upload(client, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
    assert anon.get(f"/api/studies/{sid}", headers=_bearer(tokens["read"])).status_code == 200
    r = upload(anon, [("ct.nii.gz", nifti_bytes(16))], headers=_bearer(tokens["read"]))
    assert r.status_code == 403 and "read-only" in r.json()["detail"], r.text
    assert anon.delete(f"/api/studies/{sid}", headers=_bearer(tokens["read"])).status_code == 403
    assert anon.post(f"/api/studies/{sid}/jobs", json={"model": "tiny-ct"}, headers=_bearer(tokens["read"])).status_code == 403
    # upload-and-contour: the user's own work, not the administrator's routes (even on an admin account)
    r = upload(anon, [("ct.nii.gz", nifti_bytes(16))], headers=_bearer(tokens["contour"]))
    assert r.status_code == 201, r.text
    for path in ("/api/users", "/api/audit"):
        r = anon.get(path, headers=_bearer(tokens["contour"]))
        assert r.status_code == 403 and "scope" in r.json()["detail"], (path, r.text)
    r = anon.post("/api/users", json={"username": "mallory", "password": "mallory-password", "is_admin": True},
                  headers=_bearer(tokens["contour"]))
    assert r.status_code == 403
    # admin: the administrator's routes
    assert anon.get("/api/users", headers=_bearer(tokens["admin"])).status_code == 200
    assert anon.get("/api/audit", headers=_bearer(tokens["admin"])).status_code == 200
    # a plain user cannot make an admin token
    assert client.post("/api/users", json={"username": "bob", "password": "bob-password"}).status_code == 201
    bob = _signed_in(client.app, "bob", "bob-password")
    r = bob.post("/api/auth/tokens", json={"name": "x", "scope": "admin"})
    assert r.status_code == 403 and "administrator" in r.json()["detail"], r.text
    assert bob.post("/api/auth/tokens", json={"name": "x", "scope": "read"}).status_code == 201


def test_a_token_cannot_mint_tokens(client):
    token = client.post("/api/auth/tokens", json={"name": "script", "scope": "admin"}).json()["token"]
    anon = TestClient(client.app)
    r = anon.post("/api/auth/tokens", json={"name": "more", "scope": "admin"}, headers=_bearer(token))
    assert r.status_code == 403 and "sign in" in r.json()["detail"], r.text
    # a token sent beside a session cookie does not count as the session
    r = client.post("/api/auth/tokens", json={"name": "more"}, headers=_bearer(token))
    assert r.status_code == 403
    assert [t["name"] for t in client.get("/api/auth/tokens").json()] == ["script"]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    return request.getfixturevalue("pg_url")


def test_migration_gives_existing_tokens_the_default_expiry_and_their_accounts_scope(database_url, monkeypatch):
    from alembic import command
    from sqlalchemy import create_engine, text

    from delineo.service.db import alembic_config

    monkeypatch.setenv("DELINEO_TOKEN_DAYS", "45")
    url = database_url
    command.upgrade(alembic_config(url), "0002")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, username, password_hash, is_admin, created_at) VALUES "
                          "(1, 'admin', 'x', :t, '2025-01-01 00:00:00'), (2, 'alice', 'x', :f, '2025-01-01 00:00:00')"),
                     {"t": True, "f": False})
        conn.execute(text("INSERT INTO api_tokens (id, user_id, token_hash, kind, name, created_at, last_used_at) VALUES "
                          "(1, 1, 'a', 'api', 'old admin', '2025-01-01 00:00:00', '2025-01-01 00:00:00'), "
                          "(2, 2, 'b', 'api', 'old alice', '2025-01-01 00:00:00', '2025-01-01 00:00:00'), "
                          "(3, 2, 'c', 'session', '', '2025-01-01 00:00:00', '2025-01-01 00:00:00')"))
    command.upgrade(alembic_config(url), "head")
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(text("SELECT id, scope, expires_at FROM api_tokens"))}
    engine.dispose()
    assert (rows[1].scope, rows[2].scope) == ("admin", "contour")
    for i in (1, 2):
        expires = rows[i].expires_at
        expires = datetime.fromisoformat(expires) if isinstance(expires, str) else expires  # SQLite: text, naive UTC
        expires = expires if expires.tzinfo else expires.replace(tzinfo=timezone.utc)
        assert abs(expires - (datetime.now(timezone.utc) + timedelta(days=45))) < timedelta(minutes=5), rows[i]
    assert rows[3].expires_at is None  # sessions expire when idle, as before


def test_token_settings_from_environment(monkeypatch):
    from delineo.service.config import Settings

    monkeypatch.setenv("DELINEO_TOKEN_DAYS", "10")
    monkeypatch.setenv("DELINEO_TOKEN_MAX_DAYS", "20")
    monkeypatch.setenv("DELINEO_ALLOWED_ORIGINS", "https://contour.example.org/, https://Other.example.org:8443")
    s = Settings.from_env(home="x")
    assert (s.token_default_days, s.token_max_days) == (10, 20)
    assert s.allowed_origins == ("https://contour.example.org", "https://other.example.org:8443")
    with pytest.raises(ValueError, match="DELINEO_TOKEN_DAYS"):
        Settings(home="x", token_default_days=30, token_max_days=10)
    with pytest.raises(ValueError, match="DELINEO_ALLOWED_ORIGINS"):
        Settings(home="x", allowed_origins=("contour.example.org",))


# ---- 8. throttling per (address, account) and per address --------------------------------------

def test_a_stranger_cannot_lock_the_owner_out_from_another_address(home, models_env):
    with _app(home, login_max_failures=5, login_lockout_s=60) as c:
        stranger = TestClient(c.app, client=("203.0.113.7", 40000))
        codes = [_login(stranger, "admin", f"guess-{i}").status_code for i in range(8)]
        assert codes == [401] * 5 + [429] * 3, codes
        assert _login(stranger).status_code == 429  # the right password from the stranger's address: still refused
        owner = TestClient(c.app, client=("192.0.2.10", 40000))
        r = _login(owner)
        assert r.status_code == 200, r.text  # the owner, from their own address, signs in
        # ... and that does not lift the stranger's lock
        assert _login(stranger, "admin", "guess-again").status_code == 429
        # another account from the stranger's address is not locked by the failures for admin
        assert owner.post("/api/users", json={"username": "alice", "password": "alice-password"}).status_code == 201
        assert _login(stranger, "alice", "alice-password").status_code == 200


# ---- 10. cross-site requests with the session cookie ----------------------------------------------

def test_cross_site_requests_with_the_cookie_are_refused(client):
    r = upload(client, [("ct.nii.gz", nifti_bytes(16))], headers={"Origin": FOREIGN})
    assert r.status_code == 403 and "cross-site" in r.json()["detail"] and FOREIGN in r.json()["detail"], r.text
    assert r.headers.get("x-frame-options") == "DENY"  # refused inside the security-headers middleware
    assert client.get("/api/studies").json() == []  # nothing was stored
    r = client.post("/api/auth/logout", headers={"Origin": FOREIGN})
    assert r.status_code == 403
    assert client.get("/api/auth/me").status_code == 200  # still signed in
    # no Origin: the Referer's origin counts
    assert client.post("/api/auth/logout", headers={"Referer": FOREIGN + "/page.html"}).status_code == 403
    # an opaque origin (a sandboxed frame, a form from a no-referrer page) is not this site
    assert client.post("/api/auth/tokens", json={"name": "x"}, headers={"Origin": "null"}).status_code == 403
    # a look-alike with a different scheme or port is another origin
    assert client.delete("/api/studies/x", headers={"Origin": "https://testserver"}).status_code == 403
    assert client.delete("/api/studies/x", headers={"Origin": "http://testserver:8080"}).status_code == 403
    # reads are not checked
    assert client.get("/api/studies", headers={"Origin": FOREIGN}).status_code == 200
    # the page's own requests (same origin) work
    sid = upload(client, [("ct.nii.gz", nifti_bytes(16))], headers={"Origin": "http://testserver"}).json()["id"]
    assert client.delete(f"/api/studies/{sid}", headers={"Referer": "http://testserver/#study"}).status_code == 204
    # a sign-in from another site is refused too (login CSRF)
    anon = TestClient(client.app)
    assert anon.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD},
                     headers={"Origin": FOREIGN}).status_code == 403
    # a token request is not a cookie request: an Origin does not matter there
    token = client.post("/api/auth/tokens", json={"name": "t"}).json()["token"]
    r = upload(anon, [("ct.nii.gz", nifti_bytes(16))], headers={"Origin": FOREIGN, **_bearer(token)})
    assert r.status_code == 201, r.text
    assert client.post("/api/auth/logout", headers={"Origin": "http://testserver"}).status_code == 204


def test_allowed_origins_for_a_reverse_proxy(home, models_env):
    with _app(home, allowed_origins=("https://contour.example.org",)) as c:
        assert _login(c).status_code == 200
        r = upload(c, [("ct.nii.gz", nifti_bytes(16))], headers={"Origin": "https://contour.example.org"})
        assert r.status_code == 201, r.text
        assert upload(c, [("ct.nii.gz", nifti_bytes(16))], headers={"Origin": FOREIGN}).status_code == 403
        assert c.post("/api/auth/logout", headers={"Origin": "https://contour.example.org"}).status_code == 204
