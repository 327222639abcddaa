"""Bulk parsing machinery behind `segface predict`: resuming, splitting the inputs between processes, and one
progress bar for all of them.

- **Resume.** Each process appends one JSON line per finished input to its own summary shard
  (`summary-shard-<rank>.jsonl` in the output folder), right after that input's outputs were moved into place. A
  later run reads `summary.json` and every shard, and skips the inputs whose record says `ok` and whose outputs are
  all on disk. A line cut short by a kill is ignored, so a killed run loses at most the inputs in flight.
- **Processes.** Under `accelerate launch` (or `torchrun`), every process reads the same state from disk, waits for
  the others, then takes every `world_size`-th input still to do, starting at its rank. At the end the processes
  wait for each other (up to `PROCESS_GROUP_TIMEOUT`) and the main process merges the shards into `summary.json` and
  removes them; shards left by a process that gave up waiting are merged by the next run.
- **Progress.** Each shard line carries how many inputs it adds to the progress: a record counts one, unless the
  input was counted when it was parsed (a row that the dataset writer holds until its parquet shard is written, and
  records only then). The main process sums what all shards gained and shows that global count.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ..errors import SegFaceError

SUMMARY_NAME = "summary.json"
SHARD_PREFIX = "summary-shard-"
SHARD_SUFFIX = ".jsonl"

PROCESS_GROUP_TIMEOUT = timedelta(hours=24)
"""How long a process waits for the others in a barrier; at the end of a run, that is for the slowest share. The
defaults of `torch.distributed` (10 minutes with NCCL, 30 with gloo) would end a run whose shares take unevenly long
(one process got the long videos, or the images with many faces) before the shards are merged."""


# ------------------------------------------------------------------------------------------------ processes


class SegFaceLaunchError(SegFaceError, ValueError):
    """Processes were launched that do not form one run."""


@dataclass
class SegFaceProcesses:
    """Where this process stands among the processes of one launch.

    Attributes:
        rank (`int`): this process's index among all processes (0 is the main process).
        world_size (`int`): the number of processes.
        local_rank (`int`): its index on this machine (picks its GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    _state: object | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wait_for_everyone(self) -> None:
        """A barrier across all processes (nothing to wait for in a single process)."""
        if self._state is not None:
            self._state.wait_for_everyone()

    def device(self, requested: str) -> str:
        """The device this process runs on: `cuda` becomes `cuda:<local_rank>` when several processes share a
        machine."""
        if requested == "cuda" and self.world_size > 1:
            return f"cuda:{self.local_rank}"
        return requested

    def take(self, items: Iterable) -> Iterator:
        """This process's share of `items`: every `world_size`-th one, starting at `rank`."""
        for index, item in enumerate(items):
            if index % self.world_size == self.rank:
                yield item


def current_processes() -> SegFaceProcesses:
    """The processes of this launch: read from the environment that `accelerate launch` / `torchrun` set (through
    accelerate's `PartialState`, which joins the process group: NCCL on GPUs, gloo on CPUs, waiting up to
    `PROCESS_GROUP_TIMEOUT` in each barrier), or a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SegFaceProcesses()
    import torch

    try:
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env
    except ImportError as error:
        raise SegFaceLaunchError(
            f'{world_size} processes were launched; joining them needs accelerate: pip install "segface-hf[bulk]".'
        ) from error

    # Without a GPU, join the processes over gloo (what ACCELERATE_USE_CPU=1 asks accelerate for).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available(),
                         timeout=PROCESS_GROUP_TIMEOUT)  # fmt: skip
    if state.num_processes != world_size:
        raise SegFaceLaunchError(
            f"{world_size} processes were launched but accelerate runs them as {state.num_processes} independent "
            "run(s), which would parse every input in each; launch with accelerate launch --multi_gpu "
            "--num_processes N -m segface_hf.cli predict ... (or torchrun)."
        )
    return SegFaceProcesses(rank=state.process_index, world_size=state.num_processes,
                            local_rank=state.local_process_index, _state=state)  # fmt: skip


# ------------------------------------------------------------------------------------------------ summary shards


def shard_path(output_dir: Path, rank: int) -> Path:
    return output_dir / f"{SHARD_PREFIX}{rank:05d}{SHARD_SUFFIX}"


def shard_paths(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}"))


def read_shard(path: Path, offset: int = 0) -> list[tuple[int, dict]]:
    """The `(sequence, record)` pairs of one shard (from byte `offset` on); a line cut short by a kill is skipped."""
    entries = []
    with open(path, "rb") as stream:
        stream.seek(offset)
        for line in stream:
            try:
                entry = json.loads(line)
                entries.append((int(entry["seq"]), entry["record"]))
            except (ValueError, KeyError, TypeError):
                continue
    return entries


def read_counts(path: Path, offset: int = 0) -> dict[str, int]:
    """The counts [`SegFaceSummaryShard.append_count`] wrote into one shard from byte `offset` on, summed by name."""
    counts: dict[str, int] = {}
    with open(path, "rb") as stream:
        stream.seek(offset)
        for line in stream:
            try:
                for name, value in json.loads(line)["count"].items():
                    counts[name] = counts.get(name, 0) + int(value)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
    return counts


def previous_records(output_dir: Path) -> dict[str, dict]:
    """The latest record of every input an earlier run (or a killed one) finished: `summary.json` first, then the
    shard lines in the order they were written (a later line wins)."""
    records: dict[str, dict] = {}
    summary_path = output_dir / SUMMARY_NAME
    if summary_path.is_file():
        try:
            for record in json.loads(summary_path.read_text(encoding="utf-8")).get("inputs", []):
                records[record["input"]] = record
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # an unreadable summary: everything is parsed again
    entries = [entry for path in shard_paths(output_dir) for entry in read_shard(path)]
    for _, record in sorted(entries, key=lambda entry: entry[0]):
        records[record["input"]] = record
    return records


class SegFaceSummaryShard:
    """This process's summary shard: one line per finished input, appended and flushed to disk at once."""

    def __init__(self, output_dir: Path, rank: int):
        self.path = shard_path(output_dir, rank)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _write(self, entry: dict) -> None:
        line = json.dumps({"seq": time.time_ns(), **entry}, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode("utf-8"))  # one write of one line: a kill cuts at most this line short

    def append(self, record: dict, counted: bool = False) -> None:
        """Record a finished input; it counts one in the progress, unless it was `counted` by [`append_progress`]."""
        self._write({"record": record} if counted else {"record": record, "progress": 1})
        os.fsync(self._fd)

    def append_progress(self) -> None:
        """Count a parsed input in the progress before its record is appended (read only by
        [`SegFaceGlobalProgress`]: resuming goes by the records)."""
        self._write({"progress": 1})

    def append_count(self, name: str, value: int) -> None:
        """A count that is not a record (read by [`read_counts`], ignored by [`read_shard`] and the progress)."""
        self._write({"count": {name: int(value)}})

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def remove_shards(output_dir: Path) -> None:
    for path in shard_paths(output_dir):
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ progress


def _progress_of(line: bytes) -> int:
    """How many inputs one shard line adds to the progress."""
    try:
        return int(json.loads(line).get("progress", 0))
    except (ValueError, TypeError, AttributeError):
        return 0


class SegFaceGlobalProgress:
    """Sums the progress of the lines that every process's shard gained since the run started, and calls `update(n)`
    with each increase, from a background thread (and on `refresh()`)."""

    def __init__(self, output_dir: Path, update: Callable[[int], None], interval: float = 0.5):
        self.output_dir = output_dir
        self.update = update
        self.interval = interval
        self.offsets = {path: path.stat().st_size for path in shard_paths(output_dir)}
        self.offsets_at_start = dict(self.offsets)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SegFaceGlobalProgress:
        self._thread.start()
        return self

    def refresh(self) -> None:
        with self._lock:
            new_inputs = 0
            for path in shard_paths(self.output_dir):
                offset = self.offsets.get(path, 0)
                try:
                    with open(path, "rb") as stream:
                        stream.seek(offset)
                        data = stream.read()
                except FileNotFoundError:
                    continue
                complete = data.rfind(b"\n") + 1  # count whole lines only
                new_inputs += sum(_progress_of(line) for line in data[:complete].splitlines())
                self.offsets[path] = offset + complete
            if new_inputs:
                self.update(new_inputs)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.refresh()


__all__ = [
    "PROCESS_GROUP_TIMEOUT",
    "SegFaceGlobalProgress",
    "SegFaceLaunchError",
    "SegFaceProcesses",
    "SegFaceSummaryShard",
    "current_processes",
    "previous_records",
    "read_counts",
    "read_shard",
    "remove_shards",
    "shard_paths",
]
