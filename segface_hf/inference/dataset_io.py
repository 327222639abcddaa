"""Hugging Face datasets in and out of `segface predict`.

- **In**: [`dataset_source`] reads a saved dataset folder (`save_to_disk`), a parquet file, a local data folder
  (image folder or parquet shards) or a Hub id, optionally streamed; each row is one input, named by its id column
  (or its row number).
- **Out** (`--output-format dataset`): [`SegFaceDatasetWriter`] writes one row per parsed input (the image id as
  the input gave it, the label map as an `Image` feature, the faces, the class fractions) into parquet shards under
  `data/`, each written whole and renamed into place before its inputs are recorded, so a killed run never leaves
  half a shard. A `README.md` with the split layout lets `datasets.load_dataset(output_dir)` open the folder, and
  [`push_parses_to_hub`] uploads it (private by default).
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import PIL.Image

from ..errors import error_summary
from .bulk import SegFaceProcesses
from .faces import SegFaceMissingDependencyError
from .predict import STAGING_PREFIX, SegFaceInput, SegFaceInputSource, SegFaceUsageError, save_label_png, unique_name

DATA_DIR = "data"
ID_COLUMNS = ("image_id", "id")
_UNSAFE_NAME = re.compile(r"[^\w.\-/]")


# ------------------------------------------------------------------------------------------------ in


def _load(name_or_path: str, split: str, streaming: bool):
    import datasets

    path = Path(name_or_path).expanduser()
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                splits = ", ".join(loaded)
                raise SegFaceUsageError(f"--dataset {name_or_path} has no split {split!r} (it has {splits}).")
            loaded = loaded[split]
        # as a stream, in shards that processes and DataLoader workers can split between them
        return loaded.to_iterable_dataset(num_shards=max(1, min(len(loaded), 64))) if streaming else loaded
    if path.is_file() and path.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files={split: str(path)}, split=split, streaming=streaming)
    return datasets.load_dataset(str(path) if path.exists() else name_or_path, split=split, streaming=streaming)


def _output_name(image_id: str) -> str:
    """A relative output name for an id: unsafe characters become `_`, `..` and absolute paths are defused."""
    parts = [part for part in _UNSAFE_NAME.sub("_", image_id).split("/") if part not in ("", ".", "..")]
    return "/".join(parts) or "_"


class _RowImage:
    """A map-style dataset row's image, read when the input is parsed (in a DataLoader worker)."""

    def __init__(self, dataset, index: int, column: str):
        self.dataset, self.index, self.column = dataset, index, column

    def __call__(self):
        return self.dataset[self.index][self.column]


def dataset_source(name_or_path: str, split: str = "train", image_column: str = "image", id_column: str | None = None,
                   streaming: bool = False) -> SegFaceInputSource:  # fmt: skip
    """The rows of a dataset split as inputs of [`predict`].

    Args:
        name_or_path (`str`): a `save_to_disk` folder, a `.parquet` file, a local data folder or a Hub dataset id.
        split (`str`, *optional*, defaults to `"train"`): the split to parse.
        image_column (`str`, *optional*, defaults to `"image"`): the column holding the images (an `Image` feature,
            encoded bytes or file paths).
        id_column (`str`, *optional*): the column naming each row (unique); defaults to `image_id` or `id` if the
            dataset has one, else the row number (`00000000`, `00000001`, ...).
        streaming (`bool`, *optional*, defaults to `False`): stream the rows instead of downloading the whole split.

    Returns:
        [`SegFaceInputSource`]: a list of inputs (map-style datasets) or a stream of them (`streaming`).
    """
    try:
        import datasets
    except ImportError as error:
        raise SegFaceMissingDependencyError(
            '--dataset needs the datasets package, which is not installed: pip install "segface-hf[bulk]".'
        ) from error

    try:
        dataset = _load(name_or_path, split, streaming)
    except (OSError, ValueError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as error:
        message = f"cannot load --dataset {name_or_path!r} (split {split!r}): {error_summary(error)}"
        raise SegFaceUsageError(message) from error
    columns = list(dataset.features or {}) if dataset.features is not None else None
    if columns is not None and image_column not in columns:
        raise SegFaceUsageError(f"--dataset {name_or_path} has no column {image_column!r} (--image-column); its "
                                f"columns are {', '.join(columns)}.")  # fmt: skip
    if id_column is None and columns is not None:
        id_column = next((name for name in ID_COLUMNS if name in columns), None)
    elif id_column is not None and columns is not None and id_column not in columns:
        raise SegFaceUsageError(f"--dataset {name_or_path} has no column {id_column!r} (--id-column).")
    if isinstance((dataset.features or {}).get(image_column), datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))  # decoded where it is parsed

    if not streaming:
        ids = dataset[id_column] if id_column else [f"{index:08d}" for index in range(len(dataset))]
        ids = [str(image_id) for image_id in ids]
        if len(set(ids)) != len(ids):
            raise SegFaceUsageError(f"the ids of --dataset {name_or_path} (column {id_column!r}) are not unique; "
                                    "choose a unique --id-column.")  # fmt: skip
        names: set[str] = set()
        items = [SegFaceInput(path=None, name=unique_name(_output_name(image_id), names), key=image_id,
                              image=_RowImage(dataset, index, image_column)) for index, image_id in enumerate(ids)]  # fmt: skip
        return SegFaceInputSource(items=items, split=split)

    def stream(processes: SegFaceProcesses) -> Iterator[SegFaceInput]:
        if id_column:  # each process reads only its share of the stream
            from datasets.distributed import split_dataset_by_node

            rows = split_dataset_by_node(dataset, rank=processes.rank, world_size=processes.world_size)
            numbered = ((None, row) for row in rows)
        else:  # the row number is the id: every process counts all rows and takes its share
            numbered = processes.take(enumerate(dataset))
        for index, row in numbered:
            image_id = str(row[id_column]) if id_column else f"{index:08d}"
            yield SegFaceInput(path=None, name=_output_name(image_id), key=image_id, image=row[image_column])

    return SegFaceInputSource(stream=stream, split=split, stream_in_workers=id_column is not None)


