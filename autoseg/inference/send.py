"""Sending DICOM files (the SEGs of ``predict --send``) to a PACS.

Two destinations, parsed by ``parse_destination``:

- ``dicomweb://HOST:PORT/PATH`` (``dicomwebs://`` for HTTPS): DICOMweb STOW-RS to
  ``http://HOST:PORT/PATH/studies`` with dicomweb-client;
- ``dicom://AET@HOST:PORT``: DIMSE C-STORE to the application entity ``AET`` with pynetdicom,
  as calling AE title ``AUTOSEG``.

A destination that cannot be reached, refuses the association or answers with a failure status
raises an ``AutosegError`` naming the destination and the file; files already sent stay sent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from autoseg.errors import AutosegError

log = logging.getLogger(__name__)

__all__ = ["CALLING_AE_TITLE", "Destination", "parse_destination", "send_files"]

CALLING_AE_TITLE = "AUTOSEG"
_AET = re.compile(r"[ -~]{1,16}")


@dataclass(frozen=True)
class Destination:
    """Where to send: ``kind`` is ``dicomweb`` (``url``) or ``dimse`` (``ae_title``)."""

    kind: str
    host: str
    port: int
    url: str = ""
    ae_title: str = ""

    def __str__(self) -> str:
        return self.url if self.kind == "dicomweb" else f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """Parse ``dicomweb://HOST:PORT/PATH`` or ``dicom://AET@HOST:PORT``.

    Raises:
        AutosegError: another scheme, no host or port, or an AE title DICOM does not allow.
    """
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme in ("dicomweb", "dicomwebs") and parts.hostname and port:
        http = "https" if parts.scheme == "dicomwebs" else "http"
        path = parts.path.rstrip("/")
        return Destination("dicomweb", parts.hostname, port, url=f"{http}://{parts.netloc}{path}")
    if parts.scheme == "dicom" and parts.hostname and port and parts.username:
        aet = parts.username
        if not _AET.fullmatch(aet) or aet.strip() != aet or "\\" in aet:
            raise AutosegError(f"--send {text}: AE title {aet!r} must be 1-16 printable characters")
        return Destination("dimse", parts.hostname, port, ae_title=aet)
    raise AutosegError(
        f"--send {text}: expected dicomweb://HOST:PORT/PATH (STOW-RS) or dicom://AET@HOST:PORT "
        "(C-STORE)"
    )


def send_files(files: Sequence[Path], destination: Destination | str) -> int:
    """Send DICOM files to ``destination``; returns how many were stored.

    Raises:
        AutosegError: the destination cannot be reached or refuses a file.
    """
    if isinstance(destination, str):
        destination = parse_destination(destination)
    if not files:
        return 0
    import pydicom

    datasets = [pydicom.dcmread(f) for f in files]
    if destination.kind == "dicomweb":
        _stow(files, datasets, destination)
    else:
        _c_store(files, datasets, destination)
    log.info("%d file(s) sent to %s", len(files), destination)
    return len(files)


def _stow(files: Sequence[Path], datasets: list, destination: Destination) -> None:
    try:
        from dicomweb_client.api import DICOMwebClient
    except ImportError as exc:
        raise AutosegError(
            "--send dicomweb:// needs dicomweb-client (pip install 'autoseg[dicom]')"
        ) from exc
    client = DICOMwebClient(url=destination.url)
    # dicomweb-client retries every failure (refused connections too) 5 times over 30 s
    client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=250)
    for path, ds in zip(files, datasets, strict=True):
        try:
            response = client.store_instances(datasets=[ds])
        except Exception as exc:  # requests' connection and HTTP errors
            raise AutosegError(f"{path}: STOW-RS to {destination} failed ({exc})") from exc
        failed = response.get("FailedSOPSequence", []) if response is not None else []
        if failed:
            reason = failed[0].get("FailureReason", "?")
            raise AutosegError(f"{path}: {destination} refused it (failure reason {reason})")


def _c_store(files: Sequence[Path], datasets: list, destination: Destination) -> None:
    try:
        from pynetdicom import AE
    except ImportError as exc:
        raise AutosegError(
            "--send dicom:// needs pynetdicom (pip install 'autoseg[dicom]')"
        ) from exc
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ae = AE(ae_title=CALLING_AE_TITLE)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    quiet = logging.getLogger("pynetdicom")  # its own errors repeat the one raised below
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    finally:
        quiet.setLevel(level)
    if not assoc.is_established:
        raise AutosegError(
            f"{files[0]}: no association with {destination} (unreachable, or the AE title "
            f"{destination.ae_title!r} / calling title {CALLING_AE_TITLE!r} is refused)"
        )
    try:
        for path, ds in zip(files, datasets, strict=True):
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None or code not in (0x0000, 0xB000, 0xB007, 0xB006):
                shown = "no answer" if code is None else f"status 0x{code:04X}"
                raise AutosegError(f"{path}: C-STORE to {destination} failed ({shown})")
    finally:
        assoc.release()
