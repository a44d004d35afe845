"""How a library error reaches the terminal: :class:`ScenetagClickError`.

A leaf module, so that what turns errors into one line (``handle_errors`` in
:mod:`scenetag.commands.options`, the ``--config`` callback in
:mod:`scenetag.config_file`) shares it without importing each other.
"""

from __future__ import annotations

import click

from scenetag.errors import ScenetagError


class ScenetagClickError(click.ClickException):
    """A library error shown as one line, with the error's own exit code."""

    def __init__(self, error: ScenetagError) -> None:
        from scenetag.tiler.location import redact_text

        super().__init__(redact_text(str(error)))  # a signed URL's query never reaches the terminal
        self.exit_code = error.exit_code
