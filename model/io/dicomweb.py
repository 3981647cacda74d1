"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) against a PACS, with the maintained ``dicomweb-client``.

Torch-free: the API imports it for the cheap series look-up of ``POST /segment?study_uid=…``,
the worker for retrieval and push (:mod:`worker.dicomweb`).

Configuration (:class:`DicomwebSettings`, ``LATENTSEG_DICOMWEB_*``): one source
(``LATENTSEG_DICOMWEB_URL``, the DICOMweb root such as ``http://pacs:8042/dicom-web``) and a
push destination (``LATENTSEG_DICOMWEB_PUSH_URL``, default: the source); auth ``none``,
``basic`` (username, password) or ``bearer`` (token), the same for both; a timeout per request;
TLS verification on unless turned off (or a CA bundle). Secrets never enter job payloads or
records: every process that talks to the PACS reads them from its own environment.

Series choice (:func:`choose_ct_series`, a study UID without a series UID): the CT-modality
series with the most instances. No CT series, or several CT series tied for the most
instances, is refused with the candidates named (:class:`SeriesChoiceError`).

Failures are :class:`DicomwebError` whose text starts with what a user needs:
``source unreachable``, ``series not found``, ``study not found``, ``source refused``,
``retrieval too large``.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.errors import ServerFault, UserError

if TYPE_CHECKING:
    from dicomweb_client.api import DICOMwebClient
    from pydicom.dataset import Dataset

__all__ = [
    "DicomwebError",
    "DicomwebSettings",
    "RetrievalLimits",
    "SeriesCandidate",
    "SeriesChoiceError",
    "choose_ct_series",
    "fetch_reference",
    "make_client",
    "public_url",
    "push_files",
    "retrieve_series_zip",
    "search_series",
    "store_instances",
]

log = logging.getLogger(__name__)

_MODALITY = "00080060"
_SERIES_UID = "0020000E"
_SERIES_NUMBER = "00200011"
_SERIES_DESCRIPTION = "0008103E"
_INSTANCES = "00201209"  # NumberOfSeriesRelatedInstances
_FAILED_SOP_SEQUENCE = "FailedSOPSequence"


class DicomwebError(ServerFault, RuntimeError):
    """A DICOMweb exchange failed; the message is the job's failure reason as it stands."""


class SeriesChoiceError(UserError, ValueError):
    """A study reference cannot be resolved to one CT series; names the candidates."""

    def __init__(self, message: str, candidates: Sequence[SeriesCandidate]) -> None:
        super().__init__(message)
        self.candidates = tuple(candidates)

    def detail(self) -> dict[str, Any]:
        return {
            "message": str(self),
            "candidates": [
                {"series_uid": c.series_uid, "modality": c.modality, "instances": c.instances,
                 "description": c.description}
                for c in self.candidates
            ],
        }


class DicomwebSettings(BaseSettings):
    """``LATENTSEG_DICOMWEB_*`` variables: where the PACS is and how to talk to it. Never stored."""

    # hide_input_in_errors: a refused URL or password is never echoed into a start-up error or log.
    model_config = SettingsConfigDict(
        env_prefix="LATENTSEG_DICOMWEB_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    url: str | None = None
    push_url: str | None = None  # None: push to ``url``
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    verify_tls: bool = True
    ca_bundle: Path | None = None
    # STOW-RS of the results: attempts and the first wait (doubling, at most max_backoff_s).
    push_attempts: int = Field(default=4, ge=1, le=20)
    push_backoff_s: float = Field(default=2.0, ge=0)
    push_max_backoff_s: float = Field(default=60.0, ge=0)
    # Also push the uncertainty objects beside the SEG: probability.dcm (FRACTIONAL SEG of the
    # means) and {target}_variance.dcm (Parametric Maps, float32: 1 MiB per 512x512 slice each).
    push_uncertainty: bool = False

    @field_validator("url", "push_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"a DICOMweb URL must be http(s)://host[:port]/path, got {public_url(value)!r}")
        if parts.username or parts.password:
            raise ValueError("put DICOMweb credentials in LATENTSEG_DICOMWEB_USERNAME/PASSWORD or _TOKEN, not the URL")
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _credentials(self) -> DicomwebSettings:
        if self.auth == "basic" and (not self.username or self.password is None):
            raise ValueError("LATENTSEG_DICOMWEB_AUTH=basic needs LATENTSEG_DICOMWEB_USERNAME and _PASSWORD")
        if self.auth == "bearer" and self.token is None:
            raise ValueError("LATENTSEG_DICOMWEB_AUTH=bearer needs LATENTSEG_DICOMWEB_TOKEN")
        return self

    @property
    def destination(self) -> str | None:
        return self.push_url or self.url


def public_url(url: str) -> str:
    """``url`` without credentials or query, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def make_client(settings: DicomwebSettings, url: str | None = None) -> DICOMwebClient:
    """A client for ``url`` (default: the source) with the configured auth, timeout and TLS checks."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    url = url or settings.url
    if not url:
        raise DicomwebError("no DICOMweb source configured: set LATENTSEG_DICOMWEB_URL")
    session = requests.Session()
    session.verify = str(settings.ca_bundle) if settings.ca_bundle is not None else settings.verify_tls
    headers: dict[str, str] = {}
    if settings.auth == "basic":
        assert settings.username is not None and settings.password is not None
        session.auth = (settings.username, settings.password.get_secret_value())
    elif settings.auth == "bearer":
        assert settings.token is not None
        headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"
    client = DICOMwebClient(url, session=session, headers=headers or None, timeout=settings.timeout_s)
    # Its own retrying (any exception, exponential waits: ~30 s for a refused connection) is off: a
    # pull fails fast with the reason, and a push has its own reported backoff (worker.dicomweb).
    client.set_http_retry_params(retry=False)
    return client


def _reason(exc: BaseException, url: str, what: str) -> DicomwebError:
    """A failure reason a user can act on, from a requests/dicomweb-client exception."""
    import requests

    where = public_url(url)
    if isinstance(exc, requests.exceptions.SSLError):
        return DicomwebError(f"source unreachable: TLS verification failed for {where}")
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        kind = "timed out" if isinstance(exc, requests.exceptions.Timeout) else "connection failed"
        return DicomwebError(f"source unreachable: {where} ({kind})")
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        if code == 404:
            return DicomwebError(f"{what} not found on {where}")
        if code in (401, 403):
            return DicomwebError(f"source refused the request: HTTP {code} from {where} (check the DICOMweb credentials)")
        return DicomwebError(f"source error: HTTP {code} from {where}")
    return DicomwebError(f"source error: {type(exc).__name__} talking to {where}")


@dataclass(frozen=True)
class SeriesCandidate:
    series_uid: str
    modality: str
    instances: int
    number: int | None = None
    description: str = ""

    def describe(self) -> str:
        label = f" '{self.description}'" if self.description else ""
        return f"{self.series_uid} ({self.modality or '?'}, {self.instances} instances{label})"


def _value(item: Mapping[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def search_series(client: DICOMwebClient, study_uid: str) -> list[SeriesCandidate]:
    """QIDO-RS: the series of ``study_uid`` (empty: the study is unknown to the source)."""
    try:
        found = client.search_for_series(
            study_instance_uid=study_uid,
            fields=["Modality", "NumberOfSeriesRelatedInstances", "SeriesDescription", "SeriesNumber"],
        )
    except Exception as exc:
        raise _reason(exc, client.base_url, f"study {study_uid}") from None
    candidates = []
    for item in found:
        uid = _value(item, _SERIES_UID)
        if not uid:
            continue
        number = _value(item, _SERIES_NUMBER)
        count = _value(item, _INSTANCES)
        if count in (None, ""):  # a PACS that does not report the count: ask for the instances
            try:
                count = len(client.search_for_instances(study_instance_uid=study_uid, series_instance_uid=str(uid),
                                                        fields=["SOPInstanceUID"]))
            except Exception as exc:
                raise _reason(exc, client.base_url, f"series {uid}") from None
        candidates.append(SeriesCandidate(
            series_uid=str(uid),
            modality=str(_value(item, _MODALITY) or ""),
            instances=int(count),
            number=int(number) if number not in (None, "") else None,
            description=str(_value(item, _SERIES_DESCRIPTION) or ""),
        ))
    return candidates


def choose_ct_series(study_uid: str, candidates: Sequence[SeriesCandidate]) -> SeriesCandidate:
    """The documented rule: the CT series with the most instances; no CT or a tie is refused."""
    if not candidates:
        raise SeriesChoiceError(f"study {study_uid} not found on the DICOMweb source (no series)", ())
    ct = [c for c in candidates if c.modality.upper() == "CT" and c.instances > 1]
    if not ct:
        listing = "; ".join(c.describe() for c in candidates)
        raise SeriesChoiceError(
            f"study {study_uid} has no CT series of two or more slices to segment (it has: {listing})", candidates
        )
    most = max(c.instances for c in ct)
    top = [c for c in ct if c.instances == most]
    if len(top) > 1:
        listing = "; ".join(c.describe() for c in top)
        raise SeriesChoiceError(
            f"study {study_uid} has {len(top)} CT series with {most} instances each: give series_uid (one of: {listing})",
            top,
        )
    return top[0]


@dataclass(frozen=True)
class RetrievalLimits:
    """The upload caps, applied to a retrieved series: bytes as stored, instances (voxels: the reader)."""

    max_bytes: int
    max_files: int


def retrieve_series_zip(
    client: DICOMwebClient, study_uid: str, series_uid: str, path: Path, limits: RetrievalLimits
) -> int:
    """WADO-RS the series into a zip at ``path`` (one member per instance, as a DICOM upload is
    stored), streaming: one instance in memory at a time. Returns the instance count.

    Over ``limits`` the retrieval stops and the partial zip is removed.
    """
    written = total = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
            for ds in _iter_series(client, study_uid, series_uid):
                data = _encode(ds)
                total += len(data)
                written += 1
                if written > limits.max_files:
                    raise DicomwebError(
                        f"retrieval too large: series {series_uid} has more than {limits.max_files} instances "
                        "(this server's limit for one series)"
                    )
                if total > limits.max_bytes:
                    raise DicomwebError(
                        f"retrieval too large: series {series_uid} is larger than this server's limit of "
                        f"{limits.max_bytes} bytes"
                    )
                archive.writestr(f"{written:05d}.dcm", data)
        if written == 0:
            raise DicomwebError(f"series not found: {series_uid} in study {study_uid} (no instances)")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    log.info("retrieved %d instances (%d bytes) over WADO-RS", written, total)
    return written


def _iter_series(client: DICOMwebClient, study_uid: str, series_uid: str) -> Iterator[Dataset]:
    iterator: Iterator[Dataset] | None = None
    while True:
        try:
            if iterator is None:  # the request itself is sent here, and may fail
                iterator = client.iter_series(study_uid, series_uid)
            ds = next(iterator)
        except StopIteration:
            return
        except DicomwebError:
            raise
        except Exception as exc:
            error = _reason(exc, client.base_url, f"series {series_uid}")
            if "not found" in str(error):
                error = DicomwebError(f"series not found: {series_uid} in study {study_uid} on {public_url(client.base_url)}")
            raise error from None
        yield ds


def _encode(ds: Dataset) -> bytes:
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def store_instances(client: DICOMwebClient, datasets: Sequence[Dataset]) -> list[str]:
    """STOW-RS ``datasets``; returns the SOP Instance UIDs the destination stored.

    A response that lists failed instances is an error naming their count and reason code.
    """
    try:
        response = client.store_instances(datasets=list(datasets))
    except Exception as exc:
        error = _reason(exc, client.base_url, "the STOW-RS endpoint")
        raise DicomwebError(str(error).replace("source", "destination", 1)) from None
    failed = getattr(response, _FAILED_SOP_SEQUENCE, None) or []
    if failed:
        codes = sorted({str(getattr(item, "FailureReason", "?")) for item in failed})
        raise DicomwebError(f"destination refused {len(failed)} instance(s) (failure reason {', '.join(codes)})")
    stored = [str(item.ReferencedSOPInstanceUID) for item in getattr(response, "ReferencedSOPSequence", None) or []]
    return stored or [str(ds.SOPInstanceUID) for ds in datasets]


def fetch_reference(
    settings: DicomwebSettings, study_uid: str, series_uid: str | None, path: Path, limits: RetrievalLimits
) -> str:
    """Retrieve a referenced series (the CT rule picks it when ``series_uid`` is None) into the
    zip ``path``; returns the series UID. For the CLI: the service splits this between API and worker."""
    client = make_client(settings)
    if series_uid is None:
        series_uid = choose_ct_series(study_uid, search_series(client, study_uid)).series_uid
    retrieve_series_zip(client, study_uid, series_uid, path, limits)
    return series_uid


def push_files(settings: DicomwebSettings, paths: Sequence[Path]) -> list[str]:
    """STOW-RS DICOM files to the destination (push URL, else the source); returns the stored SOP Instance UIDs."""
    import pydicom

    if not settings.destination:
        raise DicomwebError("no DICOMweb destination configured: set LATENTSEG_DICOMWEB_PUSH_URL or _URL")
    return store_instances(make_client(settings, settings.destination), [pydicom.dcmread(p) for p in paths])
