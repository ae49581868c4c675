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
from .allocator import keep_freed_memory

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
    from .metrics import MissingDependency
    from .registry import MissingFileError, RegistryError
    from .synth import SynthError

    return (
        AudioError,
        CheckpointError,
        FetchError,
        LikelihoodFileError,
        MissingDependency,
        MissingFileError,
        RegistryError,
        SynthError,
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


def with_progress(enabled: bool, description: str, job: Callable[[Any], Any]) -> Any:
    """Run ``job(progress)`` with a progress bar on the terminal (silent when not ``enabled``)."""
    from .jobs import TaskProgress

    progress = TaskProgress(enabled, description)
    try:
        return job(progress)
    finally:
        progress.close()


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
    keep_freed_memory()


class DefaultGroup(click.Group):
    """A group whose first word is a subcommand if it names one, else the arguments of ``run``
    (so that ``lass evaluate ROOT ...`` and ``lass evaluate merge OUT PARTS...`` both work)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


search_options = [
    click.option("-n", "--model", default=None, help="Model name (see `lass models`)."),
    registry_option,
    click.option("-d", "--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True),
    click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
                 show_default=True, help="Precision of the priors' projections (auto: CUDA float16, CPU float32; "
                      "float32 under --compat upstream)."),
    click.option("--sampler", type=click.Choice(["beam", "greedy", "sample"]), default=None,
                 help="Search method (default: the model's, else beam)."),
    click.option("--beams", type=click.IntRange(min=1), default=None, help="Beam width B (default 100; 10 on CPU)."),
    click.option("--samples", type=click.IntRange(min=1), default=None,
                 help="Candidates per window for --sampler sample (default: the model's, else 16)."),
    click.option("--top-k", type=click.IntRange(min=1), default=None, help="Sampling: keep the k best pairs per step."),
    click.option("--select", type=click.Choice(["mixture", "priors", "posterior"]), default=None,
                 help="Sampling: keep the candidate that best rebuilds the mixture (default), that the priors "
                 "like best (LQ-VAE rejection) or with the best posterior."),
    click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True),
    click.option("--lambda", "weight", type=float, default=None, help="Likelihood weight (model default, 3 upstream)."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--batch-windows", type=click.IntRange(min=1), default=None,
                 help="Windows searched at once, short inputs' together (default: as many as fit in half the free "
                 "memory)."),
    click.option("--normalize/--no-normalize", default=True, show_default=True,
                 help="Scale the input to the model's training level and the stems back."),
    click.option("--wiener/--no-wiener", default=None,
                 help="Use the decoded stems as soft masks on the mixture (default: the model's setting)."),
    click.option("--compat", type=click.Choice(["none", "upstream"]), default="none", show_default=True,
                 help="upstream: make the original LASS code's beam-search decisions (docs/upstream.md)."),
    click.option("--compile", "compile_step", is_flag=True,
                 help="Compile the priors' step with torch.compile (CUDA: replayed as CUDA graphs). Costs tens of "
                 "seconds once per process; pays on a GPU, not on a CPU."),
]  # fmt: skip


def with_options(options: list[Callable[..., Any]]) -> Callable[..., Any]:
    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


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
@with_options(search_options)
@click.option("--format", "fmt", type=click.Choice(["wav", "flac", "mp3"]), default="wav", show_default=True)
@click.option("--bits", type=click.Choice(["16", "24", "32f"]), default="16", show_default=True, help="WAV and FLAC.")
@click.option("--mp3-bitrate", default="320k", show_default=True, help="With --format mp3 (ffmpeg's LAME).")
@click.option(
    "--stems",
    "stems",
    default=None,
    metavar="NAMES",
    callback=lambda _ctx, _param, value: tuple(v.strip() for v in value.split(",") if v.strip()) if value else None,
    help="Comma-separated subset of the model's stems to write (default: all).",
)
@click.option(
    "--overlap", type=click.FloatRange(0, 1, max_open=True), default=None,
    help="Fraction of a window that neighbouring windows share, cross-faded (default 0.25; 0: side by side).",
)  # fmt: skip
@click.option("--residual", is_flag=True, help="Also write other = input - sum of the stems (all add up to the input).")
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
@click.option(
    "--save-tokens", default=None, metavar="PATH.npz",
    help="Also write each window's mixture tokens and chosen stem tokens ({track} names the input).",
)  # fmt: skip
@click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs (default: finished inputs are skipped).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or notices on stderr.")
@one_line_errors
def separate(inputs: tuple[str, ...], **options: Any) -> None:
    """Separate each INPUT (an audio file, a folder of them, or - to read paths from stdin) into stems.

    Writes OUT/<input name>/<stem>.wav and OUT/<input name>/report.json by default; a folder's
    files (found recursively) keep their place in it: OUT/<sub/folders/name>/<stem>.wav.
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


@main.group(cls=DefaultGroup)
def evaluate() -> None:
    """Run the paper's protocol on a Slakh2100 folder (`lass evaluate ROOT`), or merge shard
    reports (`lass evaluate merge OUT PARTS...`)."""


@evaluate.command("run")
@click.argument("root", type=click.Path(file_okay=False))
@click.option("-o", "--out", default="evaluation.json", show_default=True, help="The JSON report.")
@click.option("--split", default="test", show_default=True, help="Slakh split folder (train, validation, test).")
@click.option("--num-mixtures", type=click.IntRange(min=1), default=450, show_default=True)
@click.option("--shard", default="0/1", show_default=True, help="i/n: evaluate rows k with k % n == i.")
@click.option("--resume", is_flag=True, help="Continue a partial report, skipping its rows.")
@click.option("-f", "--force", is_flag=True, help="Start again over an existing report.")
@click.option(
    "--save-audio",
    type=click.Path(file_okay=False),
    default=None,
    help="Write each row's mixture, estimates, references and oracle as float WAV here.",
)
@click.option(
    "--level-db",
    type=float,
    default=0.0,
    show_default=True,
    help="Feed each mixture this many dB above its native level (level robustness; metrics at native level).",
)
@with_options(search_options)
@click.option("--json", "as_json", is_flag=True, help="Print the aggregates as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True)
@one_line_errors
def evaluate_run(root: str, as_json: bool, **options: Any) -> None:
    """Separate N seeded chunks of ROOT and report SDR / SI-SDR with the mixture and oracle baselines."""
    from .evaluate import EvaluateRequest, run_evaluate

    request = EvaluateRequest(root=root, **options)
    interactive = sys.stderr.isatty() and not request.quiet and not as_json
    report = with_progress(interactive, "mixtures", lambda progress: run_evaluate(request, progress))
    _summarise(report, as_json, request.quiet)


@evaluate.command("merge")
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True)
@click.option("-q", "--quiet", is_flag=True)
@one_line_errors
def evaluate_merge(out: str, parts: tuple[str, ...], as_json: bool, quiet: bool) -> None:
    """Join shard reports of one evaluation into OUT."""
    from .evaluate import merge_reports

    _summarise(merge_reports(out, list(parts)), as_json, quiet)


def _summarise(report: dict[str, Any], as_json: bool, quiet: bool) -> None:
    if as_json:
        click.echo(json.dumps({"rows": len(report["rows"]), "aggregates": report["aggregates"]}, indent=2))
        return
    if quiet:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(report['rows'])} mixtures, mean (median) in dB")
    table.add_column("method")
    names = [n for n in report["aggregates"]["lass"]]
    for name in names:
        for metric in ("sdr", "si_sdr"):
            table.add_column(f"{name} {metric.replace('_', '-').upper()}", justify="right")
    for method, stats in report["aggregates"].items():  # lass, then the baselines
        cells = []
        for name in names:
            for metric in ("sdr", "si_sdr"):
                s = stats[name][metric]
                cells.append("-" if s["mean"] is None else f"{s['mean']:.2f} ({s['median']:.2f})")
        table.add_row(method, *cells)
    Console(stderr=True).print(table)


