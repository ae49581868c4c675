"""``lass separate`` over many inputs: output paths, resume, atomic writes, reports, progress.

Per input, every stem is written into a staging folder under ``--out`` as the windows are separated
(:mod:`lass_cli.outputs`) and renamed into place only when all are complete; the report is written
last and marks the input as done, so a rerun skips it (resume) and a killed run leaves no
half-written stem.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import audio
from .metrics import sdr, si_sdr
from .outputs import StemFiles
from .registry import ModelSpec, get_model, is_present, load_registry
from .report import build_report, write_json
from .search import SearchOptions
from .separate import Separator, pick_device, pick_dtype
from .tokens import save_tokens

PAPER_MODEL = "slakh-drums-bass"
# Window overlap of `lass separate` (cross-faded), chosen by benchmarks/seams.py (docs/quality.md):
# side by side, 1 s frames across a seam lost 1.3 dB of bass SDR against the others; at 0.25 the
# gap is within 1 dB on both stems, for a third more windows (1.07x the time in that run).
DEFAULT_OVERLAP = 0.25


@dataclass(kw_only=True)
class SearchRequest:
    """The model and search settings shared by ``lass separate`` and ``lass evaluate``."""

    model: str | None = None
    registries: tuple[str, ...] = ()
    device: str = "auto"
    dtype: str = "auto"
    sampler: str | None = None  # None here and below: the model's [search] setting, else the default
    beams: int | None = None
    samples: int | None = None
    top_k: int | None = None
    select: str | None = None
    temperature: float = 1.0
    weight: float | None = None
    seed: int = 0
    batch_windows: int | None = None
    normalize: bool = True
    wiener: bool | None = None  # None: the model's setting
    compat: str = "none"
    compile_step: bool = False
    quiet: bool = False

    def search_options(self, device: torch.device, spec: ModelSpec) -> SearchOptions:
        """The search options: what was asked, else the model's ``[search]`` defaults, else
        SearchOptions' own; B defaults to 100 (the paper's) on CUDA and 10 on CPU."""
        asked = {"method": self.sampler, "beams": self.beams, "samples": self.samples, "top_k": self.top_k,
                 "select": self.select}  # fmt: skip
        settings = {**spec.search, **{k: v for k, v in asked.items() if v is not None}}
        settings.setdefault("beams", 100 if device.type == "cuda" else 10)
        return SearchOptions(**settings, temperature=self.temperature, seed=self.seed, compat=self.compat)

    def load_separator(self, spec: ModelSpec, device: torch.device, options: SearchOptions) -> Separator:
        """The model on its device, in the precision :func:`pick_dtype` gives."""
        if self.compile_step and options.compat == "upstream":
            raise ValueError("--compile rounds differently from the original code: not with --compat upstream")
        dtype = pick_dtype(device, self.dtype, options.compat)
        return Separator.load(spec, device, dtype, weight=self.weight, compile_step=self.compile_step)


@dataclass(kw_only=True)
class SeparateRequest(SearchRequest):
    """Everything ``lass separate`` was asked; field names follow the command's options."""

    inputs: list[Path]
    out_dir: str = "separated"
    fmt: str = "wav"
    bits: str = "16"
    mp3_bitrate: str = "320k"
    stems: tuple[str, ...] | None = None  # a subset of the model's stems to write (None: all)
    residual: bool = False  # also write "other" = input - sum of the model's stems
    overlap: float | None = None  # None: DEFAULT_OVERLAP, 0 under --compat upstream
    template: str = "{track}/{stem}.{ext}"
    clip_mode: str = "rescale"
    references: tuple[str, ...] = ()
    save_tokens: str | None = None
    force: bool = False
    as_json: bool = False

    def window_overlap(self, options: SearchOptions) -> float:
        """``--overlap``, else the default: none under ``--compat upstream``, as the original cuts."""
        if self.overlap is not None:
            return self.overlap
        return 0.0 if options.compat == "upstream" else DEFAULT_OVERLAP


