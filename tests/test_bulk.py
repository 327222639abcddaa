"""Bulk parsing: resuming, several processes (gloo on CPUs), a SIGKILLed run finished by the next one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, TINY_DECODER, require_shared, tiny_backbone_config
from hub_standin import hub_standin  # noqa: F401  (fixture)

from segface_hf import CELEBAMASK_HQ_LABELS, SegFaceConfig, SegFaceForSemanticSegmentation, SegFaceImageProcessor
from segface_hf.cli import main
from segface_hf.inference.bulk import SegFaceProcesses, read_shard, shard_paths

NUM_IMAGES = 24


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    config = SegFaceConfig(backbone_config=tiny_backbone_config("timm-mobilenet"),
                           id2label=dict(enumerate(CELEBAMASK_HQ_LABELS)), **TINY_DECODER)  # fmt: skip
    SegFaceForSemanticSegmentation(config).eval().save_pretrained(folder)
    SegFaceImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """24 small crops of the shared photos, of different sizes, in two subfolders."""
    folder = tmp_path_factory.mktemp("images")
    photos = [PIL.Image.open(require_shared("images", name)).convert("RGB") for name in ("astronaut.png", "camera.png")]
    for index in range(NUM_IMAGES):
        photo = photos[index % 2]
        box = (index * 7, index * 5, 260 + index * 7, 300 + index * 5)
        path = folder / f"part{index % 2}" / f"img{index:02d}.png"
        path.parent.mkdir(exist_ok=True)
        photo.crop(box).resize((40 + index, 36 + 2 * index)).save(path)
    return folder


def run(capsys, *args):
    code = main(["predict", *map(str, args), "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def label_maps(output_dir: Path) -> dict[str, np.ndarray]:
    summary = json.loads((output_dir / "summary.json").read_text())
    return {r["outputs"]["labels"]: np.asarray(PIL.Image.open(output_dir / r["outputs"]["labels"]))
            for r in summary["inputs"] if r["status"] == "ok"}  # fmt: skip


def counts(stdout: str) -> tuple[int, int, int]:
    found = re.search(r"(\d+) succeeded, (\d+) failed(?:, (\d+) skipped)?", stdout)
    assert found, stdout
    return int(found[1]), int(found[2]), int(found[3] or 0)


def no_leftovers(output_dir: Path) -> None:
    assert not list(output_dir.rglob(".*")), "staging files were left behind"
    assert not shard_paths(output_dir), "summary shards were not merged"


@pytest.fixture(scope="module")
def reference(tiny_model, images, tmp_path_factory):
    """An uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("reference")
    assert main(["predict", str(images), "--model", str(tiny_model), "--output-dir", str(out), "--no-detect",
                 "--batch-size", "2", "--quiet"]) == 0  # fmt: skip
    maps = label_maps(out)
    assert len(maps) == NUM_IMAGES
    return out, maps


def test_processes_take_disjoint_shares_that_cover_everything():
    shares = [list(SegFaceProcesses(rank=rank, world_size=3).take(range(10))) for rank in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_a_line_cut_short_by_a_kill_is_ignored(tmp_path):
    from segface_hf.inference.bulk import SegFaceSummaryShard, previous_records

    shard = SegFaceSummaryShard(tmp_path, rank=1)
    shard.append({"input": "a", "status": "ok"})
    shard.append({"input": "b", "status": "failed"})
    shard.append({"input": "a", "status": "failed"})  # a later line about the same input wins
    shard.close()
    with open(tmp_path / "summary-shard-00001.jsonl", "ab") as stream:
        stream.write(b'{"seq": 1, "record": {"input": "c", "sta')
    assert previous_records(tmp_path) == {"a": {"input": "a", "status": "failed"},
                                          "b": {"input": "b", "status": "failed"}}  # fmt: skip


def test_processes_that_accelerate_does_not_join_are_refused(monkeypatch):
    import accelerate

    from segface_hf.inference.bulk import SegFaceLaunchError, current_processes

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "PartialState", lambda cpu=False, **kwargs: SimpleNamespace(num_processes=1))
    with pytest.raises(SegFaceLaunchError, match="would parse every input in each"):
        current_processes()


