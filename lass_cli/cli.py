"""The ``lass`` command: parses options and calls the Python API, nothing else.

Errors the user can fix print one line on stderr and exit non-zero, never a traceback
(``LASS_DEBUG=1`` shows it). Exit codes: 0 success, 1 a failed input or model, 2 bad usage.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__

EXIT_FAILED, EXIT_USAGE = 1, 2


class UserError(click.ClickException):
    """One-line failure with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = code

    def show(self, file: Any = None) -> None:
        click.echo(f"lass: error: {self.format_message()}", err=True)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from .audio import AudioError
    from .checkpoint import CheckpointError
    from .hub import FetchError
    from .likelihood import LikelihoodFileError
    from .registry import MissingFileError, RegistryError

    return (
        AudioError,
        CheckpointError,
        FetchError,
        LikelihoodFileError,
        MissingFileError,
        RegistryError,
        ValueError,
        OSError,
    )


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected exceptions into one stderr line; unexpected ones too unless LASS_DEBUG is set."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except _expected_errors() as exc:
            raise UserError(str(exc)) from exc
        except Exception as exc:
            if os.environ.get("LASS_DEBUG"):
                traceback.print_exc()
            raise UserError(f"internal error: {type(exc).__name__}: {exc} (set LASS_DEBUG=1 for details)") from exc

    return wrapper


registry_option = click.option(
    "--registry",
    "registries",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Extra models.toml adding or overriding models (also LASS_REGISTRY).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lass")
def main() -> None:
    """Separate drums and bass from music with Latent Autoregressive Source Separation."""


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="separated",
    show_default=True,
    help="Folder the stems are written to.",
)
@click.option("-n", "--model", default=None, help="Model name (see `lass models`).")
@registry_option
@click.option("-d", "--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True)
@click.option("--sampler", type=click.Choice(["beam", "greedy", "sample"]), default="beam", show_default=True)
@click.option("--beams", type=click.IntRange(min=1), default=None, help="Beam width B (default 100; 10 on CPU).")
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Candidates per window for --sampler sample.",
)
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Sampling: keep the k best pairs per step.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--lambda", "weight", type=float, default=None, help="Likelihood weight (model default, 3 upstream).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--batch-windows",
    type=click.IntRange(min=1),
    default=None,
    help="Windows searched at once (default: as many as fit in half the free memory).",
)
@click.option("--format", "fmt", type=click.Choice(["wav", "flac"]), default="wav", show_default=True)
@click.option("--bits", type=click.Choice(["16", "24", "32f"]), default="16", show_default=True)
@click.option(
    "--filename",
    "template",
    default="{track}/{stem}.{ext}",
    show_default=True,
    help="Output path under --out; keys {track}, {trackext}, {stem}, {ext}.",
)
@click.option("--clip-mode", type=click.Choice(["rescale", "clamp", "none"]), default="rescale", show_default=True)
@click.option(
    "--reference",
    "references",
    multiple=True,
    metavar="STEM=PATH",
    help="True stem for metrics (SDR, SI-SDR) in the report; needs a single input.",
)
@click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs (default: finished inputs are skipped).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or notices on stderr.")
@one_line_errors
def separate(inputs: tuple[str, ...], **options: Any) -> None:
    """Separate each INPUT (an audio file, or - to read paths from stdin) into stems.

    Writes OUT/<input name>/<stem>.wav and OUT/<input name>/report.json by default.
    """
    from .jobs import SeparateRequest, run_separate

    paths: list[str] = []
    for item in inputs:
        if item == "-":
            paths += [line.strip() for line in sys.stdin if line.strip()]
        else:
            paths.append(item)
    if not paths:
        raise UserError("no input files given", EXIT_USAGE)
    request = SeparateRequest(inputs=[Path(p) for p in paths], **options)
    summary = run_separate(request)
    if request.as_json:
        click.echo(json.dumps(summary, indent=2))
    if not summary["ok"]:
        sys.exit(EXIT_FAILED)


@main.command()
@registry_option
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@one_line_errors
def models(registries: tuple[str, ...], as_json: bool) -> None:
    """List the models, whether their files are here, and their size on disk."""
    from .registry import is_present, load_registry, model_size

    rows = []
    for spec in load_registry(list(registries)).values():
        missing = [f.role for f in spec.files if not is_present(spec, f)]
        generated = all(f.format == "random" for f in spec.files)
        status = "generated" if generated else ("ready" if not missing else f"missing {', '.join(missing)}")
        rows.append({"name": spec.name, "stems": list(spec.stems), "sample_rate": spec.sample_rate,
                     "window_tokens": spec.window_tokens, "status": status, "bytes": model_size(spec),
                     "description": spec.description})  # fmt: skip
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        size = f"{row['bytes'] / 2**20:,.1f} MiB"
        click.echo(
            f"{row['name']:<20} {'+'.join(row['stems']):<12} {row['sample_rate']:>6} Hz  {size:>12}  {row['status']}"
        )


@main.command()
@click.argument("names", nargs=-1)
@registry_option
@click.option(
    "--import",
    "archive",
    type=click.Path(dir_okay=False),
    default=None,
    help="Install the files from the authors' archive (e.g. lass-slakh-ckpts.tar) instead of the Hub.",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.option("-q", "--quiet", is_flag=True)
@one_line_errors
def fetch(names: tuple[str, ...], registries: tuple[str, ...], archive: str | None, as_json: bool, quiet: bool) -> None:
    """Download the files of the NAMEd models (default slakh-drums-bass) into the caches."""
    from . import hub
    from .registry import get_model, load_registry

    registry = load_registry(list(registries))
    chatty = sys.stderr.isatty() and not (quiet or as_json)
    say = (lambda line: click.echo(f"lass: {line}", err=True)) if chatty else (lambda _: None)
    done = {}
    for name in names or ("slakh-drums-bass",):
        spec = get_model(registry, name)
        done[name] = hub.import_archive(spec, archive, say) if archive else hub.fetch(spec, say)
    if as_json:
        click.echo(json.dumps(done, indent=2))


@main.command()
@click.argument("name")
@click.argument("out_dir", type=click.Path(file_okay=False))
@registry_option
@click.option("--repo", default="<owner>/<repo>", show_default=True, help="Hub repo the bundle will be uploaded to.")
@one_line_errors
def export(name: str, out_dir: str, registries: tuple[str, ...], repo: str) -> None:
    """Write model NAME as a Hub bundle in OUT_DIR: safetensors, counts, model card, models.toml."""
    from .hub import export_bundle
    from .registry import get_model, load_registry

    for path in export_bundle(get_model(load_registry(list(registries)), name), out_dir, repo):
        click.echo(str(path))


if __name__ == "__main__":
    main()
