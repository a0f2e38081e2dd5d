"""CLI commands generated from a plug-in's typed config (``rehost.plugin_config``).

``rehost target add KIND NAME --opt ...`` has one command per kind whose options are the
fields of the kind's config dataclass, with their help texts and defaults: a new kind gets
its command without CLI code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import typer

from rehost.plugin_config import options

Handler = Callable[[typer.Context, str, dict[str, Any]], None]


def config_command(config: type[Any], handler: Handler, name_help: str) -> Callable[..., None]:
    """A Typer command ``NAME [--option VALUE ...]`` calling ``handler(ctx, name, options)``;
    options left at their default are not passed, so the config's own defaults apply."""
    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter("name", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str,
                          default=typer.Argument(..., help=name_help)),
    ]
    opts = options(config)
    for o in sorted(opts, key=lambda o: not o.argument):  # positional arguments first
        default = ... if o.required else o.default
        kind: Any = list[o.type] if o.many else o.type  # type: ignore[name-defined]
        if o.argument:
            params.append(inspect.Parameter(
                o.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=kind,
                default=typer.Argument(default, help=o.help, show_default=not o.required)))
            continue
        params.append(inspect.Parameter(
            o.name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
            default=typer.Option(default, o.flag, help=o.help, show_default=not o.required)))

    def command(ctx: typer.Context, name: str, **values: Any) -> None:
        given = {o.name: values[o.name] for o in opts if values[o.name] != o.default or o.required}
        handler(ctx, name, given)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return command