def choose_model(models: dict[str, ModelSpec], name: str | None) -> tuple[ModelSpec, str | None]:
    """The named model (``--model``, else ``$LASS_MODEL``), else the paper's model if all its files
    are here, else the first model whose files are all present (the embedded one on a fresh install).
    Returns the model and a notice for stderr when it was chosen for the user."""
    name = name or os.environ.get("LASS_MODEL") or None
    if name:
        return get_model(models, name), None
    paper = models.get(PAPER_MODEL)
    if paper and all(is_present(paper, f) for f in paper.files):
        return paper, f"using model {PAPER_MODEL}"
    for spec in models.values():
        if all(is_present(spec, f) for f in spec.files):
            why = f"; {PAPER_MODEL} is not fetched (run `lass fetch {PAPER_MODEL}`)" if paper else ""
            return spec, f"using model {spec.name}{why}"
    raise ValueError(f"no model has all its files on this machine; run `lass fetch {PAPER_MODEL}`")


RESIDUAL = "other"


def expand_inputs(inputs: list[Path]) -> list[tuple[Path, str]]:
    """Each input file with its track name; a folder gives the audio files under it (recursively,
    sorted), named by their path inside it without the extension, so that the output mirrors it."""
    sources = []
    for item in inputs:
        if not item.is_dir():
            sources.append((item, item.stem))
            continue
        found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in audio.AUDIO_SUFFIXES)
        if not found:
            raise ValueError(f"{item}: no audio files in this folder ({', '.join(audio.AUDIO_SUFFIXES)})")
        sources += [(p, p.relative_to(item).with_suffix("").as_posix()) for p in found]
    return sources


def written_stems(request: SeparateRequest, spec: ModelSpec) -> list[str]:
    """The stems this run writes: ``--stems`` (default all), then ``other`` with ``--residual``."""
    chosen = list(request.stems or spec.stems)
    unknown = [s for s in chosen if s not in spec.stems]
    if unknown or not chosen:
        raise ValueError(f"--stems must name some of {', '.join(spec.stems)}, got {','.join(chosen) or 'none'}")
    if request.residual and RESIDUAL in spec.stems:
        raise ValueError(f"--residual writes {RESIDUAL}, which is already a stem of model {spec.name}")
    return chosen + ([RESIDUAL] if request.residual else [])


def output_paths(request: SeparateRequest, spec: ModelSpec, sources: list[tuple[Path, str]]) -> list[dict[str, Path]]:
    """Per input: stem -> path and 'report' -> path; raises if two inputs would share a path."""
    out = Path(request.out_dir)
    seen: dict[Path, Path] = {}
    plans = []
    files = [*((s, request.fmt) for s in written_stems(request, spec)), ("report", "json")]
    for source, track in sources:
        names = {"track": track, "trackext": source.suffix.lstrip(".")}
        plan = {}
        for stem, ext in files:
            try:
                relative = request.template.format(stem=stem, ext=ext, **names)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"--filename {request.template!r} is not a valid template ({exc})") from None
            path = (out / relative).resolve()
            if path in seen:
                raise ValueError(f"{source} and {seen[path]} would both write {path}; use --filename with {{trackext}}")
            seen[path] = source
            plan[stem] = path
        plans.append(plan)
    return plans


def tokens_paths(request: SeparateRequest, sources: list[tuple[Path, str]]) -> list[Path | None]:
    """Per input, where ``--save-tokens`` writes (``{track}`` in the path names the input)."""
    if not request.save_tokens:
        return [None] * len(sources)
    if "{track}" not in request.save_tokens and len(sources) > 1:
        raise ValueError("--save-tokens needs {track} in its path when there are several inputs")
    paths = [Path(request.save_tokens.replace("{track}", track)) for _, track in sources]
    if len(set(paths)) < len(paths):
        raise ValueError("two inputs would write the same --save-tokens file")
    return paths


