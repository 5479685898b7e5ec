"""``squeezer models``: the model-version admin API of a running server, from a shell.

Each command is one call of ``/admin/models`` (docs/api.md), with the admin key from
``--admin-key`` or ``SQUEEZER_ADMIN_API_KEY``; what the server answers is printed as
the version table (or JSON with ``--json``), and a refusal exits 1 with its message.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from squeezer.cli.app import app

models_app = typer.Typer(
    help="List, load, unload and alias model versions of a running server.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(models_app, name="models")

Url = Annotated[str, typer.Argument(help="The server, e.g. http://127.0.0.1:8080")]
AdminKey = Annotated[
    str | None,
    typer.Option(
        "--admin-key",
        help="The server's admin key (--admin-api-key there).",
        envvar="SQUEEZER_ADMIN_API_KEY",
        show_envvar=True,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the server's JSON answer.")]
Timeout = Annotated[
    float, typer.Option(help="Seconds to wait: a load lasts as long as the model's load.")
]


def _call(
    method: str, url: str, path: str, key: str | None, timeout: float, body: Any = None
) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(
            method, url.rstrip("/") + path, json=body, headers=headers, timeout=timeout
        )
    except httpx.HTTPError as e:
        typer.echo(f"squeezer models: {url}: {e}", err=True)
        raise typer.Exit(1) from None
    answer = response.json() if response.content else None
    if response.status_code >= 400:
        message = answer.get("error", answer) if isinstance(answer, dict) else response.text
        typer.echo(f"squeezer models: {response.status_code}: {message}", err=True)
        raise typer.Exit(1)
    return answer


def _show(answer: Any, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    models = answer.get("models", [answer])
    table = Table("model", "version", "state", "aliases", "source", "reason")
    for model in models:
        for v in model["versions"]:
            aliases = [*v["aliases"], *(["(default)"] if v["default"] else [])]
            table.add_row(
                model["name"],
                v["version"],
                v["state"],
                ", ".join(aliases),
                v["source"],
                v["reason"] or "",
            )
    Console().print(table)


def _split(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition(":")
    return name, version or None


@models_app.command("list")
def list_models(url: Url, admin_key: AdminKey = None, as_json: AsJson = False) -> None:
    """Every model version with its state, aliases and source."""
    _show(_call("GET", url, "/admin/models", admin_key, 30), as_json)


@models_app.command("load")
def load(
    url: Url,
    ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION")],
    source: Annotated[
        str | None,
        typer.Option(help="Where the version loads from (folder, GGUF, models:/..., ...)."),
    ] = None,
    alias: Annotated[
        list[str] | None,
        typer.Option(help="Alias to move to it once it serves (repeatable; default too)."),
    ] = None,
    unload_replaced: Annotated[
        bool,
        typer.Option(help="A swap: unload what the aliases (or the default) named before."),
    ] = False,
    reload: Annotated[bool, typer.Option(help="Load a serving version again.")] = False,
    pin: Annotated[
        bool, typer.Option(help="Never evict it to make room (--max-loaded-models).")
    ] = False,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
    timeout: Timeout = 900.0,
) -> None:
    """Load a version beside what serves; with --alias and --unload-replaced, a swap."""
    name, version = _split(ref)
    if reload and version is None:
        raise typer.BadParameter("--reload needs NAME:VERSION")
    path = f"/admin/models/{name}" + (f"/versions/{version}" if version else "")
    path += "/reload" if reload else "/load"
    body = {
        "source": source,
        "aliases": alias or [],
        "unload_replaced": unload_replaced,
        "settings": {"pin": True} if pin else {},
    }
    _show(_call("POST", url, path, admin_key, timeout, body), as_json)


@models_app.command("unload")
def unload(
    url: Url,
    ref: Annotated[str, typer.Argument(help="NAME:VERSION, or NAME for every version")],
    force: Annotated[bool, typer.Option(help="Even a version aliases name.")] = False,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
    timeout: Timeout = 900.0,
) -> None:
    """Unload once the requests it accepted are answered."""
    name, version = _split(ref)
    path = f"/admin/models/{name}" + (f"/versions/{version}" if version else "") + "/unload"
    _show(_call("POST", url, path, admin_key, timeout, {"force": force}), as_json)


@models_app.command("alias")
def alias(
    url: Url,
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS")],
    version: Annotated[
        str | None, typer.Argument(help="The version it names; left out with --delete.")
    ] = None,
    delete: Annotated[bool, typer.Option(help="Remove the alias.")] = False,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Point an alias at a serving version (atomically), or remove it."""
    name, at, label = ref.partition("@")
    if not at or not label or (version is None) != delete:
        raise typer.BadParameter("expected NAME@ALIAS VERSION, or NAME@ALIAS --delete")
    path = f"/admin/models/{name}/aliases/{label}"
    if delete:
        answer = _call("DELETE", url, path, admin_key, 30)
    else:
        answer = _call("PUT", url, path, admin_key, 30, {"version": version})
    _show(answer, as_json)
