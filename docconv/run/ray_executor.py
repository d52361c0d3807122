"""``--ray``: the local pipeline's stages, executed by Ray Data across a cluster.

The driver keeps everything a local run does around the engine: it starts each document
(skips existing outputs, opens its journal, picks the pages still to do), finishes each page
(figures, journal, progress) and writes each output atomically once its document is complete,
all through :class:`~docconv.run.pipeline.Pipeline`. Ray Data runs the stages in between:

    page rows -> render (CPU tasks) -> read (actor pool, one engine per actor) -> figures (CPU tasks)

Pages finish in any order; the driver journals each one as it arrives, so a killed run, rerun,
reads only the pages its journal lacks. Ray Data restarts an actor that dies and retries its
batch, so a lost worker loses no page; a page the engine raises on comes back as a failure and
is reported like in a local run.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
from PIL import Image

from docconv.engines.base import EngineError
from docconv.output import writers
from docconv.output.raw import RAW_SUFFIX
from docconv.run.options import ConvertOptions
from docconv.run.pipeline import DocumentRun, Pipeline, load_engine, render_page
from docconv.run.progress import Reporter, RunSummary
from docconv.run.reading import PageRead, PageReader
from docconv.sources.inputs import InputDocument, InputError
from docconv.sources.pages import open_document

log = logging.getLogger("docconv.run.ray_executor")

#: ``--ray local``: start a Ray instance on this machine for the run.
LOCAL = "local"
#: CPUs each OCR actor reserves, and each page render. Unequal on purpose: Ray Data fuses stages
#: whose resources are equal, which would move rendering into the OCR actors instead of CPU tasks.
READ_CPUS = 1.0
RENDER_CPUS = 0.5
#: What to install when ``import ray`` fails.
INSTALL_HINT = "pip install 'docconv[ray]'"


class RayUnavailable(RuntimeError):
    """Ray (with Ray Data) is not installed."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run: ``--ray``, ``--ray-workers``, ``--ray-gpus-per-worker``."""

    address: str  # local | auto | ray://host:port | host:port
    workers: int = 1  # OCR actors, each with its own engine
    gpus_per_worker: float = 0.0
    #: -o as an fsspec URL (s3://bucket/out/): the run writes into ``options.output``, a local
    #: staging directory holding the journals, and uploads each document once it is complete.
    output_url: str | None = None


def is_url(output: str) -> bool:
    """Whether ``-o`` names an fsspec URL (``s3://...``, ``file:///...``) rather than a local path."""
    return "://" in output


def staging_directory(url: str) -> Path:
    """The local directory a run to ``url`` writes and journals in: the same for every rerun of it,
    so a killed run's journals are found again."""
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return Path(platformdirs.user_cache_dir("docconv")) / "ray-staging" / digest


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or :class:`RayUnavailable` naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra is ray[data]; bare ray lacks it)
    except ImportError as error:
        raise RayUnavailable(f"--ray needs Ray Data ({error}); install it with {INSTALL_HINT}") from None
    return ray


# ---------------------------------------------------------------- the stages (run on workers)


def render_stage(row: dict[str, Any], documents: Sequence[InputDocument], options: ConvertOptions) -> dict:
    """CPU task: page ``row['index']`` of document ``row['doc']`` rendered as the engine will see it."""
    document = documents[row["doc"]]
    no_image = np.zeros((0, 0, 3), dtype=np.uint8)
    rendered = {"doc": row["doc"], "index": row["index"], "image": no_image, "text_layer": "", "error": ""}
    try:
        source = open_document(document, options.password)
        try:
            image, text_layer = render_page(source, row["index"], options)
        finally:
            source.close()
    except InputError as error:
        rendered["error"] = f"page {row['index'] + 1}: {error}"
        return rendered
    rendered["image"] = np.asarray(image)
    rendered["text_layer"] = text_layer or ""
    return rendered


class ReadStage:
    """Actor: one engine, loaded once; reads a batch of rendered pages like the local pipeline."""

    def __init__(self, options: ConvertOptions) -> None:
        self.options = options
        self.engine_error = ""
        try:
            engine = load_engine(options.engine)
        except EngineError as error:
            # Reported to the driver with each batch (exit 3 there), not retried as a dead actor.
            self.engine_error = str(error)
        else:
            self.reader = PageReader(options, lambda: engine)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        results: list[bytes | None] = [None] * len(batch["doc"])  # None: not read (see the errors)
        works = []
        for row, (image, text_layer, error) in enumerate(
            zip(batch["image"], batch["text_layer"], batch["error"], strict=True)
        ):
            if error or self.engine_error:
                continue
            picture = Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB")
            mode = self.reader.choose_mode(picture, str(text_layer) or None).mode
            works.append(self.reader.work(row, int(batch["index"][row]), picture, mode))
        if works:
            for work, read in zip(works, self.reader.read(works), strict=True):
                results[work.tag] = pickle.dumps(read)
        return {
            "doc": list(batch["doc"]),
            "index": list(batch["index"]),
            "image": list(batch["image"]),
            "read": results,
            "error": list(batch["error"]),
            "engine_error": [self.engine_error] * len(results),
        }


def figures_stage(row: dict[str, Any], link_prefixes: Sequence[str | None]) -> dict:
    """CPU task: the page's figure crops (PNG bytes), so the driver only writes files."""
    crops: dict[str, bytes] = {}
    read: PageRead | None = pickle.loads(row["read"]) if row["read"] else None
    prefix = link_prefixes[row["doc"]]
    if read is not None and read.page is not None and prefix is not None:
        image = Image.fromarray(np.asarray(row["image"], dtype=np.uint8), "RGB")
        crops = writers.figure_crops(read.page, image, prefix)
    return {
        "doc": row["doc"],
        "index": row["index"],
        "result": pickle.dumps((read, crops)),
        "error": row["error"],
        "engine_error": row["engine_error"],
    }