# ------------------------------------------------------------------------------------------------ out


def result_features(id2label: dict[int, str]):
    """The `datasets.Features` of the rows [`SegFaceDatasetWriter`] writes."""
    from datasets import Features, Image, Value

    return Features({
        "image_id": Value("string"),
        "labels": Image(),
        "width": Value("int32"),
        "height": Value("int32"),
        "mode": Value("string"),
        "faces": [{"box": [Value("float32")], "landmarks": [[Value("float32")]], "score": Value("float32")}],
        "class_fractions": {id2label[index]: Value("float64") for index in sorted(id2label)},
    })  # fmt: skip


def _shard_split(path: Path) -> str:
    return path.name.split("-", 1)[0]


class SegFaceDatasetWriter:
    r"""
    Writes the parses as parquet shards of `options.shard_rows` rows (`data/<split>-<rank>-<time>.parquet`).

    Args:
        output_dir (`Path`): the output folder.
        config ([`SegFaceConfig`]): the model's config (its label set).
        options ([`SegFacePredictOptions`]): the run's options (`shard_rows`: rows per shard; the inputs of a shard
            are recorded once it is complete, so a killed run redoes at most that many per process).
        split (`str`, *optional*, defaults to `"train"`): the split the rows belong to.
        rank (`int`, *optional*, defaults to 0): this process's rank (in the shard names).
    """

    holds_rows = True

    def __init__(self, output_dir: Path, config, options, split: str = "train", rank: int = 0):
        self.output_dir, self.config, self.split, self.rank = output_dir, config, split, rank
        self.shard_rows = options.shard_rows
        self.features = result_features(config.id2label)
        self.rows: list[dict] = []
        self.records: list[dict] = []
        (output_dir / DATA_DIR).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def clean_up(output_dir: Path, records: dict[str, dict]) -> None:
        """Remove the shards no record points to (written by a run killed before it recorded them)."""
        referenced = {r["outputs"].get("dataset") for r in records.values() if isinstance(r.get("outputs"), dict)}
        for path in (output_dir / DATA_DIR).glob("*.parquet"):
            if f"{DATA_DIR}/{path.name}" not in referenced:
                path.unlink(missing_ok=True)

    def add(self, item: SegFaceInput, image: PIL.Image.Image, result, record: dict) -> list[dict]:
        buffer = io.BytesIO()
        save_label_png(result.label_map, buffer, self.config.num_labels)
        areas = record["class_fractions"]
        self.rows.append({
            "image_id": item.image_id,
            "labels": {"bytes": buffer.getvalue(), "path": None},
            "width": image.width,
            "height": image.height,
            "mode": result.mode,
            "faces": [{"box": f["box"], "landmarks": f["landmarks"], "score": f["score"]} for f in record["faces"]],
            "class_fractions": {name: float(areas.get(name, 0.0)) for name in self.features["class_fractions"]},
        })  # fmt: skip
        record["outputs"] = {"image_id": item.image_id}
        self.records.append(record)
        return self._flush() if len(self.rows) >= self.shard_rows else []

    def _flush(self) -> list[dict]:
        if not self.rows:
            return []
        import pyarrow as pa

        name = f"{self.split}-{self.rank:05d}-{time.time_ns():x}.parquet"
        table = pa.Table.from_pylist([self.features.encode_example(row) for row in self.rows],
                                     schema=self.features.arrow_schema)  # fmt: skip
        _write_table_atomically(table, self.output_dir, self.output_dir / DATA_DIR / name)
        records, self.rows, self.records = self.records, [], []
        for record in records:
            record["outputs"]["dataset"] = f"{DATA_DIR}/{name}"
        return records

    def close(self) -> list[dict]:
        return self._flush()

    def finalize(self, records: dict[str, dict]) -> None:
        """Drop the rows that a later run parsed again into another shard, and write the README that
        `load_dataset` reads the split layout from."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        owner = {}
        for record in records.values():
            outputs = record.get("outputs")
            if record.get("status") == "ok" and isinstance(outputs, dict) and "dataset" in outputs:
                owner[outputs["image_id"]] = outputs["dataset"]
        for path in sorted((self.output_dir / DATA_DIR).glob("*.parquet")):
            relative = f"{DATA_DIR}/{path.name}"
            ids = pq.read_table(path, columns=["image_id"]).column("image_id").to_pylist()
            keep = [owner.get(image_id) == relative for image_id in ids]
            if not any(keep):
                path.unlink()
            elif not all(keep):
                table = pq.read_table(path)
                _write_table_atomically(table.filter(pc.array(keep)), self.output_dir, path)
        splits = sorted({_shard_split(path) for path in (self.output_dir / DATA_DIR).glob("*.parquet")})
        from ..file_utils import atomic_write_text

        atomic_write_text(self.output_dir / "README.md", parses_card(splits, self.config.id2label))


def _write_table_atomically(table, output_dir: Path, target: Path) -> None:
    import pyarrow.parquet as pq

    handle, staging = tempfile.mkstemp(prefix=STAGING_PREFIX, suffix=".parquet", dir=output_dir)
    os.close(handle)
    try:
        pq.write_table(table, staging)
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def parses_card(splits: list[str], id2label: dict[int, str]) -> str:
    """The README of a parses dataset: the split layout `load_dataset` reads, the columns and the label set."""
    files = "\n".join(f"  - split: {split}\n    path: {DATA_DIR}/{split}-*.parquet" for split in splits)
    labels = "\n".join(f"| {index} | {id2label[index]} |" for index in sorted(id2label))
    return f"""---
