"""Typed errors of the training package, so callers (the CLI) can report them cleanly."""
from __future__ import annotations


class TrainingError(Exception):
    """Base class: anything the user can fix (bad data, bad folder, bad options)."""


class DataError(TrainingError, ValueError):
    """A training or evaluation data file is malformed; the message names file and line."""


class CheckpointError(TrainingError):
    """A model folder cannot be loaded; the message says what is missing."""


class ResumeError(TrainingError):
    """Saved resume state does not fit the run being resumed."""


class MissingBaseModelError(TrainingError):
    """The default base model is not installed."""


class OutputExistsError(TrainingError):
    """--out already holds a checkpoint and the run was not told to resume or overwrite it."""
