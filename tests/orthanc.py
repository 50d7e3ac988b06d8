"""A real Orthanc PACS for the tests: started on free loopback ports, storage in a temp folder.

``start_orthanc`` runs the ``Orthanc`` binary of the Debian packages ``orthanc`` and
``orthanc-dicomweb`` (``.ci/run`` installs them) with its own configuration: HTTP and DICOM on
free ports (never the packaged service's 8042/4242), remote access off, the DICOMweb plug-in
enabled under ``/dicom-web/``. Without the binary the tests are skipped, except in CI
(``CI=true``), where they fail.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
    "/usr/lib/*/orthanc/libOrthancDicomWeb.so*",
)
AE_TITLE = "ORTHANC"


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: its REST/DICOMweb base URL and DICOM port."""

    http_port: int
    dicom_port: int
    log: Path

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"dicomweb://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def dimse(self) -> str:
        return f"dicom://{AE_TITLE}@127.0.0.1:{self.dicom_port}"

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.rest + path, timeout=10) as answer:
            return json.loads(answer.read())


def _unavailable(why: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why}; .ci/run installs the Debian packages orthanc and orthanc-dicomweb")
    pytest.skip(f"{why} (apt-get install orthanc orthanc-dicomweb)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def start_orthanc(folder: Path, timeout: float = 60.0) -> Iterator[Orthanc]:
    """Start Orthanc with storage in ``folder``; stop it (and wait for it) on exit."""
    binary = shutil.which("Orthanc") or shutil.which("orthanc")
    if binary is None:
        _unavailable("Orthanc is not installed")
    plugins = sorted(p for pattern in PLUGIN_GLOBS for p in glob.glob(pattern))
    if not plugins:
        _unavailable("the Orthanc DICOMweb plug-in (libOrthancDicomWeb.so) is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = _free_port(), _free_port()
    config = {
        "Name": "autoseg-tests",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AE_TITLE,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "Plugins": [plugins[0]],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = folder / "orthanc.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [binary, str(folder / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT
        )
    orthanc = Orthanc(http_port, dicom_port, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"Orthanc exited ({process.returncode}): {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError, ValueError):
                plugins_loaded = orthanc.get("/plugins")
                if "dicom-web" in plugins_loaded:  # type: ignore[operator]
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"Orthanc not ready after {timeout:.0f} s: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield orthanc
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
