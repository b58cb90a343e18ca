"""Waiting for what a server writes after it answers (shadow comparisons, counts)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def settled(read: Callable[[], T], quiet_s: float = 0.3, reads: int = 3, timeout: float = 30) -> T:
    """What `read` gives once it gave the same `reads` times in a row, `quiet_s` apart:
    work that earlier requests left (shadow comparisons) has landed."""
    deadline = time.monotonic() + timeout
    last, same = read(), 1
    while same < reads:
        assert time.monotonic() < deadline, f"still moving after {timeout} s: {last!r}"
        time.sleep(quiet_s)
        current = read()
        last, same = current, same + 1 if current == last else 1
    return last
