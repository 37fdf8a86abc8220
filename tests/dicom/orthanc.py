"""A real Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``) for the tests, on loopback ports.

The configuration is ``deploy/orthanc/orthanc.json`` and the routing script
``deploy/orthanc/route-to-delineo.lua``, the files "Deploy beside Orthanc" (docs/orthanc.md) tells a
department to install; the tests replace only what is machine-specific: the ports, a throw-away
storage folder, the node's address, the password, StableAge and the script's path.
"""

from __future__ import annotations

import json
import secrets
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from waits import HANG_S

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "orthanc"
PLUGINS = Path("/usr/share/orthanc/plugins")


def orthanc_program() -> str | None:
    return shutil.which("Orthanc") or next((str(p) for p in (Path("/usr/sbin/Orthanc"), Path("/usr/bin/Orthanc")) if p.is_file()), None)


def needs_orthanc(test):
    """Skipped where Debian's orthanc / orthanc-dicomweb are not installed (make system-deps)."""
    test = pytest.mark.skipif(orthanc_program() is None, reason="Orthanc not installed (make system-deps: orthanc)")(test)
    return pytest.mark.skipif(not (PLUGINS / "libOrthancDicomWeb.so").exists(),
                              reason="Orthanc's DICOMweb plugin not installed (make system-deps: orthanc-dicomweb)")(test)


@dataclass
class Orthanc:
    http_port: int
    dicom_port: int
    user: str
    password: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(self.user, self.password), timeout=60)

    def upload(self, files) -> list[str]:
        """Store DICOM files through the REST API (POST /instances); returns Orthanc's instance ids."""
        ids = []
        with self.client() as c:
            for f in files:
                r = c.post("/instances", content=Path(f).read_bytes(), headers={"Content-Type": "application/dicom"})
                r.raise_for_status()
                ids.append(r.json()["ID"])
        return ids

    def series_of_study(self, study_uid: str) -> list[dict]:
        """Every series of the study (``MainDicomTags`` and ``Instances``), found by its Study Instance UID."""
        with self.client() as c:
            found = c.post("/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}).raise_for_status().json()
            if not found:
                return []
            return c.get(f"/studies/{found[0]}/series").raise_for_status().json()

    def instance_file(self, instance_id: str) -> bytes:
        with self.client() as c:
            return c.get(f"/instances/{instance_id}/file").raise_for_status().content


@dataclass
class TlsFiles:
    """A throw-away CA, a server certificate and key for 127.0.0.1 and a client certificate and key,
    all signed by the CA (openssl)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA")
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "delineo")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.crt",
                "-days", "2", *(["-extfile", "san.cnf"] if name == "server" else []))
    return TlsFiles(folder / "ca.pem", folder / "server.crt", folder / "server.key", folder / "client.crt", folder / "client.key")


@contextmanager
def tls_proxy(tls: TlsFiles, target_port: int) -> Iterator[int]:
    """A TLS-terminating reverse proxy on 127.0.0.1 in front of ``target_port``, as a hospital puts
    nginx in front of Orthanc: HTTPS with the test CA's server certificate, and only clients with a
    certificate from that CA get through (others fail the handshake). Yields its port.

    (Debian's Orthanc 1.10.1 serves HTTPS itself, but crashed with SIGSEGV at the first HTTPS request
    in our tests, with and without client certificates; so TLS is terminated in front of it.)"""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tls.server_cert), str(tls.server_key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(str(tls.ca))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def relay(raw: socket.socket) -> None:
        raw.settimeout(60)
        try:
            conn = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        try:
            with conn, socket.create_connection(("127.0.0.1", target_port), timeout=60) as up:
                while not stop.is_set():
                    ready, _, _ = select.select([conn, up], [], [], 60)
                    if not ready:
                        return
                    for s in ready:
                        data = s.recv(65536)
                        if not data:
                            return
                        (up if s is conn else conn).sendall(data)
                        while s is conn and conn.pending():
                            up.sendall(conn.recv(65536))
        except (ssl.SSLError, OSError):
            pass

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=relay, args=(raw,), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        server.join(timeout=10)
        listener.close()


def orthanc_config(storage: Path, http_port: int, dicom_port: int, password: str, node: tuple[str, str, int] | None,
                   stable_age: int = 2) -> dict:
    """``deploy/orthanc/orthanc.json`` with the machine-specific values of one test run."""
    cfg = json.loads((DEPLOY / "orthanc.json").read_text())
    cfg.update(StorageDirectory=str(storage), IndexDirectory=str(storage), HttpPort=http_port, DicomPort=dicom_port,
               RemoteAccessAllowed=False, RegisteredUsers={"delineo": password}, StableAge=stable_age,
               LuaScripts=[str(DEPLOY / "route-to-delineo.lua")])
    if node is None:
        cfg["DicomModalities"] = {}
    else:
        ae, host, port = node
        cfg["DicomModalities"] = {"delineo": {**cfg["DicomModalities"]["delineo"], "AET": ae, "Host": host, "Port": port}}
    return cfg


@contextmanager
def running_orthanc(folder: Path, http_port: int, dicom_port: int, node: tuple[str, str, int] | None = None,
                    stable_age: int = 2) -> Iterator[Orthanc]:
    """Orthanc on 127.0.0.1 with a throw-away storage folder under ``folder``; stopped on leaving."""
    folder.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(12)
    config = folder / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(folder / "db", http_port, dicom_port, password, node, stable_age), indent=2))
    log = folder / "orthanc.log"
    with log.open("w") as out:
        proc = subprocess.Popen([orthanc_program(), str(config)], stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    server = Orthanc(http_port, dicom_port, "delineo", password, log)
    try:
        deadline = time.monotonic() + HANG_S
        while True:
            assert proc.poll() is None, "Orthanc exited:\n" + log.read_text()[-4000:]
            try:
                if httpx.get(server.url + "/system", auth=(server.user, password), timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Orthanc did not come up:\n" + log.read_text()[-4000:]
            time.sleep(0.3)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