def test_processes_wait_for_the_slowest_share_for_hours(monkeypatch):
    import accelerate
    from torch.distributed import constants

    from segface_hf.inference.bulk import current_processes

    joined = {}

    def partial_state(cpu=False, **kwargs):
        joined.update(kwargs)
        return SimpleNamespace(num_processes=2, process_index=1, local_process_index=1)

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "PartialState", partial_state)
    processes = current_processes()
    assert (processes.rank, processes.world_size) == (1, 2)
    # torch's defaults (10 minutes with NCCL, 30 with gloo) would end a run whose shares take unevenly long
    assert joined["timeout"] >= timedelta(hours=12)
    assert joined["timeout"] > max(constants.default_pg_timeout, constants.default_pg_nccl_timeout)


def test_resume_skips_finished_inputs_and_merges_the_summary(tiny_model, images, tmp_path, capsys):
    out = tmp_path / "out"
    part0, part1 = images / "part0", images / "part1"
    common = ["--model", tiny_model, "--output-dir", out, "--no-detect"]
    code, stdout, _ = run(capsys, part0, *common)
    assert code == 0 and counts(stdout) == (12, 0, 0)
    first = label_maps(out)
    code, stdout, _ = run(capsys, part0, *common)
    assert code == 0 and counts(stdout) == (0, 0, 12)
    (out / "img04.png").unlink()  # an output that went missing is made again, and only that one
    code, stdout, _ = run(capsys, part0, *common)
    assert counts(stdout) == (1, 0, 11)
    assert all(np.array_equal(first[name], array) for name, array in label_maps(out).items())
    code, stdout, _ = run(capsys, part0, *common, "--overlay")  # outputs asked for that do not exist yet
    assert counts(stdout) == (12, 0, 0) and (out / "img00_overlay.jpg").is_file()
    code, stdout, _ = run(capsys, part0, *common, "--overwrite")
    assert counts(stdout) == (12, 0, 0)
    code, stdout, _ = run(capsys, part1, *common)  # another set of inputs: the summary keeps both
    assert counts(stdout) == (12, 0, 0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["succeeded"] == 24 and summary["failed"] == 0
    assert sorted(Path(r["input"]).parent.name for r in summary["inputs"]) == ["part0"] * 12 + ["part1"] * 12
    assert [Path(r["input"]).name for r in summary["inputs"][:12]] == sorted(p.name for p in part1.iterdir())
    no_leftovers(out)


def _launch(*args, processes: int = 2, **popen):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               "0", "-m", "segface_hf.cli", "predict", *map(str, args)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False, **popen)


def _two_best_gap(model_dir: Path, image_path: Path) -> torch.Tensor:
    """Per pixel, the difference between the two highest logits (the model's output bilinearly resized to the
    image, as the label map is made)."""
    model = SegFaceForSemanticSegmentation.from_pretrained(model_dir).eval()
    processor = SegFaceImageProcessor.from_pretrained(model_dir)
    image = PIL.Image.open(image_path).convert("RGB")
    with torch.inference_mode():
        logits = model(**processor(image, return_tensors="pt")).logits
    logits = F.interpolate(logits, size=(image.height, image.width), mode="bilinear", align_corners=False)[0]
    top2 = logits.topk(2, dim=0).values
    return top2[0] - top2[1]


