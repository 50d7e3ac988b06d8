"""``predict --send``: SEGs delivered to a real Orthanc (STOW-RS and C-STORE) and queried back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")
pytest.importorskip("dicomweb_client")
pytest.importorskip("pynetdicom")

from autoseg.data.dicom import find_dicom, read_series  # noqa: E402
from autoseg.data.dicom_seg import read_seg_labels  # noqa: E402
from autoseg.errors import AutosegError  # noqa: E402
from autoseg.inference.send import parse_destination, send_files  # noqa: E402
from tests.inference.test_predict import make_model  # noqa: E402
from tests.orthanc import Orthanc, start_orthanc  # noqa: E402
from tests.reliability_helpers import assert_clean_failure, cli  # noqa: E402
from tests.synthetic_dicom import make_volume, oblique_affine, write_series  # noqa: E402


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with start_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("home"), folds=("0",))


def test_parse_destination() -> None:
    web = parse_destination("dicomweb://pacs.local:8042/dicom-web/")
    assert (web.kind, web.url) == ("dicomweb", "http://pacs.local:8042/dicom-web")
    dimse = parse_destination("dicom://STORESCP@10.0.0.2:104")
    assert (dimse.kind, dimse.ae_title, dimse.host, dimse.port) == (
        "dimse",
        "STORESCP",
        "10.0.0.2",
        104,
    )
    for bad in ("dicom://10.0.0.2:104", "dicomweb://host/path", "ftp://x:1", "dicom://A@h:x"):
        with pytest.raises(AutosegError, match="expected dicomweb://HOST:PORT/PATH"):
            parse_destination(bad)
    with pytest.raises(AutosegError, match="1-16 printable"):
        parse_destination("dicom://AN_AE_TITLE_TOO_LONG@h:104")


def test_segs_reach_orthanc_and_come_back(tmp_path: Path, model: Path, orthanc: Orthanc) -> None:
    from dicomweb_client.api import DICOMwebClient

    study = tmp_path / "study"
    study_uid = pydicom.uid.generate_uid()
    for number, seed in ((1, 0), (2, 1)):
        write_series(
            study / f"s{number}",
            make_volume(shape=(8, 16, 16), seed=seed),
            oblique_affine(),
            series_number=number,
            description=f"series {number}",
            study_uid=study_uid,
        )
    series = {s.name: s for s in find_dicom(study).series}
    # series 1 by STOW-RS, series 2 by C-STORE
    for name, url in (("1_series_1", orthanc.dicomweb), ("2_series_2", orthanc.dimse)):
        result = cli(
            "predict",
            "-i",
            study,
            "-o",
            tmp_path / "out",
            "-m",
            model,
            "--series",
            series[name].uid,
            "--send",
            url,
        )
        assert result.exit_code == 0, result.output
        assert f"1 DICOM SEG(s) sent to {parse_destination(url)}" in result.output

    client = DICOMwebClient(url=orthanc.dicomweb.replace("dicomweb://", "http://"))
    found = client.search_for_instances(search_filters={"Modality": "SEG"})
    uid_of = {r["0020000E"]["Value"][0]: r["00080018"]["Value"][0] for r in found}
    assert len(found) == 2
    for name, item in series.items():
        written = pydicom.dcmread(tmp_path / "out" / f"{name}.seg.dcm")
        assert uid_of[written.SeriesInstanceUID] == written.SOPInstanceUID
        stored = client.retrieve_instance(
            study_instance_uid=study_uid,
            series_instance_uid=written.SeriesInstanceUID,
            sop_instance_uid=written.SOPInstanceUID,
        )
        assert stored.ReferencedSeriesSequence[0].SeriesInstanceUID == item.uid
        back = tmp_path / f"{name}.back.dcm"
        stored.save_as(back)
        source = read_series(item).datasets
        np.testing.assert_array_equal(
            read_seg_labels(back, source)[0],
            read_seg_labels(tmp_path / "out" / f"{name}.seg.dcm", source)[0],
        )
    assert orthanc.get("/statistics")["CountInstances"] == 2  # type: ignore[index]


def test_unreachable_pacs_is_exit_2(tmp_path: Path, model: Path, orthanc: Orthanc) -> None:
    write_series(tmp_path / "study", make_volume(shape=(8, 16, 16)), oblique_affine())
    port = orthanc.dicom_port + 1 if orthanc.dicom_port < 65000 else 1
    url = f"dicom://NOBODY@127.0.0.1:{port}"
    result = cli(
        "predict", "-i", tmp_path / "study", "-o", tmp_path / "out", "-m", model, "--send", url
    )
    seg = tmp_path / "out" / "1_synthetic.seg.dcm"
    assert_clean_failure(result, str(seg), f"no association with NOBODY@127.0.0.1:{port}")
    with pytest.raises(AutosegError, match=f"STOW-RS to http://127.0.0.1:{port}/dicom-web failed"):
        send_files([seg], f"dicomweb://127.0.0.1:{port}/dicom-web")
