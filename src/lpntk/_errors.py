"""Errors raised for bad input. Each message says what was wrong and what was expected.

Every error a user can cause is an :class:`LpntkError` and also the matching built-in exception,
so ``except ValueError`` or ``except FileNotFoundError`` work as usual. An error about one
argument names it in ``param`` (the Python name); the command line shows the flag instead.

- ``ConfigError`` (a ``ValueError``): an unknown name or an impossible option; a usage error.
- ``DataError`` (a ``ValueError``): a dataset or stored result that is corrupt or does not match.
- ``CheckpointError`` (a ``DataError``): a file that is not a usable lpntk checkpoint.
- ``ModelError`` (a ``ValueError``): a model that does not return ``(batch, K)`` logits.
- ``MissingFileError`` (a ``FileNotFoundError``): a file or folder that is not there.
"""

from __future__ import annotations


class LpntkError(Exception):
    """Base of every error lpntk raises on purpose (the CLI prints these without a traceback).

    ``exit_code`` is the command line's exit status for it: 2 for a usage error, 1 otherwise.
    """

    exit_code = 1

    def __init__(self, message: str = "", *, param: str | None = None, mentions=()):
        super().__init__(message)
        self.message, self.param, self.mentions = message, param, tuple(mentions)

    def render(self, name) -> str:
        """The message with each mentioned parameter ``{p}`` written as ``name(p)`` (the CLI
        passes its flags; the API keeps the Python names)."""
        if not self.mentions:
            return self.message
        return self.message.format(**{p: name(p) for p in self.mentions})

    def as_usage(self) -> ConfigError:
        """The same message as a usage error."""
        return ConfigError(self.message, param=self.param, mentions=self.mentions)

    def __str__(self) -> str:
        text = self.render(lambda p: p)
        return f"{self.param}: {text}" if self.param else text


class ConfigError(LpntkError, ValueError):
    """An unknown name, an impossible option, or a model/dataset mismatch (a usage error)."""

    exit_code = 2


class DataError(LpntkError, ValueError):
    """A dataset or stored result that is corrupt, incomplete or does not match the request."""


class CheckpointError(DataError):
    """A file that is not a readable lpntk checkpoint, or whose weights do not fit its model."""


class ModelError(LpntkError, ValueError):
    """The model's output is not a ``(batch, K)`` tensor of logits."""


class MissingFileError(LpntkError, FileNotFoundError):
    """A file or folder the user named, or a result needs, does not exist."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a long run after it saved its work; the message says where and how to
    resume. A ``KeyboardInterrupt``, so code that handles Ctrl-C handles it too."""