configs:
- config_name: default
  data_files:
{files}
---

# Face parses written by `segface predict --output-format dataset`

One row per parsed image:

- `image_id` (string): the input's id as given (its dataset id column or row number), or its file name;
- `labels` (image, PNG, at the input's size): the class index of every pixel;
- `width`, `height` (int): the input's size; `mode` (string): `faces` (detected and parsed face by face) or
  `whole-image`;
- `faces` (list): per detected face, its box `(x0, y0, x1, y1)`, its 5 landmarks and the detector's score;
- `class_fractions` (struct): the fraction of the image's pixels per class.

Open with `datasets.load_dataset("<this folder or repo>")`.

| index | class |
|---|---|
{labels}
"""


# ------------------------------------------------------------------------------------------------ Hub


def push_parses_to_hub(output_dir: str | os.PathLike, repo_id: str, *, private: bool = True, token: str | None = None,
                       endpoint: str | None = None) -> str:  # fmt: skip
    """Upload a folder written with `--output-format dataset` (`README.md` and `data/`; `summary.json`, which names
    local paths, stays here) to a Hub dataset repo, private by default; returns the repo URL."""
    from ..data.hub import upload_dataset_folder

    folder = Path(output_dir).expanduser().resolve()
    if not ((folder / "README.md").is_file() and (folder / DATA_DIR).is_dir()):
        raise SegFaceUsageError(f"{folder} holds no dataset written by segface predict --output-format dataset.")
    return upload_dataset_folder(folder, repo_id, private=private, token=token, endpoint=endpoint,
                                 allow_patterns=["README.md", f"{DATA_DIR}/*.parquet"],
                                 delete_patterns=[f"{DATA_DIR}/*", "README.md"],
                                 commit_message="Upload face parses written by segface predict")  # fmt: skip


__all__ = [
    "SegFaceDatasetWriter",
    "dataset_source",
    "parses_card",
    "push_parses_to_hub",
    "result_features",
]
