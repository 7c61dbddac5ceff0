"""Errors a user can cause and fix: the CLI prints them as one clean line, no traceback."""

from __future__ import annotations


class XlalignError(ValueError):
    """A problem with the user's input (a file, a flag, a run folder), stated so it can be fixed.

    Subclasses ``ValueError`` so that library callers who validate inputs the usual way
    still catch it.
    """


class CorpusError(XlalignError):
    """A parallel corpus file is malformed; the message names the file and line or column."""


class RunError(XlalignError):
    """A run folder is missing something a study needs, or cannot be written."""


class XlalignWarning(UserWarning):
    """Something in the user's data or run that a result depends on; the CLI prints it as one
    ``xlalign: warning:`` line."""


class CorpusQualityWarning(XlalignWarning):
    """A corpus has rows that are not translations of each other, or columns taken as
    languages by their names (see :mod:`xlalign.data.quality`)."""
