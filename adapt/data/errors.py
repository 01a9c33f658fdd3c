"""Errors and warnings about input data.

A user who points adapt at a broken dataset should learn which file is wrong and how, in one line,
before any training time is spent; these types let callers (and tests) tell data problems apart
from bugs.
"""

from __future__ import annotations


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file."""


class DataWarning(UserWarning):
    """Something in the data is suspicious but usable (e.g. a category without examples)."""
