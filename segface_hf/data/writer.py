"""Run a [`BuildPlan`] and write the dataset folder: parquet shards, card, label map and build report.

The folder is assembled in a hidden temporary sibling of the output folder and renamed into place only once it is
complete, so a failed or interrupted build leaves no partial output behind.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .card import render_card
from .labels import ID2LABEL_FILE
from .common import EMPTY_SPLIT, KEPT, SKIPPED, UNKNOWN_LABEL_VALUES, BuildPlan, Problem, SampleOutcome

REPORT_FILE = "build_report.json"
DATA_DIR = "data"
DEFAULT_MAX_SHARD_BYTES = 500 * 2**20
ROWS_PER_ROW_GROUP = 100
MAX_ROW_GROUP_BYTES = 64 * 2**20


@dataclass
class BuildSummary:
    """What a build wrote.

    Args:
        output_dir (`Path`):
            The dataset folder.
        split_rows (`dict[str, int]`):
            Rows written per split.
        skipped (`dict[str, int]`):
            Samples skipped per split.
        problems_by_kind (`dict[str, int]`):
            Report entries per kind.
        report_path (`Path`):
            The build report.
    """

    output_dir: Path
    split_rows: dict[str, int]
    skipped: dict[str, int]
    problems_by_kind: dict[str, int] = field(default_factory=dict)
    report_path: Path | None = None

    def __str__(self) -> str:
        counts = ", ".join(f"{split} {rows:,}" for split, rows in self.split_rows.items())
        text = f"Wrote {self.output_dir} ({counts})."
        total_skipped = sum(self.skipped.values())
        if self.problems_by_kind:
            kinds = ", ".join(f"{number:,} {kind}" for kind, number in sorted(self.problems_by_kind.items()))
            text += f" Skipped {total_skipped:,} samples; report entries: {kinds}; see {self.report_path}."
        return text


class _SplitWriter:
    """Writes the rows of one split into parquet shards of at most `max_shard_bytes` (Arrow size)."""

    def __init__(self, folder: Path, split: str, features, max_shard_bytes: int):
        self.folder = folder
        self.split = split
        self.features = features
        self.schema = features.arrow_schema
        self.max_shard_bytes = max_shard_bytes
        self.buffer: list[dict[str, Any]] = []
        self.buffer_bytes = 0
        self.writer: pq.ParquetWriter | None = None
        self.shard_bytes = 0
        self.shards: list[Path] = []
        self.num_rows = 0
        self.num_bytes = 0

    def add(self, row: dict[str, Any]) -> None:
        self.buffer.append(self.features.encode_example(row))
        self.buffer_bytes += sum(len(v["bytes"]) for v in row.values() if isinstance(v, dict) and "bytes" in v)
        if len(self.buffer) >= ROWS_PER_ROW_GROUP or self.buffer_bytes >= MAX_ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        table = pa.Table.from_pylist(self.buffer, schema=self.schema)
        self.buffer, self.buffer_bytes = [], 0
        if self.writer is None:
            path = self.folder / f"{self.split}-{len(self.shards):05d}.parquet.partial"
            self.shards.append(path)
            self.writer = pq.ParquetWriter(path, self.schema)
            self.shard_bytes = 0
        self.writer.write_table(table, row_group_size=table.num_rows)
        self.shard_bytes += table.nbytes
        self.num_bytes += table.nbytes
        self.num_rows += table.num_rows
        if self.shard_bytes >= self.max_shard_bytes:
            self.writer.close()
            self.writer = None

    def close(self) -> list[Path]:
        """Flush, close and give the shards their final `<split>-<i>-of-<n>.parquet` names."""
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        final = []
        for index, path in enumerate(self.shards):
            target = self.folder / f"{self.split}-{index:05d}-of-{len(self.shards):05d}.parquet"
            path.rename(target)
            final.append(target)
        return final


def _check_output_dir(output_dir: Path, input_dirs: list[Path], overwrite: bool) -> None:
    for input_dir in input_dirs:
        if input_dir.is_relative_to(output_dir):
            raise ValueError(f"the output folder {output_dir} must not contain the input folder {input_dir}.")
        if output_dir.is_relative_to(input_dir):
            raise ValueError(f"the output folder {output_dir} must not lie inside the input folder {input_dir}.")
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder.")
    if not any(output_dir.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass --overwrite (overwrite=True) to replace it.")
    if not (output_dir / REPORT_FILE).is_file():
        raise FileExistsError(
            f"refusing to replace {output_dir}: it is not a folder written by this builder (no {REPORT_FILE})."
        )


def _outcomes(plan: BuildPlan, tasks: list, pool, workers: int) -> Iterator[SampleOutcome]:
    if pool is None:
        for task in tasks:
            yield plan.process(task)
    else:
        chunksize = max(1, min(32, len(tasks) // (8 * workers)))
        yield from pool.imap(plan.process, tasks, chunksize=chunksize)


def _unknown_values(histogram: np.ndarray, known: set[int]) -> list[int]:
    return [int(value) for value in np.flatnonzero(histogram) if int(value) not in known]


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _move_into_place(staging: Path, output_dir: Path) -> None:
    if output_dir.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
        retired.rmdir()
        output_dir.rename(retired)
        try:
            staging.rename(output_dir)
        except BaseException:
            retired.rename(output_dir)
            raise
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(output_dir)


def write_dataset(
    plan: BuildPlan,
    output_dir: str | Path,
    *,
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> BuildSummary:
    """Process every sample of `plan` and write a folder that `datasets.load_dataset` loads.

    The folder holds `data/<split>-<i>-of-<n>.parquet`, `README.md` (dataset card with Hub metadata),
    `id2label.json` and `build_report.json` (every skipped or questionable file, with the reason).

    Args:
        plan (`BuildPlan`):
            From `plan_celebamask_hq`, `plan_lapa`, `plan_helen` or `plan_folder`.
        output_dir (`str` or `Path`):
            Folder to create. Must be absent or empty unless `overwrite` is set.
        num_proc (`int`, *optional*, defaults to 1):
            Worker processes for reading, checking and encoding samples.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace an existing output folder written by this builder (only once the new one is complete).
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar per split.
        max_shard_bytes (`int`, *optional*, defaults to 500 MiB):
            Start a new parquet file once a shard holds this much Arrow data.

    Returns:
        [`BuildSummary`]: rows per split, skip counts and the report location.

    Raises:
        `FileExistsError`: the output folder is in the way.
        `ValueError`: no sample could be used, or the output folder overlaps the raw folder.
    """
    output_dir = Path(output_dir).expanduser().resolve()
    input_dirs = [Path(p).resolve() for p in plan.sources.values() if Path(p).is_dir()] or [
        Path(plan.raw_dir).resolve()
    ]
    _check_output_dir(output_dir, input_dirs, overwrite)
    if num_proc < 1:
        raise ValueError(f"num_proc must be at least 1, got {num_proc}.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        staging.chmod(0o777 & ~_current_umask())  # mkdtemp makes it private; give it a normal folder's mode
        summary = _write(plan, staging, output_dir, num_proc, progress, max_shard_bytes)
        _move_into_place(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _write(
    plan: BuildPlan, staging: Path, output_dir: Path, num_proc: int, progress: bool, max_shard_bytes: int
) -> BuildSummary:
    from .. import __version__

    data_dir = staging / DATA_DIR
    data_dir.mkdir()
    known = set(plan.id2label) | ({plan.ignore_index} if plan.ignore_index is not None else set())
    problems: list[Problem] = list(plan.problems)
    split_rows: dict[str, int] = {}
    split_bytes: dict[str, int] = {}
    skipped: dict[str, int] = {}
    histograms: dict[str, np.ndarray] = {}
    listed = {split: len(tasks) for split, tasks in plan.splits.items()}
    omitted = []

    total = sum(listed.values())
    workers = min(num_proc, max(1, total))
    pool = multiprocessing.get_context().Pool(workers) if workers > 1 else None
    try:
        for split, tasks in plan.splits.items():
            writer = _SplitWriter(data_dir, split, plan.features, max_shard_bytes)
            histogram = np.zeros(256, dtype=np.int64)
            skipped[split] = 0
            with tqdm(total=len(tasks), desc=f"{plan.name} {split}", unit="sample", disable=not progress) as bar:
                for outcome in _outcomes(plan, tasks, pool, workers):
                    for problem in outcome.problems:
                        problem.split = split
                    problems.extend(outcome.problems)
                    if outcome.row is None:
                        skipped[split] += 1
                    else:
                        writer.add(outcome.row)
                        sample_histogram = outcome.label_histogram
                        if len(sample_histogram) > len(histogram):
                            histogram = np.pad(histogram, (0, len(sample_histogram) - len(histogram)))
                        histogram[: len(sample_histogram)] += sample_histogram
                        if unknown := _unknown_values(sample_histogram, known):
                            problems.append(
                                Problem(
                                    kind=UNKNOWN_LABEL_VALUES,
                                    action=KEPT,
                                    detail=f"label values {unknown} are not in the label map",
                                    id=outcome.id,
                                    split=split,
                                )
                            )
                    bar.update(1)
            shards = writer.close()
            if not shards:
                omitted.append(split)
                problems.append(
                    Problem(kind=EMPTY_SPLIT, action=SKIPPED, detail="no usable sample; split left out", split=split)
                )
                continue
            split_rows[split] = writer.num_rows
            split_bytes[split] = writer.num_bytes
            histograms[split] = histogram
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()

    problems_by_kind = dict(sorted(Counter(problem.kind for problem in problems).items()))
    if not split_rows:
        kinds = ", ".join(f"{number} {kind}" for kind, number in problems_by_kind.items() if kind != EMPTY_SPLIT)
        raise ValueError(f"no usable sample in {plan.raw_dir} ({total} listed; {kinds or 'none listed'}).")

    download_size = sum(path.stat().st_size for path in data_dir.iterdir())
    (staging / "README.md").write_text(
        render_card(plan, split_rows, split_bytes, download_size, histograms, skipped, problems_by_kind),
        encoding="utf-8",
    )
    (staging / ID2LABEL_FILE).write_text(
        json.dumps({str(value): name for value, name in plan.id2label.items()}, indent=2) + "\n", encoding="utf-8"
    )
    report = {
        "builder": plan.name,
        "segface_hf_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": plan.sources,
        "id2label": {str(value): name for value, name in plan.id2label.items()},
        "ignore_index": plan.ignore_index,
        "splits": {
            split: {"listed": listed[split], "written": split_rows.get(split, 0), "skipped": skipped[split]}
            for split in plan.splits
        },
        "omitted_splits": omitted,
        "skipped": sum(skipped.values()),
        "problems_by_kind": problems_by_kind,
        "problems": [problem.to_dict() for problem in problems],
    }
    (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return BuildSummary(
        output_dir=output_dir,
        split_rows=split_rows,
        skipped=skipped,
        problems_by_kind=problems_by_kind,
        report_path=output_dir / REPORT_FILE,
    )