def test_two_processes_give_the_outputs_of_one(tiny_model, images, reference, tmp_path):
    out = tmp_path / "two"
    done = _launch(images, "--model", tiny_model, "--output-dir", out, "--no-detect", "--batch-size", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert counts(done.stdout) == (NUM_IMAGES, 0, 0)  # the main process reports the count of both
    assert "parsing" in done.stderr and done.stderr.count("parsing:   0%") == 1  # one bar, on the main process
    assert f"| {NUM_IMAGES}/{NUM_IMAGES} [" in done.stderr  # counting the inputs of both processes
    reference_dir, expected = reference
    two = label_maps(out)
    assert sorted(two) == sorted(expected)
    differing = 0
    for name, array in expected.items():
        mismatch = array != two[name]
        if mismatch.any():  # allowed only where the two best classes tie within float tolerance
            gap = _two_best_gap(tiny_model, next(images.rglob(name)))
            assert (gap[torch.from_numpy(mismatch)] < 1e-4).all(), f"{name}: labels differ where no classes tie"
            differing += int(mismatch.sum())
    print(f"1 vs 2 processes: {differing} differing pixels (ties) over {NUM_IMAGES} images")
    summary = json.loads((out / "summary.json").read_text())
    assert [r["input"] for r in summary["inputs"]] == [
        r["input"] for r in json.loads((reference_dir / "summary.json").read_text())["inputs"]
    ]
    no_leftovers(out)


def test_a_killed_run_is_finished_by_the_next(tiny_model, images, reference, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "segface_hf.cli", "predict", str(images), "--model", str(tiny_model),
               "--output-dir", str(out), "--no-detect", "--batch-size", "2", "--masks", "--overlay", "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = out / "summary-shard-00000.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if shard.is_file() and shard.read_bytes().count(b"\n") >= 6:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    finished_before = {record["input"] for _, record in read_shard(shard)}
    assert 6 <= len(finished_before) < NUM_IMAGES and not (out / "summary.json").exists()

    # The rest, in 2 processes this time: the split does not depend on how the killed run was launched.
    done = _launch(images, "--model", tiny_model, "--output-dir", out, "--no-detect", "--batch-size", "2", "--masks",
                   "--overlay", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # Nothing parsed twice (what the killed run recorded is skipped), nothing missing.
    assert counts(done.stdout) == (NUM_IMAGES - len(finished_before), 0, len(finished_before))
    _, expected = reference
    resumed = label_maps(out)
    assert sorted(resumed) == sorted(expected)
    assert all(np.array_equal(expected[name], resumed[name]) for name in expected)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["succeeded"] == NUM_IMAGES and len(summary["inputs"]) == NUM_IMAGES
    for record in summary["inputs"]:
        assert (out / record["outputs"]["overlay"]).is_file() and (out / record["outputs"]["masks"]).is_dir()
    no_leftovers(out)


# ------------------------------------------------------------------------------------------------ datasets


@pytest.fixture(scope="module")
def images_as_dataset(images, tmp_path_factory):
    """The image folder saved as a dataset: a parquet file (the images embedded) and a save_to_disk folder."""
    import datasets

    paths = sorted(images.rglob("*.png"))
    ids = [path.relative_to(images).with_suffix("").as_posix() for path in paths]
    dataset = datasets.Dataset.from_dict({"image_id": ids, "photo": [str(p) for p in paths]})
    dataset = dataset.cast_column("photo", datasets.Image())
    folder = tmp_path_factory.mktemp("as-dataset")
    dataset.to_parquet(str(folder / "photos.parquet"))
    on_disk = datasets.load_dataset("parquet", data_files=str(folder / "photos.parquet"), split="train")
    on_disk.save_to_disk(str(folder / "saved"))
    return folder


def test_dataset_round_trip(tiny_model, images_as_dataset, reference, tmp_path, capsys):
    from datasets import load_dataset

    _, expected = reference
    out = tmp_path / "parses"
    common = ["--model", tiny_model, "--output-dir", out, "--no-detect", "--batch-size", "2", "--output-format",
              "dataset", "--shard-rows", "5", "--dataset", images_as_dataset / "photos.parquet", "--image-column",
              "photo"]  # fmt: skip
    code, stdout, stderr = run(capsys, *common)
    assert code == 0 and counts(stdout) == (NUM_IMAGES, 0, 0), stderr
    shards = sorted((out / "data").glob("train-*.parquet"))
    assert len(shards) == 5  # 24 rows in shards of 5
    stray = shards[0].with_name("train-00000-0.parquet")  # as a run killed before it recorded the shard leaves it
    stray.write_bytes(shards[0].read_bytes())
    code, stdout, _ = run(capsys, *common)
    assert counts(stdout) == (0, 0, NUM_IMAGES)  # resumed: every shard is complete
    assert not stray.exists()
    code, stdout, _ = run(capsys, *common, "--overwrite")  # parsed again: the old shards give way to the new
    assert counts(stdout) == (NUM_IMAGES, 0, 0)

    parses = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(parses["image_id"]) == sorted(name[: -len(".png")] for name in expected)
    for row in parses:
        labels = np.asarray(row["labels"])
        assert np.array_equal(labels, expected[row["image_id"] + ".png"]), row["image_id"]
        assert (row["width"], row["height"]) == labels.shape[::-1] and row["mode"] == "whole-image"
        assert row["faces"] == [] and abs(sum(row["class_fractions"].values()) - 1) < 1e-4
    no_leftovers(out)


def test_the_bar_counts_each_row_before_its_shard_is_written(tiny_model, images, tmp_path, monkeypatch, capsys):
    """The rows of a parquet shard are recorded (for resuming) only once it is written, every 5 rows here; the bar
    does not wait for that."""
    from segface_hf.inference import predict as predict_module

    out = tmp_path / "parses"
    seen = []  # the bar's count after each update, with the rows then on disk

    class RecordingBar(predict_module.tqdm):
        def update(self, n=1):
            super().update(n)
            seen.append((self.n, 5 * len(list((out / "data").glob("*.parquet")))))

    monkeypatch.setattr(predict_module, "tqdm", RecordingBar)
    code = main(["predict", str(images / "part0"), "--model", str(tiny_model), "--output-dir", str(out), "--no-detect",
                 "--output-format", "dataset", "--shard-rows", "5"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert [count for count, _ in seen] == list(range(1, 13))  # one by one, to the 12 inputs
    assert sum(count > rows_on_disk for count, rows_on_disk in seen) >= 6  # ahead of the shards
    assert len(list((out / "data").glob("*.parquet"))) == 3


def test_dataset_rows_keep_the_ids_as_given(tiny_model, images, reference, tmp_path, capsys):
    """Ids that are not safe file names (a space; three that make the same name) are stored unchanged."""
    import datasets
    from datasets import load_dataset

    _, expected = reference
    photos = {"a b": "part0/img00", "a?b": "part1/img01", "a_b": "part0/img02"}  # all three would be named a_b...
    source = tmp_path / "ids.parquet"
    paths = [str(images / f"{name}.png") for name in photos.values()]
    dataset = datasets.Dataset.from_dict({"image_id": list(photos), "image": paths})
    dataset.cast_column("image", datasets.Image()).to_parquet(str(source))
    out = tmp_path / "parses"
    common = ["--dataset", source, "--model", tiny_model, "--output-dir", out, "--no-detect", "--output-format",
              "dataset"]  # fmt: skip
    code, stdout, stderr = run(capsys, *common)
    assert code == 0 and counts(stdout) == (3, 0, 0), stderr
    code, stdout, _ = run(capsys, *common)
    assert counts(stdout) == (0, 0, 3)  # resumed by the same ids
    code, stdout, _ = run(capsys, *common, "--overwrite")  # the new rows replace the old ones of the same ids
    assert counts(stdout) == (3, 0, 0)
    parses = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(parses["image_id"]) == sorted(photos)
    for row in parses:
        assert np.array_equal(np.asarray(row["labels"]), expected[photos[row["image_id"]] + ".png"]), row["image_id"]
    summary = json.loads((out / "summary.json").read_text())
    assert [record["input"] for record in summary["inputs"]] == list(photos)


def test_a_streamed_saved_dataset_gives_the_file_outputs(tiny_model, images_as_dataset, reference, tmp_path, capsys):
    _, expected = reference
    out = tmp_path / "streamed"
    code, stdout, stderr = run(capsys, "--dataset", images_as_dataset / "saved", "--streaming", "--image-column",
                               "photo", "--model", tiny_model, "--output-dir", out, "--no-detect", "--batch-size",
                               "2", "--num-workers", "2")  # fmt: skip
    assert code == 0 and counts(stdout) == (NUM_IMAGES, 0, 0), stderr
    streamed = label_maps(out)
    assert sorted(streamed) == sorted(expected)
    assert all(np.array_equal(expected[name], streamed[name]) for name in expected)
    (out / "part1" / "img05.png").unlink()
    code, stdout, stderr = run(capsys, "--dataset", images_as_dataset / "saved", "--streaming", "--image-column",
                               "photo", "--model", tiny_model, "--output-dir", out, "--no-detect")  # fmt: skip
    assert counts(stdout) == (1, 0, NUM_IMAGES - 1), stderr  # a stream counts what it skips as it goes


def test_dataset_usage_errors(tiny_model, images_as_dataset, images, tmp_path, capsys):
    source = images_as_dataset / "photos.parquet"
    cases = [
        (["--dataset", source], "no column 'image'"),
        (["--dataset", source, "--image-column", "photo", "--id-column", "nope"], "no column 'nope'"),
        (["--dataset", tmp_path / "missing"], "cannot load --dataset"),
        ([images, "--dataset", source], "not both"),
        ([images, "--push-to-hub", "me/x"], "--output-format dataset"),
        ([images, "--output-format", "dataset", "--overlay"], "--overlay"),
    ]
    for args, message in cases:
        code, _, stderr = run(capsys, *args, "--model", tiny_model, "--output-dir", tmp_path / "out", "--no-detect")
        assert code == 2 and message in stderr and stderr.count("\n") == 1, (args, stderr)


def test_push_to_hub_uploads_a_private_dataset(tiny_model, images, hub_standin, tmp_path, capsys):  # noqa: F811
    from datasets import load_dataset

    out = tmp_path / "parses"
    code, stdout, stderr = run(capsys, images / "part0", "--model", tiny_model, "--output-dir", out, "--no-detect",
                               "--output-format", "dataset", "--push-to-hub", "standin-user/parses")  # fmt: skip
    assert code == 0, stderr
    assert "(private)" in stdout
    repo = hub_standin.repo("standin-user/parses", repo_type="dataset")
    assert repo.private
    local = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(repo.files) == (local - {"summary.json"}) | {".gitattributes"}  # summary.json names local paths
    from_hub = load_dataset("standin-user/parses", split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(from_hub["image_id"]) == sorted(p.stem for p in (images / "part0").iterdir())


def maps_and_faces(output_dir: Path) -> tuple[dict[str, np.ndarray], list[tuple[str, list]]]:
    """The label maps, and every input's detected faces in the summary's order."""
    summary = json.loads((output_dir / "summary.json").read_text())
    return label_maps(output_dir), [(r["input"], r["faces"]) for r in summary["inputs"]]


@pytest.fixture(scope="module")
def detected(tiny_model, tmp_path_factory):
    """The shared photos (one face each) parsed with face detection in one process, without workers."""
    out = tmp_path_factory.mktemp("detected")
    assert main(["predict", str(require_shared("images")), "--model", str(tiny_model), "--output-dir", str(out),
                 "--batch-size", "3", "--quiet"]) == 0  # fmt: skip
    maps, faces = maps_and_faces(out)
    assert len(maps) == 3 and all(len(found) == 1 for _, found in faces)
    return maps, faces


def test_dataloader_workers_decode_and_detect_like_the_process(tiny_model, detected, tmp_path, capsys):
    out = tmp_path / "workers2"
    code, stdout, stderr = run(capsys, require_shared("images"), "--model", tiny_model, "--output-dir", out,
                               "--num-workers", "2", "--batch-size", "3")  # fmt: skip
    assert code == 0 and counts(stdout) == (3, 0, 0), stderr
    (maps0, faces0), (maps2, faces2) = detected, maps_and_faces(out)
    assert faces0 == faces2  # same order, same detections
    assert sorted(maps0) == sorted(maps2) and all(np.array_equal(maps0[name], maps2[name]) for name in maps0)


def test_two_processes_with_workers_detect_and_parse_like_one(tiny_model, detected, tmp_path):
    out = tmp_path / "two-detecting"
    done = _launch(require_shared("images"), "--model", tiny_model, "--output-dir", out, "--num-workers", "1",
                   "--batch-size", "3")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert counts(done.stdout) == (3, 0, 0) and "| 3/3 [" in done.stderr
    (maps1, faces1), (maps2, faces2) = detected, maps_and_faces(out)
    assert faces1 == faces2  # same order, same detections
    assert sorted(maps1) == sorted(maps2) and all(np.array_equal(maps1[name], maps2[name]) for name in maps1)
    no_leftovers(out)


def test_two_processes_write_one_dataset_from_a_stream(tiny_model, images_as_dataset, reference, tmp_path):
    """Each process reads its share of the streamed rows (split by `datasets`) and writes its own shards."""
    from datasets import load_dataset

    out = tmp_path / "two-dataset"
    common = ["--dataset", images_as_dataset / "saved", "--streaming", "--image-column", "photo", "--model",
              tiny_model, "--output-dir", out, "--no-detect", "--output-format", "dataset", "--shard-rows", "5"]  # fmt: skip
    done = _launch(*common)
    assert done.returncode == 0, done.stderr[-3000:]
    assert counts(done.stdout) == (NUM_IMAGES, 0, 0)
    assert f"parsing: {NUM_IMAGES}image [" in done.stderr  # a stream's length is not known: the bar only counts
    shards = sorted(path.name for path in (out / "data").iterdir())
    assert {name.split("-")[1] for name in shards} == {"00000", "00001"}  # each process wrote its own shards
    _, expected = reference
    parses = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(parses["image_id"]) == sorted(name[: -len(".png")] for name in expected)  # each input once
    for row in parses:
        assert np.array_equal(np.asarray(row["labels"]), expected[row["image_id"] + ".png"]), row["image_id"]
    no_leftovers(out)
    done = _launch(*common, "--quiet")  # each process counts what it skips of its share; the main one sums them
    assert done.returncode == 0 and counts(done.stdout) == (0, 0, NUM_IMAGES), done.stderr[-3000:]


def test_a_stream_numbered_by_row_refuses_workers(tiny_model, images_as_dataset, tmp_path, capsys):
    import datasets

    saved = tmp_path / "no-ids"
    datasets.load_from_disk(str(images_as_dataset / "saved")).remove_columns("image_id").save_to_disk(str(saved))
    code, _, stderr = run(capsys, "--dataset", saved, "--streaming", "--image-column", "photo", "--model", tiny_model,
                          "--output-dir", tmp_path / "out", "--no-detect", "--num-workers", "2")  # fmt: skip
    assert code == 2 and "needs --num-workers 0" in stderr
    code, stdout, stderr = run(capsys, "--dataset", saved, "--streaming", "--image-column", "photo", "--model",
                               tiny_model, "--output-dir", tmp_path / "out", "--no-detect")  # fmt: skip
    assert code == 0 and counts(stdout) == (NUM_IMAGES, 0, 0), stderr
    assert (tmp_path / "out" / "00000023.png").is_file()  # named by row number


@pytest.mark.parametrize("streaming", [False, True])
def test_a_hub_dataset_is_parsed(tiny_model, images_as_dataset, reference, hub_standin, streaming, tmp_path, capsys):  # noqa: F811
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("standin-user/photos", repo_type="dataset", private=True, exist_ok=True)
    api.upload_file(path_or_fileobj=str(images_as_dataset / "photos.parquet"), path_in_repo="data/train-0.parquet",
                    repo_id="standin-user/photos", repo_type="dataset")  # fmt: skip
    out = tmp_path / "from-hub"
    code, stdout, stderr = run(capsys, "--dataset", "standin-user/photos", "--image-column", "photo", "--model",
                               tiny_model, "--output-dir", out, "--no-detect", *(["--streaming"] * streaming))  # fmt: skip
    assert code == 0 and counts(stdout) == (NUM_IMAGES, 0, 0), stderr
    _, expected = reference
    parsed = label_maps(out)
    assert sorted(parsed) == sorted(expected) and all(np.array_equal(expected[n], parsed[n]) for n in expected)


def test_dataset_ids_become_safe_distinct_output_names(tmp_path):
    import datasets

    from segface_hf.inference.dataset_io import dataset_source

    ids = ["a b", "a_b", "../up", "/abs/x", "A_B"]
    path = tmp_path / "ids.parquet"
    datasets.Dataset.from_dict({"id": ids, "image": [b"x"] * len(ids)}).to_parquet(str(path))
    source = dataset_source(str(path))
    assert [item.key for item in source.items] == ids
    assert [item.name for item in source.items] == ["a_b", "a_b-2", "up", "abs/x", "A_B-3"]
