"""Checks that patient values never reach logs or replies, without false alarms.

A patient's age is a short number, and the same digits turn up by chance inside random case ids,
probabilities and request timings ("5cf563be", "0.163", "14.63ms"). A plain substring test then
fails now and then on a clean log, so numbers are matched as whole tokens instead.
"""
from __future__ import annotations

import re


def mentions(text: str, value: str) -> bool:
    """Whether `text` contains the patient value: a number as a whole token (63 or 63.0), the rest as is."""
    if value.isdigit():
        return re.search(rf"(?<![\w.]){re.escape(value)}(?:\.0+)?(?![\w.])", text) is not None
    return value in text
