"""The `advise-cache` command line: parses flags, builds a config, calls one function, prints.

    advise-cache extract synthetic --root data/synthetic --out synthetic.zarr --model test-vit
    advise-cache info synthetic.zarr
    advise-cache verify synthetic.zarr

The commands live in cli_store.py (extract, info, verify) and cli_train.py (train, finetune,
stats, evaluate, visualize, embed); this module registers them, turns a user error into one
line, and sets up logging. Nothing here imports torch or zarr: `--help` answers at once.

Exit status: 0 success; 2 a user error (one line on stderr: bad path, flag, layout, store);
3 extraction finished but some videos failed (listed in the summary); 1 verify found problems.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from . import cli_store, cli_train
from .errors import AdviseCacheError
from .storage import set_storage_options


class OneLineErrors(TyperGroup):
    """A flag that does not parse (a word for a number, an unknown option, a missing value) is one
    line on stderr and exit status 2, like every other user error, instead of a usage box.

    Click's exceptions are told by class name: typer vendors click in its newer releases
    (typer._click) and depends on it in older ones, so neither module is imported here."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except Exception as e:
            kinds = {c.__name__ for c in type(e).__mro__}
            if "NoArgsIsHelpError" in kinds:  # the bare command: its help
                e.show()
            elif "ClickException" in kinds:
                ctx = getattr(e, "ctx", None)
                hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
                typer.echo(f"error: {e.format_message()}{hint}", err=True)
            elif "Abort" in kinds:
                typer.echo("aborted", err=True)
                sys.exit(1)
            else:
                raise
            sys.exit(e.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)  # an Exit's code, or 0 when a command returns


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="AdViSe as a feature cache: extract frozen image-model tokens once, train from them.",
)


def user_errors(fn):
    """Turn an AdviseCacheError into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AdviseCacheError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; run the same command again to continue", err=True)
            raise typer.Exit(130) from None

    return wrapper


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(verbose: bool) -> None:
    """advise_cache's warnings (missing videos, failed decodes) reach stderr by default;
    other libraries only at ERROR (open_clip and huggingface_hub are chatty about missing
    weights). --verbose shows everything from DEBUG. Safe to call again."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    ours = logging.DEBUG if verbose else logging.WARNING
    others = logging.DEBUG if verbose else logging.ERROR
    handler.filters.clear()
    handler.addFilter(lambda r: r.levelno >= (ours if r.name.split(".")[0] == "advise_cache" else others))
    root.setLevel(min(ours, others))
    logging.getLogger("huggingface_hub").setLevel(others)  # it has a stderr handler of its own


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
    storage_options: Annotated[
        str | None,
        typer.Option(
            help="JSON of obstore settings for stores in buckets (credentials and endpoint come from the usual environment, e.g. AWS_ENDPOINT_URL); default: $ADVISE_STORAGE_OPTIONS."
        ),
    ] = None,
):
    _setup_logging(verbose)
    user_errors(set_storage_options)(storage_options)


for command in (cli_store.extract, cli_store.info, cli_store.verify):
    app.command()(user_errors(command))
app.command("train", help="Pretrain the TMM with Playback Rate Perception, straight from the store.")(
    user_errors(cli_train.train_command("prp"))
)
app.command("finetune", help="Train the TMM and a new head on the store's labels (from --init or --scratch).")(
    user_errors(cli_train.train_command("classify"))
)
for command in (cli_train.stats, cli_train.evaluate, cli_train.visualize, cli_train.embed):
    app.command()(user_errors(command))

if __name__ == "__main__":
    app()
