"""The scenetag command line: ``scenetag COMMAND`` (or ``python cli.py COMMAND`` in a checkout).

Each command lives in its own module under ``scenetag/commands``; heavy
imports happen inside the commands so that ``--help`` is instant.
"""

from __future__ import annotations

import importlib

import click

from scenetag import __version__
from scenetag.commands.options import configure_logging
from scenetag.config_file import CONFIG_ENV, config_option_settings

#: command name → module under scenetag.commands holding ``command``.
COMMANDS = {
    "run": "run",
    "batch": "batch",
    "train": "train",
    "evaluate": "evaluate",
    "calibrate": "calibrate",
    "export": "export",
    "spec": "spec",
    "quantize": "quantize",
}


def _verbosity(ctx: click.Context, param: click.Parameter, value: int) -> None:
    """-v/-q given after the command: add to the group's counts and set the log level again."""
    if not value or ctx.resilient_parsing:
        return
    counts = ctx.find_root().meta.setdefault("scenetag.verbosity", {"verbose": 0, "quiet": 0})
    counts[param.name] += value
    configure_logging(counts["verbose"], counts["quiet"])


#: -v/-q on every command too, so they work before or after the command's name.
VERBOSITY = (
    click.Option(["-v", "--verbose"], count=True, expose_value=False, is_eager=True, callback=_verbosity,
                 help="More log output (repeat for debug); also before the command."),
    click.Option(["-q", "--quiet"], count=True, expose_value=False, is_eager=True, callback=_verbosity,
                 help="Less log output; also before the command."),
)


#: --config on every command too (the group's also reads $SCENETAG_CONFIG).
COMMAND_CONFIG = click.Option(["--config"], **config_option_settings())


class LazyGroup(click.Group):
    """A group that imports a command's module only when it is used, and gives each command -v/-q and --config."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        try:
            module = importlib.import_module(f"scenetag.commands.{COMMANDS[name]}")
        except ModuleNotFoundError as exc:
            if exc.name == f"scenetag.commands.{COMMANDS[name]}":
                return None
            raise
        command = module.command
        names = {opt for p in command.params for opt in getattr(p, "opts", ())}
        command.params.extend(p for p in (*VERBOSITY, COMMAND_CONFIG) if not names & set(p.opts))
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scenetag")
@click.option("--config", **config_option_settings(CONFIG_ENV))
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", count=True, help="Less log output.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: int) -> None:
    """Tag georeferenced scenes with a multi-label chip classifier.

    Logs and progress go to stderr; results go to stdout.
    """
    ctx.meta["scenetag.verbosity"] = {"verbose": verbose, "quiet": quiet}
    configure_logging(verbose, quiet)


if __name__ == "__main__":
    main()
