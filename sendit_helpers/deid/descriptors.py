"""Clean Descriptors: keep the words of a descriptor that are known to be safe.

PS3.15's *Clean Descriptors* option asks to keep descriptions (StudyDescription,
SeriesDescription, ProtocolName ...) but replace what could identify.  Known
identifying values of the file are removed by the recipe engine; this module
removes what is merely *unknown*: a surname or a site name nobody told us
about ("CT CHEST per Dr Smith").  A word is kept when it is

* listed in ``params/recipes/descriptor-words.txt`` (policy as data), or
* one or two letters ("AX", "W"), or a plain number shorter than six digits, or
* technical: a number with a unit ("2.5mm", "120kV") or a short letter-digit
  code of at most five characters ("T1", "3D", "B30f", "b1000").

Everything else (longer mixed codes such as "MRN88421", unknown words) is
dropped.  Dropped words are not recorded as identifying values: they are only
unknown, and recording them would make the leak gate fail on harmless words
kept elsewhere.
"""

from __future__ import annotations

import functools
import re

from sendit_helpers.core.resources import shipped

WORDS_FILE = shipped("params/recipes/descriptor-words.txt")
_WORD = re.compile(r"[A-Za-z0-9]+(?:\.[0-9]+)?[A-Za-z%]*")
_NUMBER_UNIT = re.compile(
    r"^[0-9]+(?:\.[0-9]+)?(?:mm|cm|m|ml|l|s|ms|sec|min|h|kv|kvp|ma|mas|mgy|deg|x|%)?$",
    re.IGNORECASE,
)
_SHORT_CODE = re.compile(r"^(?=.*[0-9])(?=.*[A-Za-z])[A-Za-z0-9]{1,5}$")


@functools.lru_cache(maxsize=1)
def allowed_words() -> frozenset[str]:
    """The lower-cased words of ``descriptor-words.txt``."""
    words: set[str] = set()
    for line in WORDS_FILE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            words.update(w.lower() for w in re.split(r"[\s/]+", line) if w)
    return frozenset(words)


def is_safe_word(word: str) -> bool:
    """True when ``word`` may stay in a cleaned descriptor."""
    low = word.lower()
    if low in allowed_words():
        return True
    if low.isalpha():
        return len(low) <= 2
    if low.replace(".", "").isdigit():
        return len(low.replace(".", "")) < 6
    return bool(_NUMBER_UNIT.match(low) or _SHORT_CODE.match(low))


def clean_words(text: str) -> str:
    """Blank out every word of ``text`` that :func:`is_safe_word` rejects."""
    return _WORD.sub(lambda m: m.group() if is_safe_word(m.group()) else " ", text)