def parse_references(request: SeparateRequest, stems: tuple[str, ...]) -> dict[str, Path]:
    references = {}
    for item in request.references:
        stem, sep, path = item.partition("=")
        if not sep or stem not in stems:
            raise ValueError(f"--reference {item!r} must be STEM=PATH with STEM one of {', '.join(stems)}")
        references[stem] = Path(path)
    if references and (len(request.inputs) != 1 or request.inputs[0].is_dir()):
        raise ValueError("--reference needs exactly one input")
    return references


class Progress:
    """A rich progress display on a terminal; silent otherwise."""

    def __init__(self, enabled: bool, files: int) -> None:
        self._bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), transient=True)  # fmt: skip
        self._bar.start()
        self._files = self._bar.add_task("files", total=files)
        self._steps = self._bar.add_task("tokens", total=None)

    def start_file(self, name: str) -> None:
        if self._bar:
            self._bar.update(self._steps, description=f"{name}: tokens", completed=0, total=None)

    def step(self, done: int, total: int) -> None:
        if self._bar:
            self._bar.update(self._steps, completed=done, total=total)

    def end_file(self, count: int = 1) -> None:
        if self._bar:
            self._bar.advance(self._files, count)

    def close(self) -> None:
        if self._bar:
            self._bar.stop()


class TaskProgress:
    """A rich progress bar with ETA over a batch job's items, on a terminal; silent otherwise."""

    def __init__(self, enabled: bool, description: str) -> None:
        self._bar, self._description = None, description
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), transient=True)  # fmt: skip

    def start(self, total: int, done: int) -> None:
        if self._bar:
            self._bar.start()
            self._task = self._bar.add_task(self._description, total=total, completed=done)

    def advance(self, count: int) -> None:
        if self._bar:
            self._bar.advance(self._task, count)

    def close(self) -> None:
        if self._bar:
            self._bar.stop()


def _notice(request: SeparateRequest, message: str) -> None:
    if not request.quiet:
        print(f"lass: {message}", file=sys.stderr)


@dataclass
class _Input:
    """An input read and waiting for its search, with where its outputs go."""

    source: Path
    plan: dict[str, Path]
    tokens_path: Path | None
    mono: np.ndarray
    rate: int
    channels: int
    samples: int
    windows: int  # how many the separator cuts from it


def _read_input(
    request: SeparateRequest, separator: Separator, options: SearchOptions, source: Path, plan: dict[str, Path],
    tokens_path: Path | None,
) -> _Input:  # fmt: skip
    mix, rate = audio.load(source)
    channels, samples = mix.shape
    mono = audio.to_mono(mix)  # only the mono is kept (a view of a one-channel input)
    windows = separator.windows_of(samples, rate, request.window_overlap(options))
    return _Input(source, plan, tokens_path, mono, rate, channels, samples, windows)


