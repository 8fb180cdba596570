"""The one exception family a user can cause: bad config, bad data, bad model, bad masking."""

from __future__ import annotations


class AlignlabError(Exception):
    """Base of every error a user can cause and fix; the message says where and what to do."""


class ConfigError(AlignlabError):
    """A config value is out of range, unknown or inconsistent; the message names the field."""


class DataError(AlignlabError):
    """An input file or record is unusable; the message names the file, row and field.

    Carries the `ValidationReport` when validation raised it, so a failing stage can still store and show it.
    """

    def __init__(self, message: str, report: object | None = None):
        super().__init__(message)
        self.report = report


class MaskingError(AlignlabError):
    """The SFT loss mask does not cover exactly the completion tokens."""


class ModelLoadError(AlignlabError):
    """A model, tokenizer or adapter could not be loaded from the given id or path."""


class ArtifactError(AlignlabError):
    """An artifact key is invalid, missing or incomplete."""


class StopRequested(Exception):  # noqa: N818  (a request, not an error)
    """The caller asked a stage to stop (e.g. spot preemption). Training stages save a checkpoint first."""


class NotFoundError(AlignlabError):
    """A run, stage run or other record named by a command does not exist."""


class CommandError(AlignlabError):
    """A dashboard or CLI command cannot be carried out as asked (e.g. a judgement naming a method not shown)."""
