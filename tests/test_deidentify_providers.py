"""The de-identify stage with each identifier provider: local, crosswalk and REST."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from identifier_server import IdentifierServer, start_identifier_server

from sendit_helpers.core.errors import IdentifierError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import load_settings
from sendit_helpers.run import upstream
from sendit_helpers.samples import batchspec, synthetic

SPEC = batchspec.BatchSpec(
    n_series=1, images_per_series=2, rows=16, columns=16, burned_in=False, junk=False
)


@pytest.fixture
def service() -> Iterator[tuple[str, IdentifierServer]]:
    url, server = start_identifier_server()
    yield url, server
    server.stop()


def _run(folder: Path, work: Path, **overrides: object) -> BatchLayout:
    layout = BatchLayout.for_batch(folder, work).ensure()
    settings = load_settings(overrides={"PROGRESS": False, **overrides}, environ={})
    upstream.deidentify(layout, settings)
    return layout


def _entities(layout: BatchLayout) -> pd.DataFrame:
    return pd.read_parquet(layout.release / "entities.parquet")


def test_local_keyed_is_stable_across_batches_and_runs(tmp_path: Path) -> None:
    planted = synthetic.make_batch(tmp_path / "in" / "a", SPEC)
    synthetic.make_batch(tmp_path / "in" / "b", SPEC)  # same seed: same patient, other folder
    first = _run(tmp_path / "in" / "a", tmp_path / "work")
    second = _run(tmp_path / "in" / "b", tmp_path / "work")
    assert list(_entities(first)["id"]) == list(_entities(second)["id"])
    assert planted.values["PatientID"][0] not in str(list(_entities(first)["id"]))


def test_crosswalk_provider(tmp_path: Path) -> None:
    planted = synthetic.make_batch(tmp_path / "in" / "a", SPEC)
    crosswalk = tmp_path / "broker.csv"
    with crosswalk.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", "entity_id", "jitter_days"])
        writer.writerow([planted.values["PatientID"][0], "IRc0ffee", "-10"])
    layout = _run(
        tmp_path / "in" / "a",
        tmp_path / "work",
        IDENTIFIER_PROVIDER="crosswalk",
        CROSSWALK_CSV=str(crosswalk),
    )
    assert list(_entities(layout)["id"]) == ["IRc0ffee"]
    lookup = pd.read_parquet(layout.deid_dir / "lookup.parquet")
    assert set(lookup["jitter_days"]) == {-10}


def test_crosswalk_missing_patient_fails_without_the_value(tmp_path: Path) -> None:
    planted = synthetic.make_batch(tmp_path / "in" / "a", SPEC)
    crosswalk = tmp_path / "broker.csv"
    crosswalk.write_text("patient_id,entity_id,jitter_days\nSOMEONE_ELSE,IRc0ffee,-10\n")
    with pytest.raises(IdentifierError, match=r"1 of 1 patients .* have no row") as err:
        _run(
            tmp_path / "in" / "a",
            tmp_path / "work",
            IDENTIFIER_PROVIDER="crosswalk",
            CROSSWALK_CSV=str(crosswalk),
        )
    assert planted.values["PatientID"][0] not in str(err.value)


def test_rest_provider(tmp_path: Path, service: tuple[str, IdentifierServer]) -> None:
    url, server = service
    synthetic.make_batch(tmp_path / "in" / "a", SPEC)
    layout = _run(
        tmp_path / "in" / "a", tmp_path / "work", IDENTIFIER_PROVIDER="rest", IDENTIFIER_URL=url
    )
    assert server.request_count == 1
    body = server.bodies[0]
    assert body["identifiers"][0]["items"][0]["id_source"] == "DCM Accession #"
    names = sorted(p.name for p in layout.release.rglob("*.dcm"))
    assert len(names) == 2 and all(n.startswith("IR") for n in names)


def test_rest_provider_down_fails_the_batch_clearly(
    tmp_path: Path, service: tuple[str, IdentifierServer]
) -> None:
    url, server = service
    server.fail_next(50, status=503)
    synthetic.make_batch(tmp_path / "in" / "a", SPEC)
    with pytest.raises(IdentifierError, match=r"identifier service .* after \d+ attempts"):
        _run(
            tmp_path / "in" / "a",
            tmp_path / "work",
            IDENTIFIER_PROVIDER="rest",
            IDENTIFIER_URL=url,
            IDENTIFIER_RETRIES=1,
        )