class _Staged:
    """One input's stems as they are separated: float32 staging files in a hidden folder under
    ``--out`` (with the residual, what the stems leave of the input), renamed into place all
    together when every stem is complete; the folder goes in any case."""

    def __init__(self, request: SeparateRequest, item: _Input, references: dict[str, Path]) -> None:
        self.request, self.item, self.references = request, item, references
        self.written = [stem for stem in item.plan if stem != "report"]
        out_root = Path(request.out_dir)
        out_root.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=".lass-partial-", dir=out_root))
        self.files = StemFiles(self.folder, list(dict.fromkeys([*self.written, *references])), item.rate)
        self.done = 0

    def sink(self, blocks: dict[str, np.ndarray]) -> None:
        count = len(next(iter(blocks.values())))
        if self.request.residual:  # what the stems leave of the input, so that all of them add up to it
            blocks = {**blocks, RESIDUAL: self.item.mono[self.done : self.done + count] - sum(blocks.values())}
        self.done += count
        self.files.write(blocks)

    def place(self) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """Finish the stems, score them against the references and rename them into place (all of
        them or none); returns their peaks and the metrics."""
        request, item, placed = self.request, self.item, []
        try:
            metrics = {}
            for stem, path in self.references.items():
                reference, reference_rate = audio.load(path)
                estimate = self.files.read(stem)
                truth = audio.resample(audio.to_mono(reference), reference_rate, item.rate)
                truth = audio.fit_length(truth, len(estimate))
                metrics[stem] = {"sdr": round(sdr(truth, estimate), 3), "si_sdr": round(si_sdr(truth, estimate), 3)}
            peaks = {stem: self.files.peaks[stem] for stem in self.written}
            finished = self.files.finish(self.written, request.fmt, request.bits, request.mp3_bitrate,
                                         request.clip_mode)  # fmt: skip
            for stem in self.written:
                item.plan[stem].parent.mkdir(parents=True, exist_ok=True)
                finished[stem].replace(item.plan[stem])
                placed.append(item.plan[stem])
        except BaseException:
            for path in placed:
                path.unlink(missing_ok=True)
            raise
        return peaks, metrics

    def remove(self) -> None:
        self.files.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _separate_inputs(
    request: SeparateRequest, separator: Separator, options: SearchOptions, items: list[_Input],
    references: dict[str, Path], progress: Progress,
) -> list[dict[str, Any]]:  # fmt: skip
    """Separate one input, streamed in batches of windows, or several short ones searched together
    (:meth:`Separator.separate_together`); write their stems, tokens and reports."""
    staged: list[_Staged] = []
    try:
        for item in items:
            staged.append(_Staged(request, item, references))
        settings = {"normalize": request.normalize, "wiener": request.wiener,
                    "overlap": request.window_overlap(options),
                    "keep_tokens": any(item.tokens_path for item in items)}  # fmt: skip
        if len(items) == 1:
            item = items[0]
            outcomes = [separator.separate(item.mono[None], item.rate, options, progress.step, request.batch_windows,
                                           sink=staged[0].sink, **settings)]  # fmt: skip
        else:
            mixes = [(item.mono[None], item.rate) for item in items]
            outcomes = separator.separate_together(mixes, options, progress.step, sinks=[s.sink for s in staged],
                                                   **settings)  # fmt: skip
        for stage in staged:
            stage.files.close()
        placed = [stage.place() for stage in staged]
    finally:
        for stage in staged:
            stage.remove()
    return [_write_report(request, separator, options, item, details, peaks, metrics)
            for item, (_, details), (peaks, metrics) in zip(items, outcomes, placed)]  # fmt: skip


def _write_report(
    request: SeparateRequest, separator: Separator, options: SearchOptions, item: _Input, details: dict[str, Any],
    peaks: dict[str, float], metrics: dict[str, dict[str, float]],
) -> dict[str, Any]:  # fmt: skip
    written = [stem for stem in item.plan if stem != "report"]
    chosen_tokens = details.pop("tokens", None)
    if item.tokens_path is not None:
        step = details["windows"]["step_samples"]
        save_tokens(item.tokens_path, chosen_tokens, separator, options, item.rate, item.samples, details["level"],
                    step)  # fmt: skip
    plan, tokens_path = item.plan, item.tokens_path
    report = build_report(
        input={"path": str(item.source), "sample_rate": item.rate, "channels": item.channels, "samples": item.samples,
               "duration_s": round(item.samples / item.rate, 4)},
        model=separator.describe(),
        settings={**asdict(options), "lambda": separator.likelihood.weight, "format": request.fmt,
                  "bits": request.bits, "clip_mode": request.clip_mode, "stems": list(written),
                  **({"mp3_bitrate": request.mp3_bitrate} if request.fmt == "mp3" else {})},
        device=str(separator.device),
        dtype=str(separator.dtype).removeprefix("torch."),
        compiled=separator.compiled,
        outputs={stem: str(plan[stem]) for stem in written} | ({"tokens": str(tokens_path)} if tokens_path else {}),
        peaks=peaks,
        **details,
        metrics=metrics,
    )  # fmt: skip
    write_json(plan["report"], report)
    return report


