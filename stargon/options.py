"""Command-line options generated from the config dataclasses, so each default and each help
text is written once (in the dataclass) and every setting is reachable from the command line."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer


def config_fields(config: type) -> list[tuple[dataclasses.Field, type, str]]:
    """(field, plain type, help) for every field of a config dataclass whose annotation is
    `Annotated[type, "help"]`; fields without help (nested configs, `extra`) are not options."""
    hints = typing.get_type_hints(config, include_extras=True)
    found = []
    for item in dataclasses.fields(config):
        hint = hints[item.name]
        if typing.get_origin(hint) is Annotated:
            plain, help_text = typing.get_args(hint)[:2]
            found.append((item, plain, help_text))
    return found


def _cli_type(plain: type) -> type:
    """Lists become one comma-separated string on the command line."""
    arguments = typing.get_args(plain)
    optional = type(None) in arguments
    inner = [a for a in arguments if a is not type(None)]
    if typing.get_origin(plain) is list or (inner and typing.get_origin(inner[0]) is list):
        return str | None if optional else str
    return plain


def _from_cli(plain: type, value: Any) -> Any:
    if value is not None and _cli_type(plain) is not plain and isinstance(value, str):
        return [part for part in value.split(",") if part]
    return value


def with_config_options(*configs: type, skip: frozenset[str] = frozenset()):
    """Decorate a typer command taking `settings: dict`: it gains one `--option` per config
    field (default and help from the dataclass) and receives the given ones in `settings`."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        resolved = typing.get_type_hints(command, include_extras=True)
        own = [
            p.replace(annotation=resolved.get(name, p.annotation))
            for name, p in signature.parameters.items()
            if name != "settings"
        ]
        taken = {p.name for p in own}
        generated, types_of = [], {}
        for config in configs:
            for item, plain, help_text in config_fields(config):
                if item.name in skip or item.name in taken:
                    continue
                default = (
                    item.default_factory()
                    if item.default_factory is not dataclasses.MISSING
                    else item.default
                )
                if isinstance(default, list):
                    default = ",".join(default)
                option = typer.Option(help=help_text)
                generated.append(
                    inspect.Parameter(
                        item.name,
                        inspect.Parameter.KEYWORD_ONLY,
                        default=None if default is dataclasses.MISSING else default,
                        annotation=Annotated[_cli_type(plain), option],
                    )
                )
                types_of[item.name] = plain

        @functools.wraps(command)
        def run(**values):
            settings = {
                name: _from_cli(types_of[name], values.pop(name)) for name in list(types_of)
            }
            return command(**values, settings=settings)

        parameters = [*own, *generated]
        run.__signature__ = signature.replace(parameters=parameters)
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate


def split_settings(settings: dict, config: type) -> tuple[dict, dict]:
    """(the settings that are `config`'s fields, the rest)."""
    names = {item.name for item in dataclasses.fields(config)}
    return (
        {k: v for k, v in settings.items() if k in names},
        {k: v for k, v in settings.items() if k not in names},
    )


__all__ = ["config_fields", "split_settings", "with_config_options"]
