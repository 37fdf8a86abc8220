"""DICOMweb client (``dicomweb-client``): find a study's CT series (QIDO-RS), fetch it (WADO-RS),
store the RT Structure Set and SEG back (STOW-RS), with the authentication a hospital's PACS asks
for: a bearer token, a user name and password (HTTP basic), a client TLS certificate, a CA bundle.

``delineo.api.contour_dicomweb`` (``delineo contour --dicomweb URL --study UID``) puts them together.
Every failure a user can fix (unreachable server, refused credentials, no such study, several CT
series, a store refused) is an :class:`~delineo.errors.InputError` of one line naming the URL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from delineo.errors import ConfigError, InputError

log = logging.getLogger("delineo.dicomweb")

#: DICOM JSON tags read from QIDO-RS answers
_SERIES_UID, _MODALITY, _COUNT, _DESCRIPTION = "0020000E", "00080060", "00201209", "0008103E"
_STUDY_UID, _PATIENT_ID, _PATIENT_NAME, _STUDY_DATE, _STUDY_DESCRIPTION = "0020000D", "00100020", "00100010", "00080020", "00081030"


@dataclass(frozen=True)
class DicomwebAuth:
    """How to authenticate to a DICOMweb server (all optional; a token and a user are exclusive).

    token: sent as ``Authorization: Bearer <token>``; username/password: HTTP basic;
    client_cert: a PEM client certificate (with the key in it, or the key in ``client_key``) for
    mutual TLS; ca_bundle: PEM file of the CAs that signed the server's certificate (default: the
    system's); timeout_s: bound on each request (connect and read)."""

    token: str | None = None
    username: str | None = None
    password: str | None = None
    client_cert: str | Path | None = None
    client_key: str | Path | None = None
    ca_bundle: str | Path | None = None
    timeout_s: float = 120.0

    def __post_init__(self):
        if self.token and self.username:
            raise ConfigError("DICOMweb: give either a bearer token or a user name and password, not both")
        if self.password and not self.username:
            raise ConfigError("DICOMweb: a password needs a user name (--dicomweb-user)")
        if self.client_key and not self.client_cert:
            raise ConfigError("DICOMweb: a client key needs its certificate (--dicomweb-cert)")
        for name in ("client_cert", "client_key", "ca_bundle"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise InputError(path, f"DICOMweb {name.replace('_', ' ')}: no such file")


def session(auth: DicomwebAuth | None = None):
    """A ``requests`` session carrying ``auth``: headers, basic credentials, certificate, CA bundle."""
    import requests

    class _Session(requests.Session):
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment override a session's
        # own CA bundle (psf/requests#3829); the bundle given here wins
        def merge_environment_settings(self, url, proxies, stream, verify, cert):
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if auth.ca_bundle:
                settings["verify"] = str(auth.ca_bundle)
            return settings

    auth = auth or DicomwebAuth()
    s = _Session()
    if auth.token:
        s.headers["Authorization"] = f"Bearer {auth.token}"
    if auth.username:
        s.auth = (auth.username, auth.password or "")
    if auth.client_cert:
        s.cert = (str(auth.client_cert), str(auth.client_key)) if auth.client_key else str(auth.client_cert)
    if auth.ca_bundle:
        s.verify = str(auth.ca_bundle)
    return s


class Pacs:
    """One DICOMweb server: ``find_studies``, ``find_ct_series``, ``fetch_series``, ``store``."""

    def __init__(self, url: str, auth: DicomwebAuth | None = None):
        from dicomweb_client.api import DICOMwebClient

        if not url.startswith(("http://", "https://")):
            raise InputError(None, f"{url}: a DICOMweb URL starts with http:// or https://")
        self.url = url.rstrip("/")
        self.auth = auth or DicomwebAuth()
        self.client = DICOMwebClient(self.url, session=session(self.auth), timeout=self.auth.timeout_s)

    def _call(self, what: str, fn, *args, **kw):
        import requests

        try:
            return fn(*args, **kw)
        except requests.exceptions.SSLError as e:
            raise InputError(None, f"{self.url}: TLS failed while {what} (certificate or CA bundle?): {_short(e)}") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            raise InputError(None, f"{self.url}: cannot reach the DICOMweb server while {what}: {_short(e)}") from None
        except requests.exceptions.HTTPError as e:
            code = e.response.status_code if e.response is not None else None
            if code in (401, 403):
                raise InputError(None, f"{self.url}: the DICOMweb server refused the credentials (HTTP {code}) while {what}") from None
            raise InputError(None, f"{self.url}: HTTP {code} while {what}") from None

    def find_studies(self, patient_id: str | None = None, study_date: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """QIDO-RS studies matching a Patient ID and/or Study Date (``YYYYMMDD`` or a range
        ``YYYYMMDD-YYYYMMDD``): ``[{study_uid, patient_id, patient_name, study_date, description}]``."""
        filters = {k: v for k, v in (("PatientID", patient_id), ("StudyDate", study_date)) if v}
        found = self._call("searching studies", self.client.search_for_studies, search_filters=filters, limit=limit,
                           fields=["PatientName", "StudyDescription"])
        return [{"study_uid": _value(s, _STUDY_UID), "patient_id": _value(s, _PATIENT_ID), "patient_name": _value(s, _PATIENT_NAME),
                 "study_date": _value(s, _STUDY_DATE), "description": _value(s, _STUDY_DESCRIPTION)} for s in found]

    def series(self, study_uid: str) -> list[dict[str, Any]]:
        """QIDO-RS: the study's series as ``[{series_uid, modality, instances, description}]``."""
        found = self._call(f"searching the series of study {study_uid}", self.client.search_for_series,
                           study_instance_uid=study_uid, fields=["SeriesDescription", "NumberOfSeriesRelatedInstances"])
        return [{"series_uid": _value(s, _SERIES_UID), "modality": _value(s, _MODALITY),
                 "instances": _value(s, _COUNT), "description": _value(s, _DESCRIPTION)} for s in found]

    def find_ct_series(self, study_uid: str, series_uid: str | None = None) -> str:
        """The CT series to contour: ``series_uid`` when given (checked to be a CT of the study),
        else the study's only CT series."""
        series = self.series(study_uid)
        if not series:
            raise InputError(None, f"{self.url}: no study {study_uid} (or it has no series)")
        ct = [s for s in series if s["modality"] == "CT"]
        if series_uid is not None:
            match = [s for s in series if s["series_uid"] == series_uid]
            if not match:
                raise InputError(None, f"{self.url}: study {study_uid} has no series {series_uid}")
            if match[0]["modality"] != "CT":
                raise InputError(None, f"{self.url}: series {series_uid} is {match[0]['modality']}, not CT")
            return series_uid
        if not ct:
            raise InputError(None, f"{self.url}: study {study_uid} has no CT series (it has {', '.join(sorted({s['modality'] or '?' for s in series}))})")
        if len(ct) > 1:
            listed = "; ".join(f"{s['series_uid']} ({s['description'] or 'no description'}, {s['instances'] or '?'} images)" for s in ct)
            raise InputError(None, f"{self.url}: study {study_uid} has {len(ct)} CT series, pick one with --series: {listed}")
        return ct[0]["series_uid"]

    def fetch_series(self, study_uid: str, series_uid: str, folder: str | Path) -> list[Path]:
        """WADO-RS: every instance of the series written as ``folder/<k>.dcm`` (Part 10 files)."""
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian

        datasets = self._call(f"retrieving series {series_uid}", self.client.retrieve_series, study_uid, series_uid)
        if not datasets:
            raise InputError(None, f"{self.url}: series {series_uid} of study {study_uid} has no instances")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for k, ds in enumerate(datasets):
            if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
                meta = FileMetaDataset()
                meta.TransferSyntaxUID = ExplicitVRLittleEndian
                meta.MediaStorageSOPClassUID = ds.SOPClassUID
                meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.file_meta = meta
            path = folder / f"{k:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        log.info("DICOMweb: fetched %d instances of series %s from %s", len(paths), series_uid, self.url)
        return paths

    def store(self, files: Sequence[str | Path], study_uid: str) -> list[str]:
        """STOW-RS the files into ``study_uid``; returns the stored SOP Instance UIDs. Raises when the
        server refused any of them (its Failed SOP Sequence, with the reason codes)."""
        import pydicom

        datasets = [pydicom.dcmread(f) for f in files]
        answer = self._call(f"storing {len(datasets)} instance(s) in study {study_uid}", self.client.store_instances, datasets,
                            study_instance_uid=study_uid)
        failed = list(getattr(answer, "FailedSOPSequence", []) or [])
        if failed:
            why = ", ".join(f"{getattr(f, 'ReferencedSOPInstanceUID', '?')} (reason {int(getattr(f, 'FailureReason', 0)):#06x})" for f in failed)
            raise InputError(None, f"{self.url}: the DICOMweb server refused to store {why}")
        stored = [str(ds.SOPInstanceUID) for ds in datasets]
        log.info("DICOMweb: stored %d instance(s) in study %s on %s", len(stored), study_uid, self.url)
        return stored


def _value(item: dict, tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object (a person name as its alphabetic form)."""
    values = item.get(tag, {}).get("Value") or [None]
    v = values[0]
    return v.get("Alphabetic") if isinstance(v, dict) else v


def _short(e: Exception) -> str:
    """The cause in a requests error ("Max retries exceeded ... (Caused by SSLError(...))")."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "(Caused by " in text:
        text = text.split("(Caused by ", 1)[1].rstrip(")")
    return text[:240]