def run_separate(request: SeparateRequest) -> dict[str, Any]:
    """Separate every input; failures of one input are recorded and the others go on."""
    models = load_registry(list(request.registries))
    spec, notice = choose_model(models, request.model)
    if notice:
        _notice(request, notice)
    sources = expand_inputs(request.inputs)
    plans = output_paths(request, spec, sources)
    token_files = tokens_paths(request, sources)
    references = parse_references(request, spec.stems)
    device = pick_device(request.device)
    options = request.search_options(device, spec)
    separator = request.load_separator(spec, device, options)
    progress = Progress(sys.stderr.isatty() and not request.quiet and not request.as_json, len(sources))
    results: list[dict[str, Any]] = [{"input": str(source), "report": str(plan["report"])}
                                     for (source, _), plan in zip(sources, plans)]  # fmt: skip
    # Short inputs wait here until their windows fill a search: one batch of windows at most, and
    # never with --compat upstream (which searches a short last window alone).
    room = separator.default_batch_windows(options) if request.batch_windows is None else request.batch_windows
    pack = options.compat == "none"
    pending: list[tuple[int, _Input, float]] = []

    def run(group: list[tuple[int, _Input, float]]) -> None:
        names = [item.source.name for _, item, _ in group]
        progress.start_file(names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else ""))
        started = time.perf_counter()
        try:
            reports = _separate_inputs(request, separator, options, [item for _, item, _ in group], references,
                                       progress)  # fmt: skip
            for (index, _, _), report in zip(group, reports):
                results[index].update(status="done", outputs=report["outputs"], metrics=report["metrics"])
        except (audio.AudioError, OSError, ValueError) as exc:
            for index, item, _ in group:
                message = str(exc) if isinstance(exc, audio.AudioError) else f"{item.source}: {exc}"
                results[index].update(status="failed", error=message)
                print(f"lass: error: {message}", file=sys.stderr)
        # Inputs searched together share the search's time by their windows.
        elapsed, windows = time.perf_counter() - started, sum(item.windows for _, item, _ in group)
        for index, item, reading in group:
            results[index]["seconds"] = round(reading + elapsed * item.windows / windows, 3)
        progress.end_file(len(group))

    try:
        for index, ((source, _), plan, tokens_path) in enumerate(zip(sources, plans, token_files)):
            entry = results[index]
            started = time.perf_counter()
            try:
                existing = [p for p in [*plan.values(), tokens_path] if p is not None and p.exists()]
                if plan["report"].exists() and not request.force:
                    entry.update(status="skipped", seconds=0.0)
                    progress.end_file()
                    continue
                if existing and not request.force:
                    raise FileExistsError(f"{existing[0]} exists (use --force to overwrite)")
                item = _read_input(request, separator, options, source, plan, tokens_path)
            except (audio.AudioError, OSError, ValueError) as exc:
                message = str(exc) if isinstance(exc, audio.AudioError) else f"{source}: {exc}"
                entry.update(status="failed", error=message, seconds=round(time.perf_counter() - started, 3))
                print(f"lass: error: {message}", file=sys.stderr)
                progress.end_file()
                continue
            if pending and (not pack or sum(i.windows for _, i, _ in pending) + item.windows > room):
                run(pending)
                pending = []
            pending.append((index, item, time.perf_counter() - started))
            if not pack or sum(i.windows for _, i, _ in pending) >= room:
                run(pending)
                pending = []
        if pending:
            run(pending)
    finally:
        progress.close()
    failed = sum(r["status"] == "failed" for r in results)
    return {
        "ok": failed == 0,
        "model": spec.name,
        "device": str(device),
        "done": sum(r["status"] == "done" for r in results),
        "skipped": sum(r["status"] == "skipped" for r in results),
        "failed": failed,
        "inputs": results,
    }


__all__ = ["SearchRequest", "SeparateRequest", "TaskProgress", "choose_model", "run_separate"]
