"""Dataset builders: miniature raw trees in each release layout, FaceSynthetics through `folder`, and upload to a
stand-in Hub.

Expected values are derived by hand from the miniature data written here (label probes, split orders, landmark
arithmetic, crop boxes), not from the code under test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT, require_shared
from datasets import Image as ImageFeature
from datasets import load_dataset
from hub_standin import HubStandin, hub_standin  # noqa: F401  (fixture)
from PIL import Image

from segface_hf.configuration_segface import CELEBAMASK_HQ_LABELS, LAPA_LABELS
from segface_hf.data import (
    RawLayoutError,
    build_celebamask_hq,
    build_from_folder,
    build_helen,
    build_lapa,
    plan_lapa,
    push_dataset_to_hub,
    write_dataset,
)
from segface_hf.data import writer as writer_module

FACESYNTHETICS_CLASSES = (
    "background", "skin", "nose", "right_eye", "left_eye", "right_brow", "left_brow", "right_ear", "left_ear",
    "mouth_interior", "top_lip", "bottom_lip", "neck", "hair", "beard", "clothing", "glasses", "headwear", "facewear",
)  # fmt: skip


# ------------------------------------------------------------------------------------------------------ helpers


def write_jpeg(path: Path, width: int, height: int, seed: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x + seed * 7) % 256, (y + seed * 13) % 256, ((x + y) // 2 + seed) % 256], axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8)).save(path, format="JPEG", quality=90)
    return path.read_bytes()


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def write_truncated_jpeg(path: Path) -> None:
    data = write_jpeg(path, 64, 64, seed=99)
    path.write_bytes(data[: len(data) // 2])


def load(out: Path, cache: Path):
    return load_dataset(str(out), cache_dir=str(cache))


def raw_bytes(split_dataset, column: str) -> list[bytes]:
    return [item["bytes"] for item in split_dataset.cast_column(column, ImageFeature(decode=False))[column]]


def report(out: Path) -> dict:
    return json.loads((out / "build_report.json").read_text())


def problems(out: Path) -> set[tuple]:
    return {(p["kind"], p["action"], p.get("id"), p.get("split")) for p in report(out)["problems"]}


def card_metadata(out: Path) -> dict:
    text = (out / "README.md").read_text()
    return yaml.safe_load(text.split("---\n")[1])


def card_label_table(out: Path) -> dict[str, list[str]]:
    """Rows of the card's label table: value -> percentage cells."""
    text = (out / "README.md").read_text()
    section = text.split("## Labels")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        if match := re.match(r"^\| (\d+|other) \| ([^|]+) \| (.+) \|$", line):
            rows[match.group(1)] = [match.group(2).strip()] + [cell.strip() for cell in match.group(3).split("|")]
    return rows


def percent(count: int, total: int) -> str:
    return f"{100.0 * count / total:.4g}%"


def no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# -------------------------------------------------------------------------------------------- CelebAMask-HQ


def mask(rect: tuple[int, int, int, int], value: int = 255, size: int = 512) -> np.ndarray:
    y0, y1, x0, x1 = rect
    array = np.zeros((size, size), dtype=np.uint8)
    array[y0:y1, x0:x1] = value
    return array


