"""Errors name their cause in one PHI-safe line: type, tag, what was expected, the fix."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.errors import BytesLengthException
from pydicom.tag import BaseTag

import sendit_helpers
from sendit_helpers.core import errors
from sendit_helpers.core.errors import RecipeError, SenditError, one_line, reduce_message
from sendit_helpers.core.executors import ExecutorError, map_chunks
from sendit_helpers.stages import engine, inspectread

NAME = "DOE^JOHN"  # stands in for a value that must never reach a message
CONFIG = engine.WorkerConfig((), True, b"test-secret")


def test_sendit_errors_pass_through() -> None:
    assert one_line(RecipeError("r.deid:3: unknown field 'X'; write a keyword")) == (
        "RecipeError: r.deid:3: unknown field 'X'; write a keyword"
    )
    text = "decisions file d.csv, line 2: decision 'relase' is not one of release, scrub, keep"
    assert reduce_message("ReviewError", text) == f"ReviewError: {text}"


def test_other_messages_are_reduced_to_tag_and_vr() -> None:
    pydicom_text = (
        "Expected total bytes to be an even multiple of bytes per value. Instead received "
        f"b'{NAME}' with length 8 and struct format 'H' which corresponds to bytes per value "
        "of 2. This occurred while trying to parse (0028,0010) according to VR 'US'."
    )
    assert one_line(BytesLengthException(pydicom_text)) == (
        "BytesLengthException on Rows (0028,0010) (VR US): the value's length is not a multiple "
        "of its VR's value size; fix or re-export the file, or REMOVE the element in the recipe"
    )
    assert one_line(ValueError(f"PatientName is {NAME}")) == (
        "ValueError on PatientName (0010,0010) (its message is not shown: it may quote a value)"
    )
    assert one_line(RuntimeError("SMITH")) == (
        "RuntimeError (its message is not shown: it may quote a value)"
    )
    assert one_line(ValueError(f"could not convert string to float: '{NAME}'")) == (
        "ValueError: a value is not a number"
    )
    # a name that is not a SenditError's is not trusted, whatever it says
    assert NAME not in reduce_message("ReviewErrorX", f"decision {NAME}")


def test_attribute_and_key_errors_name_the_keyword() -> None:
    exc = AttributeError("'FileDataset' object has no attribute 'SOPClassUID'")
    assert one_line(exc).startswith(
        "AttributeError: the data set has no SOPClassUID (0008,0016), which is needed here; "
    )
    assert one_line(AttributeError("'Reviewer' object has no attribute 'draw'")) == (
        "AttributeError: 'Reviewer' object has no attribute 'draw'"
    )
    assert one_line(KeyError(BaseTag(0x00100020))) == "KeyError: PatientID (0010,0020) is missing"
    assert NAME not in one_line(KeyError(NAME))


def test_every_sendit_error_class_is_known_by_name() -> None:
    """sendit_error_names, read from the source, finds what importing every module finds."""
    for info in pkgutil.walk_packages(sendit_helpers.__path__, "sendit_helpers."):
        importlib.import_module(info.name)
    names: set[str] = set()
    todo: list[type[BaseException]] = [SenditError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    errors.sendit_error_names.cache_clear()
    assert errors.sendit_error_names() == frozenset(names)
    assert {"ExecutorError", "ReviewError", "TransientError"} <= names


# ----------------------------------------------------------------- where causes go


def failing_recipe_chunk(items: list[int]) -> list[int]:
    if 3 in items:
        raise RecipeError("r.deid:7: ADD PatientID (0010,0020) needs the variable 'x'")
    return items


def failing_value_chunk(items: list[int]) -> list[int]:
    if 3 in items:
        raise ValueError(f"PatientName is {NAME}")
    return items


def test_executor_error_carries_the_cause() -> None:
    with pytest.raises(
        ExecutorError,
        match=r"^deidentify: chunk 2 of 3 \(items 3-4\) failed: RecipeError: r\.deid:7: ADD "
        r"PatientID \(0010,0020\) needs the variable 'x'$",
    ):
        map_chunks(
            failing_recipe_chunk,
            [1, 2, 3, 4, 5],
            workers=1,
            progress=False,
            size=2,
            desc="deidentify",
        )
    with pytest.raises(
        ExecutorError, match=r"failed: ValueError on PatientName \(0010,0010\)"
    ) as info:
        map_chunks(failing_value_chunk, [1, 2, 3, 4, 5], workers=1, progress=False, size=2)
    assert "DOE" not in str(info.value)


def _ct(tmp_path: Path, name: str) -> Path:
    source = Path(str(get_testdata_file("CT_small.dcm")))
    target = tmp_path / name
    target.write_bytes(source.read_bytes())
    return target


def test_disposition_reason_names_the_element_and_its_vr(tmp_path: Path) -> None:
    path = _ct(tmp_path, "bad_rows.dcm")
    data = path.read_bytes()
    at = data.find(b"\x28\x00\x10\x00US\x02\x00")
    path.write_bytes(data[:at] + b"\x28\x00\x10\x00US\x03\x00\x40\x00\x00" + data[at + 10 :])
    job = engine.Job(str(path), str(tmp_path / "o" / "a.dcm"), "a.dcm", "E", "I", 3, False)
    outcome = engine.deidentify_file(job, CONFIG)
    assert outcome.error == (
        "could not de-identify: BytesLengthException on Rows (0028,0010) (VR US): the value's "
        "length is not a multiple of its VR's value size; fix or re-export the file, or REMOVE "
        "the element in the recipe"
    )
    assert not Path(job.output).exists()


def test_disposition_reason_of_a_missing_sop_class(tmp_path: Path) -> None:
    path = _ct(tmp_path, "no_class.dcm")
    ds = pydicom.dcmread(path)
    del ds.SOPClassUID
    ds.save_as(path)
    job = engine.Job(str(path), str(tmp_path / "o" / "b.dcm"), "b.dcm", "E", "I", 3, False)
    outcome = engine.deidentify_file(job, CONFIG)
    assert outcome.error.startswith(
        "could not de-identify: AttributeError: the data set has no SOPClassUID (0008,0016)"
    )
    assert "'…'" not in outcome.error


def test_inspect_reason_names_the_element_once(tmp_path: Path) -> None:
    path = _ct(tmp_path, "bad_rows.dcm")
    data = path.read_bytes()
    at = data.find(b"\x28\x00\x10\x00US\x02\x00")
    path.write_bytes(data[:at] + b"\x28\x00\x10\x00US\x03\x00\x40\x00\x00" + data[at + 10 :])
    row = inspectread.read_one(str(path))
    assert row["kind"] == "error"
    assert row["reason"] == (
        "unreadable header value: cannot decode Rows (0028,0010) (BytesLengthException (VR US): "
        "the value's length is not a multiple of its VR's value size; fix or re-export the file, "
        "or REMOVE the element in the recipe)"
    )
