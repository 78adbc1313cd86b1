"""Expected errors: bad input that a user can fix, as opposed to a bug.

Every command (``vasa3d``/``lightning``) ends such an error with one line on stderr, ``error: <what
is wrong and how to fix it>``, and exit code 2, with no traceback (``VASA3D_DEBUG=1`` shows it). An
input error is: no face, an unreadable image or audio file, a missing input, or a bad config value.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Base class of expected errors: the message names the input, the problem and the fix."""


class ConfigError(UserInputError):
    """A command-line option or config value that the parser or a component rejected."""


def one_line(message: str, limit: int = 400) -> str:
    """The message on one line: whitespace runs collapsed, cut at ``limit`` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class MissingInputError(UserInputError, FileNotFoundError):
    """A file the user named (portrait, audio, checkpoint, config) does not exist."""