def write_celeba_part(root: Path, hq_id: int, part: str, array: np.ndarray, rgb: bool = False) -> None:
    path = root / "CelebAMask-HQ-mask-anno" / str(hq_id // 2000) / f"{hq_id:05d}_{part}.png"
    if rgb:
        array = np.repeat(array[..., None], 3, axis=-1)
    write_png(path, array)


# Parts of id 0, overlapping on purpose (rows y0:y1, columns x0:x1). No `neck`, no `r_eye` file.
CELEBA_PARTS_0 = {
    "skin": (100, 400, 100, 400),
    "hair": (50, 200, 50, 450),
    "l_lip": (150, 250, 200, 260),
    "l_eye": (220, 240, 120, 160),
    "eye_g": (215, 245, 110, 300),
    "hat": (40, 80, 100, 300),
    "cloth": (450, 512, 0, 512),
    "neck_l": (460, 480, 200, 300),
    "l_ear": (250, 300, 60, 100),
    "ear_r": (280, 290, 70, 80),
}
# (y, x) -> value: which part wins where parts overlap, read off the original's order by hand.
CELEBA_PROBES_0 = {
    (10, 10): 0,  # nothing
    (300, 300): 2,  # skin only
    (150, 300): 14,  # hair over skin
    (160, 230): 14,  # hair over l_lip and skin
    (205, 230): 12,  # l_lip over skin
    (230, 130): 15,  # eye_g over l_eye and skin
    (230, 280): 15,  # eye_g over skin
    (60, 200): 16,  # hat over hair
    (45, 200): 16,  # hat alone
    (470, 250): 18,  # neck_l over cloth
    (500, 10): 3,  # cloth (mask value 1, i.e. any non-zero counts)
    (260, 70): 4,  # l_ear alone
    (285, 75): 17,  # ear_r over l_ear
}


@pytest.fixture(scope="module")
def celeba_raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("celeba") / "CelebAMask-HQ"
    images = root / "CelebA-HQ-img"
    # hq id -> original CelebA file
    mapping = {
        0: "000120.jpg", 1: "000033.jpg", 2: "000200.jpg", 3: "000060.jpg", 7: "000300.jpg", 9: "000250.jpg",
        11: "000310.jpg", 13: "000320.jpg", 15: "000330.jpg", 2001: "000050.jpg", 4005: "000010.jpg",
    }  # fmt: skip
    lines = ["idx         orig_idx    orig_file"]
    lines += [f"{hq}           {int(orig[:6]) - 1}      {orig}" for hq, orig in sorted(mapping.items())]
    root.mkdir(parents=True)
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(lines) + "\n")
    # CelebA partition, in CelebA file order, including files that are not in CelebA-HQ.
    partition = [
        ("000001.jpg", 0), ("000010.jpg", 0), ("000020.jpg", 0), ("000033.jpg", 0), ("000050.jpg", 0),
        ("000060.jpg", 0), ("000120.jpg", 0), ("000200.jpg", 1), ("000210.jpg", 1), ("000250.jpg", 1),
        ("000300.jpg", 2), ("000310.jpg", 2), ("000320.jpg", 2), ("000330.jpg", 2), ("000340.jpg", 2),
    ]  # fmt: skip
    (root / "list_eval_partition.txt").write_text("".join(f"{name} {group}\n" for name, group in partition))

    for hq in (0, 1, 2, 13, 15, 2001, 4005):
        write_jpeg(images / f"{hq}.jpg", 1024, 1024, seed=hq)
    write_jpeg(images / "7.jpg", 512, 512, seed=7)  # not the 1024 of the release: kept, reported
    write_truncated_jpeg(images / "3.jpg")  # corrupt
    (images / "9.jpg").write_bytes(b"this is not a jpeg")  # corrupt
    write_jpeg(images / "21.jpg", 1024, 1024, seed=21)  # in no split (not in the mapping)
    # id 11 has no image at all.

    for index, (part, rect) in enumerate(CELEBA_PARTS_0.items()):
        value = 1 if part == "cloth" else 255
        write_celeba_part(root, 0, part, mask(rect, value), rgb=index % 2 == 1)
    for hq in (1, 2, 7, 3, 9, 11):
        write_celeba_part(root, hq, "skin", mask((100, 400, 100, 400)))
    write_celeba_part(root, 2001, "skin", mask((100, 400, 100, 400)))  # folder 1
    write_celeba_part(root, 2001, "hat", mask((0, 50, 0, 512)))
    write_celeba_part(root, 4005, "skin", mask((100, 400, 100, 400)))  # folder 2
    write_celeba_part(root, 4005, "nose", mask((200, 260, 230, 270)))
    write_celeba_part(root, 13, "skin", mask((50, 200, 50, 200), size=256))  # not 512x512: skipped
    # id 15 has no part mask at all: all background, kept and reported.
    return root