# ---------------------------------------------------------------- the driver


class RayExecutor:
    """Runs ``documents`` on Ray with ``options``; the bookkeeping is a :class:`Pipeline`'s."""

    def __init__(self, options: ConvertOptions, ray_options: RayOptions, reporter: Reporter) -> None:
        self.options = options
        self.ray_options = ray_options
        self.reporter = reporter
        self.remote = RemoteOutputs(ray_options.output_url, options) if ray_options.output_url else None
        if self.remote is None:
            self.pipeline = Pipeline(options, reporter)
        else:
            self.pipeline = Pipeline(
                options, reporter, output_exists=self.remote.exists, on_written=self.remote.upload
            )

    def run(self, documents: Sequence[InputDocument]) -> RunSummary:
        """Convert ``documents``; raises EngineError (no engine can start) and KeyboardInterrupt."""
        ray = import_ray()
        started_here = self._connect(ray)
        pipeline = self.pipeline
        self.reporter.start_run(len(documents))
        try:
            runs = [pipeline.start_document(document) for document in documents]
            rows = [
                {"doc": key, "index": index}
                for key, run in enumerate(runs)
                if run is not None
                for index in run.indices
                if index + 1 not in run.pages
            ]
            for run in runs:
                if run is not None:
                    pipeline.finish_if_complete(run)  # all pages already journaled
            self.reporter.start_pages(
                sum(len(run.indices) for run in runs if run is not None),
                sum(run.resumed for run in runs if run is not None),
            )
            if rows:
                for row in self._results(ray, documents, runs, rows):
                    self._finish(runs[row["doc"]], row)
        finally:
            pipeline.close_open_runs()
            if started_here:
                ray.shutdown()
        return pipeline.summary

    def _connect(self, ray: Any) -> bool:
        """Join (or for ``local`` start) Ray; True when this run started it and must stop it."""
        if not log.isEnabledFor(logging.DEBUG):
            # Ray Data's notes (execution plans, log locations) would interleave with docconv's
            # progress; -vv shows them.
            logging.getLogger("ray").setLevel(logging.ERROR)
        if ray.is_initialized():
            return False  # an in-process caller (a notebook, the tests) already joined a cluster
        address = self.ray_options.address
        quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        try:
            ray.init(**quiet) if address == LOCAL else ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise EngineError(f"cannot start or join Ray at {address!r}: {error}") from None
        return True

    def _results(
        self,
        ray: Any,
        documents: Sequence[InputDocument],
        runs: Sequence[DocumentRun | None],
        rows: list[dict],
    ) -> Iterator[dict]:
        options, ray_options = self.options, self.ray_options
        link_prefixes = [
            writers.figure_location(run.target)[1] if run is not None and run.target is not None else None
            for run in runs
        ]
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver draws docconv's own progress
        context.preserve_order = False
        dataset = (
            ray.data.from_items(rows, override_num_blocks=len(rows))
            .map(
                render_stage,
                fn_kwargs={"documents": list(documents), "options": options},
                num_cpus=RENDER_CPUS,
            )
            .map_batches(
                ReadStage,
                fn_constructor_args=(options,),
                # Ray cuts batches before any actor has seen its device: GPU workers want --batch-size.
                batch_size=options.batch_size or 1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=ray_options.workers),
                num_cpus=READ_CPUS,
                num_gpus=ray_options.gpus_per_worker or None,
            )
            .map(figures_stage, fn_kwargs={"link_prefixes": link_prefixes})
        )
        yield from dataset.iter_rows()

    def _finish(self, run: DocumentRun | None, row: dict) -> None:
        if run is None or run.failed:
            return
        if row["engine_error"]:
            raise EngineError(str(row["engine_error"]))  # the actors' engine cannot start: exit 3
        read, crops = pickle.loads(row["result"])
        if read is None:  # the page could not be rendered
            self.pipeline.fail_document(run, str(row["error"]))
            return
        self.pipeline.finish_read(run, int(row["index"]), read, figure_crops=crops)


class RemoteOutputs:
    """``-o URL``: outputs staged in ``options.output`` and uploaded through fsspec, a document
    at a time, its main output last (so an output that exists there is complete)."""

    def __init__(self, url: str, options: ConvertOptions) -> None:
        try:
            import fsspec
        except ImportError:
            raise RayUnavailable(f"-o {url} needs fsspec; install it with {INSTALL_HINT}") from None
        assert options.output is not None
        self.staging = options.output
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")

    def remote_path(self, staged: Path) -> str:
        relative = staged.relative_to(self.staging).as_posix()
        return self.root if relative == "." else f"{self.root}/{relative}"

    def exists(self, target: Path) -> bool:
        return bool(self.fs.exists(self.remote_path(target)))

    def upload(self, target: Path) -> None:
        """Send ``target``'s document (output, raw file, table CSVs, figures), then drop the staged copies."""
        images_dir = writers.figure_location(target)[0]
        companions = [
            *target.parent.glob(f"{glob.escape(target.stem)}_p*_t*.csv"),
            target.with_name(target.stem + RAW_SUFFIX),
            *(images_dir.rglob("*") if images_dir.is_dir() else []),
        ]
        for path in [*(p for p in companions if p.is_file()), target]:
            self.fs.makedirs(self.remote_path(path.parent), exist_ok=True)
            self.fs.put_file(str(path), self.remote_path(path))
        for path in [*(p for p in companions if p.is_file()), target]:
            path.unlink()
