"""Request and response bodies of the HTTP API (pydantic), as they appear in the OpenAPI document."""

from __future__ import annotations

from datetime import datetime as _datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field


def _utc(d: _datetime | None) -> _datetime | None:
    """Times from SQLite come back naive: they are UTC (the API always says so)."""
    return d.replace(tzinfo=timezone.utc) if d is not None and d.tzinfo is None else d


datetime = Annotated[_datetime, AfterValidator(_utc)]


class LoginIn(BaseModel):
    username: str
    password: str


class UserOut(BaseModel):
    id: int
    username: str
    is_admin: bool
    created_at: datetime


class UserIn(BaseModel):
    username: str = Field(description="1-64 letters, digits, '.', '_' or '-'")
    password: str = Field(description="at least 8 characters")
    is_admin: bool = False


class PasswordIn(BaseModel):
    old_password: str
    new_password: str


class TokenIn(BaseModel):
    name: str = ""
    scope: Literal["read", "contour", "admin"] = Field(
        "contour", description="read: GET only; contour: upload, contour, edit, send, delete your studies; "
                               "admin: also the administrator's routes (administrators only)")
    days: float | None = Field(None, description="expires after this many days (default DELINEO_TOKEN_DAYS, "
                                                 "at most DELINEO_TOKEN_MAX_DAYS)")


class TokenOut(BaseModel):
    id: int
    name: str
    token: str | None = Field(None, description="the token itself, shown only when created")
    created_at: datetime
    scope: str = Field("contour", description="read | contour | admin")
    expires_at: datetime | None = None


class JobIn(BaseModel):
    model: str | None = Field(None, description="model name (GET /api/models); default: the first that fits the study")
    structures: list[str] | None = Field(None, description="subset of the model's structures (default: all); a subset of the "
                                        "current version's model adds to it, keeping the other structures with their corrections and reviews")
    confirm_replace: bool = Field(False, description="replace structures of the current version that were corrected or reviewed "
                                  "(without it such a job is refused with 409 naming them; the earlier version is kept either way)")


class JobOut(BaseModel):
    id: str
    study_id: str
    model: str
    structures: list[str] | None
    state: str = Field(description="queued | running | done | failed")
    stage: str
    progress: float = Field(description="0..1")
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class StudyOut(BaseModel):
    id: str
    name: str
    kind: str = Field(description="nifti | png | dicom")
    owner: str
    size_bytes: int
    info: dict[str, Any]
    created_at: datetime
    latest_job: JobOut | None
    results: list[str] = Field(description="result kinds available for download")
    patient_id: str | None = Field(None, description="the DICOM Patient ID, shown to the study's owner only (never logged in clear)")
    study_date: str | None = Field(None, description="the DICOM Study Date (YYYY-MM-DD) when the upload had one")
    model: str | None = Field(None, description="the model of the latest job")


class StructureOut(BaseModel):
    name: str
    color: list[int]
    roi_type: str | None = None
    volume: float | None = None
    unit: str | None = None
    empty: bool | None = None
    flags: list[str] = Field(default_factory=list, description="failed anatomy checks naming this structure")
    quality: dict[str, Any] | None = None
    review: dict[str, Any] | None = Field(None, description="approved | needs_work, by whom and when")
    edited: bool = False


class ReviewIn(BaseModel):
    state: str | None = Field(description="approved | needs_work | null (clear)")
    note: str | None = None


class ReviewOut(BaseModel):
    version: int = Field(description="the edited result's version (0: the model's)")
    set_version: int = Field(0, description="the structure set's version: one per change set (the changes between two downloads or sends of the DICOM results)")
    reviews: dict[str, dict[str, Any]]
    edited: list[str]


class ModelOut(BaseModel):
    name: str
    spatial_dims: int
    structures: list[StructureOut]
    description: str = ""


class ReferenceOut(BaseModel):
    present: bool
    source: str | None = Field(None, description="the uploaded file's name")
    user: str | None = None
    at: str | None = None
    structures: list[str] = []
    job: str | None = Field(None, description="the job whose result the metrics compare")
    metrics: list[dict[str, Any]] = Field(default_factory=list, description="per structure: dice, hd95_mm, surface_dice (2 mm), volumes")


class DestinationIn(BaseModel):
    address: str = Field(description="AE@HOST:PORT")


class DestinationOut(BaseModel):
    name: str
    target: str = Field(description="AE@HOST:PORT for administrators; other users see the AE title only")
    source: str = Field(description="env (DELINEO_SEND_DESTINATIONS) | admin (set in the page)")


class SendIn(BaseModel):
    destination: str
    seg: bool = Field(True, description="also send the DICOM SEG")


class SendOut(BaseModel):
    id: str
    study: str
    job: str
    version: int
    destination: str
    target: str = Field(description="AE@HOST:PORT for administrators; other users see the AE title only")
    files: list[str]
    user: str
    state: str = Field(description="queued | sending | retrying | sent | failed")
    attempts: int
    error: str | None
    created_at: str
    finished_at: str | None


class VersionOut(BaseModel):
    """A finished job's result, kept as a version of the study's contours."""

    job: str
    model: str
    requested: list[str] | None = Field(None, description="the structures the job was asked for (null: all)")
    structures: list[str] = Field(description="the structures of this version (a subset job's result includes the version it added to)")
    created_at: datetime
    finished_at: datetime | None
    current: bool = Field(description="the version the viewer and the downloads show")
    based_on: str | None = Field(None, description="the job whose version a subset job added to")
    approved: int
    needs_work: int
    edited: int
    edit_version: int