@pytest.fixture(scope="module")
def celeba_built(celeba_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("celeba-out") / "celebamask-hq-hf"
    summary = build_celebamask_hq(celeba_raw, out, num_proc=2, progress=False)
    assert summary.output_dir == out
    return out


def test_celebamask_hq_splits_follow_partition_order(celeba_built, tmp_path):
    dataset = load(celeba_built, tmp_path / "cache")
    assert sorted(dataset) == ["test", "train", "validation"]
    # Partition-file order joined through the mapping (not HQ id order); 3 is corrupt.
    assert dataset["train"]["id"] == ["4005", "1", "2001", "0"]
    assert dataset["validation"]["id"] == ["2"]  # 9 is corrupt
    assert dataset["test"]["id"] == ["7", "15"]  # 11 has no image, 13 has a 256x256 mask


def test_celebamask_hq_merge_values_and_overwrite_order(celeba_built, celeba_raw, tmp_path):
    train = load(celeba_built, tmp_path / "cache")["train"]
    rows = {row["id"]: row for row in train}
    label = np.array(rows["0"]["label"])
    assert label.shape == (512, 512) and label.dtype == np.uint8
    for (y, x), value in CELEBA_PROBES_0.items():
        assert label[y, x] == value, f"pixel {(y, x)}: {label[y, x]} != {value}"
    assert not (label == 1).any() and not (label == 9).any()  # neck and r_eye files are absent
    # Masks spread over the <id // 2000> folders are found.
    assert set(np.unique(np.array(rows["2001"]["label"]))) == {0, 2, 16}
    assert set(np.unique(np.array(rows["4005"]["label"]))) == {0, 2, 10}
    assert set(np.unique(np.array(rows["1"]["label"]))) == {0, 2}
    # Images are stored byte for byte.
    stored = dict(zip(train["id"], raw_bytes(train, "image"), strict=True))
    for hq in ("0", "1", "2001", "4005"):
        assert stored[hq] == (celeba_raw / "CelebA-HQ-img" / f"{hq}.jpg").read_bytes()
    assert rows["0"]["image"].size == (1024, 1024)


def test_celebamask_hq_report_and_card(celeba_built, tmp_path):
    found = problems(celeba_built)
    assert ("corrupt_file", "skipped", "3", "train") in found
    assert ("corrupt_file", "skipped", "9", "validation") in found
    assert ("missing_file", "skipped", "11", "test") in found
    assert ("size_mismatch", "skipped", "13", "test") in found
    assert ("size_mismatch", "kept", "7", "test") in found
    assert ("no_mask_parts", "kept", "15", "test") in found
    assert ("not_in_any_split", "ignored", "21", None) in found
    content = report(celeba_built)
    assert content["problems_by_kind"] == {
        "corrupt_file": 2, "missing_file": 1, "no_mask_parts": 1, "not_in_any_split": 1, "size_mismatch": 2,
    }  # fmt: skip
    assert content["splits"] == {
        "train": {"listed": 5, "written": 4, "skipped": 1},
        "validation": {"listed": 2, "written": 1, "skipped": 1},
        "test": {"listed": 4, "written": 2, "skipped": 2},
    }
    missing = next(p for p in content["problems"] if p["id"] == "11")
    assert missing["path"] == "CelebA-HQ-img/11.jpg"

    metadata = card_metadata(celeba_built)
    assert {s["name"]: s["num_examples"] for s in metadata["dataset_info"]["splits"]} == {
        "train": 4, "validation": 1, "test": 2,
    }  # fmt: skip
    assert metadata["license"] == "other" and metadata["license_name"] == "celebamask-hq"
    assert json.loads((celeba_built / "id2label.json").read_text()) == {
        str(i): name for i, name in enumerate(CELEBAMASK_HQ_LABELS)
    }
    text = (celeba_built / "README.md").read_text()
    assert "non-commercial" in text and "MaskGAN" in text and "narayan2025segface" in text
    # Per-class pixel frequencies, recomputed from the loaded labels.
    dataset = load(celeba_built, tmp_path / "cache")
    table = card_label_table(celeba_built)
    for column, split in enumerate(["train", "validation", "test"], start=1):
        counts = sum(np.bincount(np.array(row["label"]).ravel(), minlength=256) for row in dataset[split])
        for value, name in enumerate(CELEBAMASK_HQ_LABELS):
            assert table[str(value)][0] == name
            assert table[str(value)][column] == percent(int(counts[value]), int(counts.sum())), (split, name)


def test_celebamask_hq_layout_errors(tmp_path):
    root = tmp_path / "raw"
    (root / "CelebA-HQ-img").mkdir(parents=True)
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("idx orig_idx orig_file\n")
    with pytest.raises(RawLayoutError) as error:
        build_celebamask_hq(root, tmp_path / "out", progress=False)
    message = str(error.value)
    assert "\n" not in message
    assert "missing CelebAMask-HQ-mask-anno/, list_eval_partition.txt" in message
    assert "CelebA release" in message  # where the partition file comes from
    assert not (tmp_path / "out").exists()
    # Pointing at the parent of the release folder names the right folder.
    with pytest.raises(RawLayoutError, match="CelebAMask-HQ-mask-anno/, CelebA-HQ-to-CelebA-mapping.txt"):
        build_celebamask_hq(tmp_path, tmp_path / "out2", progress=False)


def test_celebamask_hq_nested_folder_is_suggested(celeba_raw, tmp_path):
    with pytest.raises(RawLayoutError, match=re.escape(f"It looks like {celeba_raw} is the folder to pass")):
        build_celebamask_hq(celeba_raw.parent, tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------------------------------- LaPa


def lapa_points(offset: float = 0.0) -> np.ndarray:
    index = np.arange(106, dtype=np.float64)
    return np.stack([index * 1.5 + 0.25 + offset, 200.0 - index * 0.75], axis=1)


def write_lapa_sample(root: Path, split: str, name: str, size=(40, 32), label_size=None, points=None, count=106):
    width, height = size
    write_jpeg(root / split / "images" / f"{name}.jpg", width, height, seed=len(name) + ord(name[0]))
    lw, lh = label_size or size
    y, x = np.mgrid[0:lh, 0:lw]
    write_png(root / split / "labels" / f"{name}.png", ((x // 4 + y // 8 + ord(name[0])) % 11).astype(np.uint8))
    points = lapa_points(ord(name[0])) if points is None else points
    numbers = " ".join(f"{v:.4f}" for v in points.ravel())
    (root / split / "landmarks").mkdir(parents=True, exist_ok=True)
    (root / split / "landmarks" / f"{name}.txt").write_text(f"{count}\n{numbers}\n")


@pytest.fixture(scope="module")
def lapa_raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lapa") / "LaPa"
    for split in ("train", "val", "test"):
        for part in ("images", "labels", "landmarks"):
            (root / split / part).mkdir(parents=True)
    write_lapa_sample(root, "train", "b_2")
    write_lapa_sample(root, "train", "a_1", points=lapa_points())
    write_lapa_sample(root, "train", "f_6", size=(40, 32), label_size=(20, 16))  # size mismatch: kept
    write_lapa_sample(root, "train", "c_3")
    write_truncated_jpeg(root / "train" / "images" / "c_3.jpg")  # corrupt
    write_lapa_sample(root, "train", "d_4")
    (root / "train" / "labels" / "d_4.png").unlink()  # missing label
    write_lapa_sample(root, "train", "e_5", points=lapa_points()[:68], count=68)  # not 106 points
    (root / "train" / "images" / "notes.txt").write_text("not an image")
    write_lapa_sample(root, "val", "v_1")
    write_lapa_sample(root, "test", "t_2")
    write_lapa_sample(root, "test", "t_1")
    return root


@pytest.fixture(scope="module")
def lapa_built(lapa_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lapa-out") / "lapa-hf"
    build_lapa(lapa_raw, out, progress=False)
    return out


def test_lapa_rows_landmarks_and_five_points(lapa_built, lapa_raw, tmp_path):
    dataset = load(lapa_built, tmp_path / "cache")
    assert {split: dataset[split]["id"] for split in dataset} == {
        "train": ["a_1", "b_2", "f_6"], "validation": ["v_1"], "test": ["t_1", "t_2"],
    }  # fmt: skip
    row = dataset["train"][0]
    points = lapa_points()
    assert np.allclose(np.array(row["landmarks"]), points, atol=1e-4)
    # The 5 points, 0-based indices into the 106 (spec 3.2): mean(74,104), mean(83,105), 54, 84, 90.
    expected = [
        (points[74] + points[104]) / 2,
        (points[83] + points[105]) / 2,
        points[54],
        points[84],
        points[90],
    ]
    assert np.allclose(np.array(row["landmarks_5"]), expected, atol=1e-4)
    # By hand: point i is (1.5 i + 0.25, 200 - 0.75 i).
    assert np.allclose(row["landmarks_5"][0], [133.75, 133.25]) and np.allclose(row["landmarks_5"][4], [135.25, 132.5])
    # Labels round-trip exactly; images byte for byte.
    for split, folder in (("train", "train"), ("validation", "val"), ("test", "test")):
        for item, image_bytes in zip(dataset[split], raw_bytes(dataset[split], "image"), strict=True):
            raw_label = np.array(Image.open(lapa_raw / folder / "labels" / f"{item['id']}.png"))
            assert np.array_equal(np.array(item["label"]), raw_label)
            assert image_bytes == (lapa_raw / folder / "images" / f"{item['id']}.jpg").read_bytes()
    assert np.array(dataset["train"][2]["label"]).shape == (16, 20)  # f_6 keeps its own label size


def test_lapa_report(lapa_built):
    found = problems(lapa_built)
    assert found >= {
        ("corrupt_file", "skipped", "c_3", "train"),
        ("missing_file", "skipped", "d_4", "train"),
        ("bad_landmarks", "skipped", "e_5", "train"),
        ("size_mismatch", "kept", "f_6", "train"),
        ("unrecognised_file", "ignored", None, "train"),
    }
    content = report(lapa_built)
    assert content["skipped"] == 3
    assert content["splits"]["train"] == {"listed": 6, "written": 3, "skipped": 3}
    assert json.loads((lapa_built / "id2label.json").read_text()) == {str(i): n for i, n in enumerate(LAPA_LABELS)}
    assert "Skipped" not in (lapa_built / "README.md").read_text().split("## Build report")[0]


def test_lapa_layout_error_names_missing_folders(lapa_raw, tmp_path):
    raw = tmp_path / "LaPa"
    (raw / "train" / "images").mkdir(parents=True)
    (raw / "val").mkdir()
    with pytest.raises(RawLayoutError) as error:
        build_lapa(raw, tmp_path / "out", progress=False)
    message = str(error.value)
    assert "missing train/labels/, train/landmarks/, val/images/" in message and "test/landmarks/" in message
    assert "\n" not in message


def test_num_proc_and_sharding_preserve_rows(lapa_raw, lapa_built, tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "ROWS_PER_ROW_GROUP", 1)
    out = tmp_path / "sharded"
    build_lapa(lapa_raw, out, num_proc=2, progress=False, max_shard_bytes=1)
    shards = sorted(p.name for p in (out / "data").iterdir())
    assert shards == [
        "test-00000-of-00002.parquet", "test-00001-of-00002.parquet",
        "train-00000-of-00003.parquet", "train-00001-of-00003.parquet", "train-00002-of-00003.parquet",
        "validation-00000-of-00001.parquet",
    ]  # fmt: skip
    sharded = load(out, tmp_path / "cache1")
    single = load(lapa_built, tmp_path / "cache2")
    for split in ("train", "validation", "test"):
        assert sharded[split]["id"] == single[split]["id"]
        assert sharded[split]["landmarks_5"] == single[split]["landmarks_5"]
        assert raw_bytes(sharded[split], "label") == raw_bytes(single[split], "label")


# ---------------------------------------------------------------------------------------------------- Helen


def helen_file_points(xs: list[float], ys: list[float]) -> np.ndarray:
    """68 points at twice the image scale, cycling through the given coordinates."""
    return np.array([[xs[i % len(xs)], ys[i % len(ys)]] for i in range(68)], dtype=np.float64)


def write_helen_sample(root: Path, split: str, base: str, size=(60, 50)) -> None:
    width, height = size
    write_jpeg(root / split / f"{base}_image.jpg", width, height, seed=len(base))
    y, x = np.mgrid[0:height, 0:width]
    write_png(root / split / f"{base}_label.png", ((x // 6 + y // 5) % 11).astype(np.uint8))
    write_jpeg(root / split / f"{base}_viz.jpg", width, height, seed=1)


@pytest.fixture(scope="module")
def helen_raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("helen") / "helen"
    inside = helen_file_points([20 + 10 * k for k in range(7)], [10 + 20 * k for k in range(4)])
    edge = helen_file_points([4 + 16 * k for k in range(8)], [10 + 20 * k for k in range(4)])
    write_helen_sample(root, "train", "100_1")
    write_helen_sample(root, "train", "20_2")
    write_helen_sample(root, "train", "3_3")  # no landmark line
    write_helen_sample(root, "train", "4_4")
    (root / "train" / "4_4_label.png").unlink()  # missing label
    write_helen_sample(root, "train", "5_5")  # its landmark line is malformed
    (root / "train" / "Thumbs.db").write_bytes(b"\0")
    write_helen_sample(root, "test", "t_1")
    lines = [
        " ".join(f"{v:g}" for v in inside.ravel()) + " 100_1",
        "",
        " ".join(f"{v:g}" for v in edge.ravel()) + " 20_2",
        " ".join(f"{v:g}" for v in inside.ravel()) + " 4_4",
        " ".join(f"{v:g}" for v in inside.ravel()[:100]) + " 5_5",
        " ".join(f"{v:g}" for v in edge.ravel()) + " t_1",
    ]
    (root / "landmarks.txt").write_text("\n".join(lines) + "\n")
    return root


def test_helen_landmarks_crop_box_and_order(helen_raw, tmp_path):
    out = tmp_path / "helen-hf"
    build_helen(helen_raw, out, progress=False)
    dataset = load(out, tmp_path / "cache")
    assert sorted(dataset) == ["test", "train"]
    assert dataset["train"]["id"] == ["100_1", "20_2"]  # sorted as strings, as the original
    assert dataset["test"]["id"] == ["t_1"]
    first, second = dataset["train"][0], dataset["train"][1]
    # landmarks.txt is at twice the image scale.
    expected = helen_file_points([20 + 10 * k for k in range(7)], [10 + 20 * k for k in range(4)]) / 2
    assert np.allclose(np.array(first["landmarks"]), expected)
    assert np.array(first["landmarks"]).shape == (68, 2)
    # By hand: x 10..40, y 5..35 -> extent 31, centre (25, 20), side int(37.2) = 37 -> (7, 2, 44, 39).
    assert first["crop_box"] == [7, 2, 44, 39]
    # x 2..58, y 5..35 -> extent (57, 31), centre (30, 20), side 68 -> (-4, -14, 64, 54) clipped to 60x50.
    assert second["crop_box"] == [0, 0, 60, 50]
    raw_label = np.array(Image.open(helen_raw / "train" / "100_1_label.png"))
    assert np.array_equal(np.array(first["label"]), raw_label)
    found = problems(out)
    assert found >= {
        ("missing_landmarks", "skipped", "3_3", "train"),
        ("missing_file", "skipped", "4_4", "train"),
        ("missing_landmarks", "skipped", "5_5", "train"),
        ("bad_landmarks", "ignored", "5_5", None),
        ("unrecognised_file", "ignored", None, "train"),
    }
    assert report(out)["splits"]["train"] == {"listed": 5, "written": 2, "skipped": 3}
    assert "SegFace validates on `test`" in (out / "README.md").read_text()


def test_helen_layout_error(tmp_path):
    (tmp_path / "helen" / "train").mkdir(parents=True)
    with pytest.raises(RawLayoutError, match=r"missing test/, landmarks\.txt"):
        build_helen(tmp_path / "helen", tmp_path / "out", progress=False)


# --------------------------------------------------------------------------------------------------- folder


@pytest.fixture(scope="module")
def facesynthetics() -> Path:
    """The 50 FaceSynthetics samples in ../shared (fails, never skips, when ../shared is missing)."""
    return require_shared("data", "facesynthetics")


def facesynthetics_labels(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "id2label": {str(i): name for i, name in enumerate(FACESYNTHETICS_CLASSES)},
                "ignore_index": 255,
                "pretty_name": "FaceSynthetics samples",
                "license": "c-uda",
                "license_notice": "C-UDA v1.0, non-commercial research use only.",
            }
        )
    )
    return path


def test_facesynthetics_through_folder(facesynthetics, tmp_path):
    out = tmp_path / "fs-hf"
    labels = facesynthetics_labels(tmp_path / "labels.json")
    build_from_folder(
        facesynthetics, facesynthetics, labels, out, mask_suffix="_seg", landmarks_dir=facesynthetics,
        landmarks_suffix="_ldmks", num_proc=2, progress=False,
    )  # fmt: skip
    train = load(out, tmp_path / "cache")["train"]
    stems = sorted(p.stem for p in facesynthetics.glob("*.png") if not p.stem.endswith("_seg"))
    assert len(stems) == 50 and train["id"] == stems
    histogram = np.zeros(256, dtype=np.int64)
    for item, image_bytes in zip(train, raw_bytes(train, "image"), strict=True):
        raw_label = np.array(Image.open(facesynthetics / f"{item['id']}_seg.png"))
        label = np.array(item["label"])
        assert np.array_equal(label, raw_label)
        histogram += np.bincount(label.ravel(), minlength=256)
        assert image_bytes == (facesynthetics / f"{item['id']}.png").read_bytes()
        expected_points = np.loadtxt(facesynthetics / f"{item['id']}_ldmks.txt")
        assert np.allclose(np.array(item["landmarks"]), expected_points, atol=1e-3)
    assert histogram[255] > 0  # the ignore value is present in the data ...
    assert report(out)["problems"] == []  # ... and not reported as an unknown label
    table = card_label_table(out)
    assert table["255"] == ["*(ignore)*", percent(int(histogram[255]), int(histogram.sum()))]
    assert table["13"] == ["hair", percent(int(histogram[13]), int(histogram.sum()))]
    assert "other" not in table
    assert card_metadata(out)["license"] == "c-uda"
    assert report(out)["ignore_index"] == 255


def test_folder_problems_and_errors(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for stem in ("a", "b", "c", "d"):
        write_jpeg(images / f"{stem}.jpg", 16, 12, seed=ord(stem))
    write_jpeg(images / "a.png", 16, 12, seed=1)  # same stem as a.jpg
    write_png(masks / "a.png", np.full((12, 16), 1, np.uint8))
    write_png(masks / "b.png", np.full((12, 16), 7, np.uint8))  # 7 is not in the label map
    colour = np.zeros((12, 16, 3), np.uint8)
    colour[..., 0] = 200
    write_png(masks / "c.png", colour)  # a colour mask
    write_png(masks / "orphan.png", np.zeros((12, 16), np.uint8))
    # d has no mask.
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"id2label": {"0": "background", "1": "face"}, "ignore_index": 255}))
    out = tmp_path / "out"
    summary = build_from_folder(images, masks, labels, out, split="custom", progress=False)
    assert summary.split_rows == {"custom": 2}
    dataset = load(out, tmp_path / "cache")
    assert list(dataset) == ["custom"] and dataset["custom"]["id"] == ["a", "b"]
    assert problems(out) >= {
        ("duplicate_id", "skipped", "a", "custom"),
        ("unknown_label_values", "kept", "b", "custom"),
        ("bad_label", "skipped", "c", "custom"),
        ("missing_file", "skipped", "d", "custom"),
        ("unmatched_file", "ignored", "orphan", None),
    }
    unknown = next(p for p in report(out)["problems"] if p["kind"] == "unknown_label_values")
    assert "[7]" in unknown["detail"]
    assert "| other | *(values not in the label map)* | 50% |" in (out / "README.md").read_text()

    with pytest.raises(RawLayoutError, match="pass --mask-suffix"):
        build_from_folder(images, images, labels, tmp_path / "o2", progress=False)
    bad = tmp_path / "bad.json"
    for content, pattern in (
        ('{"0": "background"}', "non-empty 'id2label'"),
        ('{"id2label": {"x": "a"}}', "must be an integer"),
        ('{"id2label": {"0": "a", "1": "a"}}', "unique"),
        ('{"id2label": {"0": "a"}, "ignore_index": 0}', "also a class"),
        ("{not json", "not valid JSON"),
    ):
        bad.write_text(content)
        with pytest.raises(RawLayoutError, match=pattern):
            build_from_folder(images, masks, bad, tmp_path / "o3", progress=False)
    with pytest.raises(RawLayoutError, match="--masks folder .* does not exist"):
        build_from_folder(images, tmp_path / "nope", labels, tmp_path / "o4", progress=False)
    assert not any((tmp_path / name).exists() for name in ("o2", "o3", "o4"))


def test_folder_sixteen_bit_and_palette_label_maps(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_jpeg(images / "wide.jpg", 8, 6, seed=1)
    write_jpeg(images / "pal.jpg", 8, 6, seed=2)
    wide = np.zeros((6, 8), np.uint16)
    wide[:, 4:] = 300
    write_png(masks / "wide.png", wide)  # 16-bit grayscale
    indices = np.array([[0, 0, 1, 1, 2, 2, 1, 1]] * 6, np.uint8)
    palette = Image.frombytes("P", (8, 6), indices.tobytes())
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    palette.save(masks / "pal.png")  # palette PNG: the indices are the classes
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"id2label": {"0": "background", "1": "a", "2": "b", "300": "c"}}))
    out = tmp_path / "out"
    build_from_folder(images, masks, labels, out, progress=False)
    rows = {row["id"]: row for row in load(out, tmp_path / "cache")["train"]}
    assert np.array_equal(np.array(rows["wide"]["label"]), wide)
    assert np.array_equal(np.array(rows["pal"]["label"]), indices)
    assert report(out)["problems"] == []


# --------------------------------------------------------------------------------------- output guarantees


def test_output_is_atomic_and_protected(lapa_raw, tmp_path):
    out = tmp_path / "out"
    plan = plan_lapa(lapa_raw)
    original = plan.process
    calls = []

    def failing(task):
        calls.append(task.name)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return original(task)

    plan.process = failing
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_dataset(plan, out, progress=False)
    assert not out.exists() and no_leftovers(tmp_path)

    build_lapa(lapa_raw, out, progress=False)
    (out / "marker").write_text("old build")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        build_lapa(lapa_raw, out, progress=False)
    # A failing rebuild leaves the previous build untouched.
    plan = plan_lapa(lapa_raw)
    calls.clear()
    plan.process = failing
    with pytest.raises(RuntimeError):
        write_dataset(plan, out, overwrite=True, progress=False)
    assert (out / "marker").exists() and no_leftovers(tmp_path)
    build_lapa(lapa_raw, out, overwrite=True, progress=False)
    assert not (out / "marker").exists() and (out / "build_report.json").exists() and no_leftovers(tmp_path)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a folder written by this builder"):
        build_lapa(lapa_raw, foreign, overwrite=True, progress=False)
    assert (foreign / "thesis.tex").read_text() == "precious"
    with pytest.raises(ValueError, match="must not lie inside the input folder"):
        build_lapa(lapa_raw, lapa_raw / "out", progress=False)


def test_split_without_usable_samples_is_left_out(lapa_raw, tmp_path):
    import shutil

    raw = tmp_path / "LaPa"
    shutil.copytree(lapa_raw, raw)
    (raw / "val" / "images" / "v_1.jpg").write_bytes(b"\xff\xd8 broken")
    out = tmp_path / "out"
    summary = build_lapa(raw, out, progress=False)
    assert summary.split_rows == {"train": 3, "test": 2}
    assert sorted(load(out, tmp_path / "cache")) == ["test", "train"]
    assert ("empty_split", "skipped", None, "validation") in problems(out)
    assert report(out)["omitted_splits"] == ["validation"]
    assert [s["name"] for s in card_metadata(out)["dataset_info"]["splits"]] == ["train", "test"]


def test_all_samples_unusable_is_an_error(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    (images / "x.jpg").write_bytes(b"garbage")
    write_png(masks / "x.png", np.zeros((4, 4), np.uint8))
    labels = tmp_path / "labels.json"
    labels.write_text('{"id2label": {"0": "background"}}')
    with pytest.raises(ValueError, match="no usable sample .* 1 corrupt_file"):
        build_from_folder(images, masks, labels, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


# ------------------------------------------------------------------------------------------------------ CLI


def load_cli():
    spec = importlib.util.spec_from_file_location("build_dataset_cli", REPO_ROOT / "scripts" / "build_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reports_layout_errors_in_one_line(tmp_path, capsys):
    cli = load_cli()
    (tmp_path / "raw").mkdir()
    code = cli.main(["lapa", "--raw-dir", str(tmp_path / "raw"), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("segface build-dataset: error: ") and "train/images/" in err
    code = cli.main(["helen", "--raw-dir", str(tmp_path / "raw"), "--output-dir", str(tmp_path / "o"), "--public",
                     "--push-to-hub", "me/helen"])  # fmt: skip
    assert code == 2 and "licence forbids redistribution" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- the Hub


def test_push_to_hub_uploads_complete_private_copy(lapa_raw, lapa_built, hub_standin, tmp_path):  # noqa: F811
    url = push_dataset_to_hub(lapa_built, "standin-user/lapa")
    assert url.endswith("/datasets/standin-user/lapa")
    repo = hub_standin.repo("standin-user/lapa", repo_type="dataset")
    assert repo.private
    local = {p.relative_to(lapa_built).as_posix() for p in lapa_built.rglob("*") if p.is_file()}
    assert set(repo.files) == (local - {"build_report.json"}) | {".gitattributes"}
    for path in local - {"build_report.json"}:
        assert repo.files[path].data == (lapa_built / path).read_bytes(), path
    assert all(repo.files[p].lfs for p in repo.files if p.endswith(".parquet"))  # went through the LFS upload
    assert any(method == "PUT" and path.startswith("/_standin/lfs/") for method, path in hub_standin.requests)
    # The Hub copy loads with `datasets` like the local one.
    from_hub = load_dataset("standin-user/lapa", cache_dir=str(tmp_path / "cache-hub"))
    local_copy = load(lapa_built, tmp_path / "cache-local")
    for split in ("train", "validation", "test"):
        assert from_hub[split]["id"] == local_copy[split]["id"]
        assert raw_bytes(from_hub[split], "label") == raw_bytes(local_copy[split], "label")

    # A rebuild with other shards replaces the old ones instead of adding to them.
    rebuilt = tmp_path / "rebuilt"
    (rebuilt.parent).mkdir(exist_ok=True)
    import shutil

    shutil.copytree(lapa_built, rebuilt)
    for shard in (rebuilt / "data").glob("test-*"):
        shard.rename(shard.with_name("test-00000-of-00001-renamed.parquet"))
    push_dataset_to_hub(rebuilt, "standin-user/lapa")
    test_files = sorted(p for p in hub_standin.repo("standin-user/lapa", "dataset").files if p.startswith("data/test"))
    assert test_files == ["data/test-00000-of-00001-renamed.parquet"]

    # An existing public repo is not used for licensed data.
    hub_standin.create_repo("standin-user/public-lapa", repo_type="dataset", private=False)
    with pytest.raises(ValueError, match="already exists and is public"):
        push_dataset_to_hub(lapa_built, "standin-user/public-lapa")
    assert set(hub_standin.repo("standin-user/public-lapa", "dataset").files) == {".gitattributes"}


def test_push_needs_valid_token(lapa_built, hub_standin):  # noqa: F811
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError):
        push_dataset_to_hub(lapa_built, "standin-user/x", token="hf_wrong")
    assert ("dataset", "standin-user/x") not in hub_standin.repos


def test_cli_builds_and_pushes_through_hf_endpoint(facesynthetics, tmp_path):
    labels = facesynthetics_labels(tmp_path / "labels.json")
    out = tmp_path / "fs-hf"
    with HubStandin() as hub:
        env = {**os.environ, **hub.env(), "HF_HOME": str(tmp_path / "hf-home")}
        command = [
            sys.executable, str(REPO_ROOT / "scripts" / "build_dataset.py"), "folder", "--images", str(facesynthetics),
            "--masks", str(facesynthetics), "--mask-suffix", "_seg", "--labels", str(labels), "--output-dir", str(out),
            "--no-progress", "--push-to-hub", "standin-user/facesynthetics",
        ]  # fmt: skip
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "Wrote" in result.stdout and "train 50" in result.stdout and "(private)" in result.stdout
        repo = hub.repo("standin-user/facesynthetics", repo_type="dataset")
        assert repo.private and not hub.server_errors
        for path in (p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()):
            if path != "build_report.json":
                assert repo.files[path].data == (out / path).read_bytes(), path
        assert "build_report.json" not in repo.files
