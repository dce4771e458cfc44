"""Tesseract, loaded once per process: its C API through :mod:`ctypes`, else the program.

The OCR screen (:mod:`sendit_helpers.deid.ocr`) reads many small pictures.
Starting the ``tesseract`` program loads its 4 MB model every time; the library
(``libtesseract``, installed with the program by ``apt-get install
tesseract-ocr``) keeps one engine per process and reads pixels straight from
memory, with no PNG written.  :func:`engine` returns that engine, or, where the
library cannot be loaded (another platform's file name, a program-only install),
one that calls the program through pytesseract.  Both give Tesseract's own
words, boxes and confidences (its TSV output), for the same settings.

Nothing read is logged: the words are PHI.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from sendit_helpers.core.errors import SenditError

__all__ = [
    "INSTALL_HINT",
    "LANGUAGE",
    "OcrUnavailableError",
    "PAGE_SEGMENTATION",
    "Reader",
    "engine",
    "load_library",
    "require_tesseract",
]

#: Page segmentation mode: 11, sparse text (overlays are scattered lines, not a page).
PAGE_SEGMENTATION = 11
#: Recognition model (``eng``, the LSTM engine: ``--oem 1``).
LANGUAGE = "eng"
_OEM_LSTM = 1
_LEPTONICA_SILENT = 6  # L_SEVERITY_NONE
INSTALL_HINT = (
    "install pytesseract with `pip install 'sendit-notebooks[ocr]'` and the tesseract program "
    "with `apt-get install tesseract-ocr` (or your system's package), or set OCR_SCREEN to off"
)
_LIBRARY_NAMES = ("libtesseract.so.5", "libtesseract.so", "libtesseract.5.dylib")
_COLUMNS = (
    "level", "page_num", "block_num", "par_num", "line_num", "word_num",
    "left", "top", "width", "height", "conf", "text",
)  # fmt: skip


class OcrUnavailableError(SenditError):
    """The OCR screen was asked for but pytesseract or the tesseract program is missing."""


class Reader(Protocol):
    """Reads one grey ``uint8`` picture: Tesseract's TSV answer as columns (``image_to_data``)."""

    def __call__(self, image: npt.NDArray[np.uint8]) -> dict[str, list[Any]]: ...


def require_tesseract() -> ModuleType:
    """Import pytesseract and check that the tesseract program can be found.

    Returns
    -------
    module
        :mod:`pytesseract`.

    Raises
    ------
    OcrUnavailableError
        With the install hint, when either is missing.
    """
    try:
        import pytesseract
    except ImportError:
        raise OcrUnavailableError(
            f"the OCR screen (OCR_SCREEN) needs pytesseract, which is not installed; {INSTALL_HINT}"
        ) from None
    command = str(pytesseract.pytesseract.tesseract_cmd)
    if shutil.which(command) is None:
        raise OcrUnavailableError(
            f"the OCR screen (OCR_SCREEN) needs the tesseract program, but {command!r} was not "
            f"found; {INSTALL_HINT}"
        )
    module: ModuleType = pytesseract
    return module


