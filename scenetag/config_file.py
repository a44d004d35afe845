"""Command defaults from a TOML file: ``scenetag --config scenetag.toml COMMAND`` or ``$SCENETAG_CONFIG``.

The file holds one table per command, keyed by the command's long option
names (as on its command line, without the dashes; ``_`` works as ``-``)::

    [batch]
    out-dir = "/data/tags"
    bands = "3,2,1"
    workers = 4
    progress = false

It becomes click's ``default_map``: a value in it is the option's default, so
an option given on the command line wins, and click converts and checks the
value exactly as it does the command line's.  Relative paths (options whose
type is a path) are taken from the file's folder, so a crontab may run from
anywhere.  The whole file is checked when it is read: an unreadable file,
TOML that does not parse, a table that is not a command, a key that is not
one of its options, or a value of the wrong type is a one-line error naming
the file and the key (:class:`~scenetag.errors.ConfigError`, exit code 2).
"""

from __future__ import annotations

import datetime
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import click
from click.core import ParameterSource

from scenetag.errors import ConfigError, ScenetagError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: Environment variable naming the config file when ``--config`` is not given.
CONFIG_ENV = "SCENETAG_CONFIG"
#: Where the file read for this command line is kept (``click.Context.meta`` is shared by the contexts).
META_KEY = "scenetag.config"


@dataclass(frozen=True)
class ConfigFile:
    """A checked config file: its ``default_map`` and what was written for each value."""

    path: Path
    sha256: str
    #: command name → parameter name → value, as click's ``default_map`` takes it.
    default_map: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: command name → parameter name → the key as written in the file.
    keys: dict[str, dict[str, str]] = field(default_factory=dict)


def _options_by_key(command: click.Command) -> dict[str, click.Option]:
    """The command's options by the names a file may use: long names without dashes (``--out-dir`` → out-dir)."""
    out: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.name not in ("help", "config"):
            for opt in param.opts:
                if opt.startswith("--"):
                    out[opt[2:]] = param
    return out


def _value_error(where: str, key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{where}: {key} = {_shown(value)}: {why}")


def _shown(value: Any) -> str:
    return repr(value) if not isinstance(value, bool) else str(value).lower()


def _check(ctx: click.Context, command: click.Command, name: str, table: Mapping[str, Any],
           path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """``table`` (the file's ``[name]``) as ``(default_map entries, keys)``; ConfigError on a bad key or value."""
    where = f"config {path} [{name}]"
    by_key = _options_by_key(command)
    values: dict[str, Any] = {}
    keys: dict[str, str] = {}
    check_ctx = click.Context(command, info_name=name, parent=ctx, resilient_parsing=True)
    for key, value in table.items():
        param = by_key.get(key.replace("_", "-"))
        if param is None:
            secondary = {o[2:]: p for p in command.params for o in getattr(p, "secondary_opts", ())}
            hint = (f"write {secondary[key.replace('_', '-')].opts[0][2:]} = false"
                    if key.replace("_", "-") in secondary else f"see `scenetag {name} --help` for its options")
            raise ConfigError(f"{where}: {key!r} is not an option of `scenetag {name}`: {hint}")
        if param.name in values:
            raise ConfigError(f"{where}: {key!r} sets {param.opts[-1]} a second time (as {keys[param.name]!r})")
        if isinstance(value, (dict, list)) and not (param.multiple or param.nargs != 1):
            raise _value_error(where, key, value, f"{param.opts[-1]} takes one value")
        if isinstance(value, (datetime.date, datetime.time)):
            raise _value_error(where, key, value, f"{param.opts[-1]} takes no date or time: quote it")
        if isinstance(param.type, click.Path) and isinstance(value, str) and value:
            value = str(path.parent / Path(value).expanduser())  # an absolute value stays as it is
        try:
            checked = param.type_cast_value(check_ctx, value)
            if param.callback is not None and param.expose_value:  # e.g. --bands "3,2,1" is parsed by one
                param.callback(check_ctx, param, checked)
        except click.BadParameter as exc:
            raise _value_error(where, key, value, f"{param.opts[-1]}: {exc.message}") from None
        except (click.UsageError, ScenetagError, TypeError, ValueError) as exc:
            raise _value_error(where, key, value, str(exc)) from None
        values[param.name] = value
        keys[param.name] = key
    return values, keys


def read_config(path: str | Path, ctx: click.Context,
                get_command: Callable[[click.Context, str], click.Command | None]) -> ConfigFile:
    """Read and check the config file at ``path`` for the commands ``get_command`` knows."""
    path = Path(path).expanduser().absolute()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot be read ({exc.strerror or exc}): "
                          f"check --config or ${CONFIG_ENV}") from None
    try:
        tables = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path}: not valid TOML ({exc})") from None
    default_map: dict[str, dict[str, Any]] = {}
    keys: dict[str, dict[str, str]] = {}
    for name, table in tables.items():
        command = get_command(ctx, name)
        if not isinstance(table, dict):
            raise ConfigError(f"config {path}: {name} = {_shown(table)} is outside any table: "
                              f"put options under a [command] table, e.g. [batch]")
        if command is None:
            known = ctx.command.list_commands(ctx) if isinstance(ctx.command, click.Group) else [ctx.info_name]
            raise ConfigError(f"config {path}: [{name}] is not a scenetag command (commands: {', '.join(known)})")
        default_map[name], keys[name] = _check(ctx, command, name, table, path)
    return ConfigFile(path, hashlib.sha256(data).hexdigest(), default_map, keys)


def apply_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Callback of ``--config``: read the file and make it the defaults of the commands (group or command level)."""
    if value is None or ctx.resilient_parsing:
        return
    root = ctx.find_root()
    group = root.command
    if isinstance(group, click.Group):
        get_command = group.get_command
    else:  # a command invoked on its own (no group): its table only
        def get_command(c: click.Context, name: str) -> click.Command | None:
            return group if name == root.info_name else None
    try:
        config = read_config(value, root, get_command)
    except ConfigError as exc:
        from scenetag.click_error import ScenetagClickError

        raise ScenetagClickError(exc) from None
    ctx.meta[META_KEY] = config
    if ctx is root:
        ctx.default_map = config.default_map
    else:  # after the command's name: its context exists, but its other options are not processed yet
        ctx.default_map = config.default_map.get(ctx.info_name, {})


def config_option_settings(envvar: str | None = None) -> dict[str, Any]:
    """The settings of ``--config FILE`` (on the group, with ``envvar``, and on every command)."""
    # No checks by click: read_config says what is wrong in one line naming the file.
    return dict(type=click.Path(), default=None, envvar=envvar, is_eager=True, expose_value=False,
                callback=apply_config, metavar="FILE",
                help="TOML file of option defaults, one [command] table each (e.g. [batch] workers = 4); "
                "options given on the command line win. Default: $" + CONFIG_ENV + ".")


def provenance(ctx: click.Context | None = None) -> dict[str, Any]:
    """What the config file gave this command: ``{"path", "sha256", "options"}``, or ``{}`` without one.

    ``options`` holds, by the keys written in the file, the values the command
    took from it (the options that the command line did not give).
    """
    ctx = ctx or click.get_current_context(silent=True)
    if ctx is None:
        return {}
    config = ctx.meta.get(META_KEY)
    if config is None:
        return {}
    name = ctx.info_name
    values = config.default_map.get(name, {})
    used = {config.keys[name][p]: v for p, v in values.items()
            if ctx.get_parameter_source(p) == ParameterSource.DEFAULT_MAP}
    return {"path": str(config.path), "sha256": config.sha256, "options": used}
