"""`ttft-reconcile capture-callback`: the file LiteLLM 1.82-era proxies need beside config.yaml."""

from __future__ import annotations

from pathlib import Path

import click

CALLBACK_MODULE = "ttft_reconcile.capture.callback"


def callback_source() -> str:
    """The two-line module that loads the capture into a proxy."""
    return (
        "# Loads ttft_reconcile's stream capture into this LiteLLM proxy (ttft-reconcile capture-callback).\n"
        f"from {CALLBACK_MODULE} import capture  # noqa: F401\n"
    )


def write_callback_file(config: Path, name: str, force: bool) -> tuple[Path, bool]:
    """Write `<config dir>/<name>.py`; returns (path, whether it changed). Raises FileExistsError."""
    target = config.resolve().parent / f"{name}.py"
    text = callback_source()
    if target.exists():
        current = target.read_text(encoding="utf-8", errors="replace")
        if current == text:
            return target, False
        if not force:
            raise FileExistsError(str(target))
    target.write_text(text, encoding="utf-8")
    return target, True


def register(group: click.Group) -> None:
    group.add_command(capture_callback)


@click.command("capture-callback")
@click.option("--config", "config", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The proxy's config.yaml; the callback file is written beside it.")
@click.option("--name", default="ttft_capture", show_default=True,
              help="Module name of the file (a Python identifier).")
@click.option("--force", is_flag=True, help="Overwrite an existing file with other content.")
def capture_callback(config: Path, name: str, force: bool) -> None:
    """Write the callback file that loads the capture into a LiteLLM proxy.

    LiteLLM 1.82.3 loads callback modules only from a file next to config.yaml; newer
    proxies can name `ttft_reconcile.capture.callback.capture` directly. Set
    TTFT_CAPTURE_STAMP=true in the proxy's environment to also stamp first chunks.

    \b
    Example:
      ttft-reconcile capture-callback --config /etc/litellm/config.yaml
    """
    if not name.isidentifier():
        raise click.BadParameter(f"{name!r} is not a Python identifier", param_hint="--name")
    try:
        path, changed = write_callback_file(config, name, force)
    except FileExistsError as error:
        raise click.ClickException(f"{error} exists with other content; use --force to replace it") from error
    except OSError as error:
        raise click.ClickException(f"cannot write the callback file: {error}") from error
    click.echo(f"{'wrote' if changed else 'unchanged'} {path}")
    click.echo("Add to config.yaml:\n  litellm_settings:\n    callbacks: [\"" + name + ".capture\"]")