@main.group("count-likelihood", cls=DefaultGroup)
def count_likelihood() -> None:
    """Count the likelihood tensor from a Slakh folder (`lass count-likelihood ROOT --out F`), or merge
    count files (`lass count-likelihood merge OUT PARTS...`)."""


@count_likelihood.command("run")
@click.argument("root", type=click.Path(file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Counts file (.npz).")
@click.option("-n", "--model", default=None, help="Model whose VQ-VAE encodes the chunks.")
@registry_option
@click.option("--split", default="train", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Pairs per batch.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--shard", default="0/1", show_default=True, help="i/n: count pairs p with p % n == i.")
@click.option("--resume", is_flag=True, help="Continue from OUT.resume.npz.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=50, show_default=True, help="Batches.")
@click.option(
    "--gain-db",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Random gain of each source within +-dB (denser, level-robust counts).",
)
@click.option("-f", "--force", is_flag=True, help="Replace an existing OUT.")
@click.option("-d", "--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@click.option("-q", "--quiet", is_flag=True)
@one_line_errors
def count_run(root: str, as_json: bool, **options: Any) -> None:
    """Encode pairs of stem chunks and their mixture; count every token triple (both orders)."""
    from .counting import CountRequest, run_count

    request = CountRequest(root=root, **options)
    interactive = sys.stderr.isatty() and not request.quiet and not as_json
    counts = with_progress(interactive, "batches", lambda progress: run_count(request, progress))
    _print_counts(counts.summary(), as_json, request.quiet)


@count_likelihood.command("merge")
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("-f", "--force", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def count_merge(out: str, parts: tuple[str, ...], force: bool, as_json: bool) -> None:
    """Sum count files (e.g. shards) into OUT."""
    from .counting import merge_counts

    _print_counts(merge_counts(out, list(parts), force).summary(), as_json, False)


def _print_counts(summary: dict[str, Any], as_json: bool, quiet: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary))
    elif not quiet:
        click.echo(f"K = {summary['bins']}, nonzeros = {summary['nnz']:,}, density = {100 * summary['density']:.4f} %, "
                   f"observations = {summary['observations']:,}")  # fmt: skip


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--tracks", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--split", type=click.Choice(["train", "validation", "test"]), default="train", show_default=True)
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True)
@click.option("--rate", type=click.IntRange(min=8000), default=22050, show_default=True)
@click.option(
    "--soundfont", default=None,
    help="Soundfont name or path; several, comma-separated, give each track one of them. "
    "Default: FluidR3_GM.sf2 (train, validation), TimGM6mb.sf2 (test).",
)  # fmt: skip
@click.option("-q", "--quiet", is_flag=True)
@one_line_errors
def synth(out_dir: str, tracks: int, seed: int, split: str, seconds: float, rate: int, soundfont: str | None,
          quiet: bool) -> None:  # fmt: skip
    """Render drums + bass tracks from generated MIDI into OUT_DIR/<split>/ in the Slakh2100 layout."""
    from .synth import synth as render_tracks

    def job(progress: Any) -> list[Path]:
        return render_tracks(out_dir, tracks, seed, split, seconds, rate, soundfont, progress)

    folders = with_progress(sys.stderr.isatty() and not quiet, "tracks", job)
    if not quiet:
        click.echo(f"{len(folders)} tracks in {Path(out_dir) / split}")


@main.command()
@click.argument("tokens_file", type=click.Path(dir_okay=False))
@click.option("-n", "--model", default=None, help="The model that wrote the tokens (default: the file's).")
@registry_option
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder for the stems.")
@click.option("--format", "fmt", type=click.Choice(["wav", "flac"]), default="wav", show_default=True)
@click.option("--bits", type=click.Choice(["16", "24", "32f"]), default="16", show_default=True)
@click.option("-d", "--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True)
@click.option("-f", "--force", is_flag=True, help="Overwrite existing stems.")
@one_line_errors
def decode(tokens_file: str, model: str | None, registries: tuple[str, ...], out_dir: str, fmt: str, bits: str,
           device: str, force: bool) -> None:  # fmt: skip
    """Write the stems of a --save-tokens file again, without a search (decoded tokens, no masks)."""
    from . import audio
    from .registry import get_model, load_registry
    from .separate import Separator, pick_device
    from .tokens import decode_stems, read_tokens

    file = read_tokens(tokens_file)
    paths = {stem: Path(out_dir) / f"{stem}.{fmt}" for stem in file.stems}
    existing = [p for p in paths.values() if p.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} exists (use --force to overwrite)")
    spec = get_model(load_registry(list(registries)), model or file.model)
    stems = audio.limit_peaks(decode_stems(file, Separator.load(spec, pick_device(device))), "rescale")
    for stem, x in stems.items():
        audio.save(paths[stem], x, file.input_rate, fmt, bits)
        click.echo(str(paths[stem]))


@main.group("train")
def train_group() -> None:
    """Train our own VQ-VAE (`lass train vqvae`) and priors (`lass train prior`) on Slakh-layout data."""


train_options = [
    click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Run folder."),
    click.option("--preset", type=click.Choice(["small", "tiny"]), default="small", show_default=True),
    click.option("--split", default="train", show_default=True),
    click.option("--val", type=click.Path(file_okay=False), default=None, help="Held-out Slakh-layout root (test/)."),
    click.option("--steps", type=click.IntRange(min=1), default=10000, show_default=True),
    click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True),
    click.option("--lr", type=float, default=3e-4, show_default=True),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--checkpoint-every", type=click.IntRange(min=1), default=500, show_default=True),
    click.option("--resume", is_flag=True, help="Continue from OUT/train_state.pt."),
    click.option("--threads", type=click.IntRange(min=1), default=None),
    click.option("-q", "--quiet", is_flag=True),
]


def _train(what: str, data: str, quiet: bool, **options: Any) -> None:
    from .train import TrainRequest, train

    request = TrainRequest(what=what, data=data, **options)
    target = with_progress(sys.stderr.isatty() and not quiet, "steps", lambda progress: train(request, progress))
    if not quiet:
        click.echo(str(target))


@train_group.command("vqvae")
@click.argument("data", type=click.Path(file_okay=False))
@click.option("--segment", type=click.IntRange(min=256), default=16384, show_default=True, help="Samples per example.")
@click.option("--linearize", is_flag=True, help="Add the LQ-VAE post-quantisation linearisation loss.")
@click.option(
    "--lin-weight", type=click.FloatRange(min=0), default=0.1, show_default=True,
    help="Weight of that loss (the paper uses 1; at our scale 1 swamps the reconstruction loss).",
)  # fmt: skip
@with_options(train_options)
@one_line_errors
def train_vqvae(data: str, quiet: bool, **options: Any) -> None:
    """Train a VQ-VAE on the stems and mixtures of DATA (a Slakh-layout root)."""
    _train("vqvae", data, quiet, **options)


@train_group.command("prior")
@click.argument("data", type=click.Path(file_okay=False))
@click.option("--stem", type=click.Choice(["drums", "bass"]), required=True)
@click.option("--vqvae", type=click.Path(dir_okay=False, exists=True), required=True, help="Trained VQ-VAE file.")
@click.option(
    "--init", type=click.Path(dir_okay=False, exists=True), default=None,
    help="Start from this prior's weights (fine-tuning; its own hyper-parameters are kept).",
)  # fmt: skip
@with_options(train_options)
@one_line_errors
def train_prior(data: str, quiet: bool, **options: Any) -> None:
    """Train one stem's prior on the tokens the VQ-VAE gives DATA's stems."""
    _train("prior", data, quiet, **options)


@main.command()
@registry_option
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@one_line_errors
def models(registries: tuple[str, ...], as_json: bool) -> None:
    """List the models, whether their files are here, and their size on disk."""
    from .registry import FILELESS, is_present, load_registry, model_size

    rows = []
    for spec in load_registry(list(registries)).values():
        missing = [f.role for f in spec.files if not is_present(spec, f)]
        generated = all(f.format in FILELESS for f in spec.files)
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