@contextmanager
def _one_thread() -> Iterator[None]:
    """Tesseract single-threaded (its OpenMP threads only slow small pictures down).

    OpenMP reads ``OMP_THREAD_LIMIT`` when it starts: around the program's run,
    or around the library's loading.
    """
    old = os.environ.get("OMP_THREAD_LIMIT")
    os.environ["OMP_THREAD_LIMIT"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OMP_THREAD_LIMIT", None)
        else:
            os.environ["OMP_THREAD_LIMIT"] = old


def _parse_tsv(text: str) -> dict[str, list[Any]]:
    """Tesseract's TSV (no header line) as columns, like pytesseract's ``Output.DICT``."""
    data: dict[str, list[Any]] = {name: [] for name in _COLUMNS}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < len(_COLUMNS) or not fields[0].isdigit():
            continue
        for name, value in zip(_COLUMNS[:-1], fields, strict=False):
            data[name].append(float(value) if name == "conf" else int(value))
        data["text"].append("\t".join(fields[len(_COLUMNS) - 1 :]))
    return data


class _Library:
    """One ``TessBaseAPI`` of ``libtesseract`` for this process (a lock guards it)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        lib.TessBaseAPICreate.restype = vp
        lib.TessBaseAPIInit2.argtypes = [vp, cp, cp, i]
        lib.TessBaseAPISetPageSegMode.argtypes = [vp, i]
        lib.TessBaseAPISetVariable.argtypes = [vp, cp, cp]
        lib.TessBaseAPISetImage.argtypes = [vp, vp, i, i, i, i]
        lib.TessBaseAPIRecognize.argtypes = [vp, vp]
        lib.TessBaseAPIGetTsvText.argtypes = [vp, i]
        lib.TessBaseAPIGetTsvText.restype = vp
        lib.TessDeleteText.argtypes = [vp]
        for name in ("TessBaseAPIClear", "TessBaseAPIEnd", "TessBaseAPIDelete"):
            getattr(lib, name).argtypes = [vp]
        self._lib = lib
        self._lock = threading.Lock()
        self._api = ctypes.c_void_p(lib.TessBaseAPICreate())
        if lib.TessBaseAPIInit2(self._api, None, LANGUAGE.encode(), _OEM_LSTM) != 0:
            lib.TessBaseAPIDelete(self._api)
            raise OcrUnavailableError(
                f"libtesseract could not load its {LANGUAGE!r} model; "
                "install it with `apt-get install tesseract-ocr-eng`, or set OCR_SCREEN to off"
            )
        lib.TessBaseAPISetPageSegMode(self._api, PAGE_SEGMENTATION)
        # Its notes ("Estimating resolution as ...") and Leptonica's go nowhere, as the
        # program's went to pytesseract.
        lib.TessBaseAPISetVariable(self._api, b"debug_file", os.devnull.encode())
        quiet = getattr(lib, "setMsgSeverity", None)  # Leptonica, found through libtesseract
        if quiet is not None:
            quiet.argtypes, quiet.restype = [i], i
            quiet(_LEPTONICA_SILENT)
        atexit.register(self.close)

    def close(self) -> None:
        """Free the engine (at exit; a later read would fail)."""
        with self._lock:
            if self._api:
                self._lib.TessBaseAPIEnd(self._api)
                self._lib.TessBaseAPIDelete(self._api)
                self._api = ctypes.c_void_p()

    def __call__(self, image: npt.NDArray[np.uint8]) -> dict[str, list[Any]]:
        pixels = np.ascontiguousarray(image, dtype=np.uint8)
        rows, cols = pixels.shape
        with self._lock:
            lib, api = self._lib, self._api
            if not api:
                raise RuntimeError("the tesseract engine was closed")
            lib.TessBaseAPISetImage(api, pixels.ctypes.data, cols, rows, 1, cols)
            if lib.TessBaseAPIRecognize(api, None) != 0:
                lib.TessBaseAPIClear(api)
                raise RuntimeError("tesseract could not read the picture")
            answer = lib.TessBaseAPIGetTsvText(api, 0)
            try:
                text = ctypes.string_at(answer).decode("utf-8", "replace") if answer else ""
            finally:
                if answer:
                    lib.TessDeleteText(answer)
                lib.TessBaseAPIClear(api)
        return _parse_tsv(text)


class _Program:
    """The tesseract program through pytesseract (one run per picture)."""

    def __init__(self, tess: ModuleType) -> None:
        self._tess = tess

    def __call__(self, image: npt.NDArray[np.uint8]) -> dict[str, list[Any]]:
        config = f"--oem {_OEM_LSTM} --psm {PAGE_SEGMENTATION} -l {LANGUAGE}"
        with _one_thread():
            data: dict[str, list[Any]] = self._tess.image_to_data(
                image, config=config, output_type=self._tess.Output.DICT
            )
        return data


def _load_library() -> ctypes.CDLL | None:
    names = [ctypes.util.find_library("tesseract"), *_LIBRARY_NAMES]
    for name in names:
        if not name:
            continue
        try:
            with _one_thread():
                return ctypes.CDLL(name)
        except OSError:
            continue
    return None


@lru_cache(maxsize=1)
def _library_reader() -> _Library | None:
    lib = _load_library()
    if lib is None or not hasattr(lib, "TessBaseAPIGetTsvText"):
        return None
    return _Library(lib)


def load_library() -> bool:
    """Load ``libtesseract`` and make this process's reader of it now, if it can be loaded.

    What :func:`engine` does on first use (about 0.1 s: the library found and
    loaded, its language data read), done ahead by a warm notebook kernel as it
    starts (:func:`~sendit_helpers.run.cellrunner.preload`).  Nothing is checked
    or raised here: :func:`engine` still checks the install when it is called.

    Returns
    -------
    bool
        True when the library reader is ready.
    """
    return _library_reader() is not None


def engine(*, library: bool = True) -> Reader:
    """This process's Tesseract reader (created on first use, then reused).

    Parameters
    ----------
    library : bool
        Use ``libtesseract`` when it can be loaded (the default); False: the program.

    Returns
    -------
    Reader
        Call it with a grey ``uint8`` picture (dark text on a light background
        reads best); it returns Tesseract's TSV columns.

    Raises
    ------
    OcrUnavailableError
        When pytesseract or the tesseract program is missing (checked even when
        the library is used, so that the screen needs the same install everywhere).
    """
    tess = require_tesseract()
    reader = _library_reader() if library else None
    return reader if reader is not None else _Program(tess)
