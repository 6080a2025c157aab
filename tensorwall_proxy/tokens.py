"""Token counts as upstreams report them, checked before anything counts, bills or re-encodes them.

A usage object is the upstream's word, and an upstream can be broken or hostile: a count may be
a string, negative, fractional, a boolean or absurdly large. Such a count is treated as absent
(0 where a number is needed) rather than failing an answer the upstream has already produced and
billed: the caller still gets the answer, and the metrics never see a negative or non-numeric
increment.

Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

# Far above any real count (2^53: the last integer a JSON reader's double holds exactly); a
# larger one is nonsense, and orjson could not even write one past 2^64 back.
MAX_TOKENS: Final = 2**53


def token_count(value: Any) -> int | None:
    """``value`` as a token count: a non-negative integer (or a float with an integral value),
    at most ``MAX_TOKENS``; None when absent or anything else."""
    if type(value) is int:  # the common case; bool, a subclass of int, is not a count
        return value if 0 <= value <= MAX_TOKENS else None
    if type(value) is float and math.isfinite(value) and value.is_integer() and 0 <= value <= MAX_TOKENS:
        return int(value)
    return None


def count_of(usage: Mapping[str, Any], name: str) -> int:
    """The count ``usage[name]``, 0 when absent or invalid."""
    return token_count(usage.get(name)) or 0
