"""Gradient checkpointing from Trainer (`gradient_checkpointing=True`): the same loss curve as without."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from segface_hf import SegFaceForSemanticSegmentation


class _Faces(torch.utils.data.Dataset):
    def __init__(self, count=8, size=64, labels=5):
        generator = torch.Generator().manual_seed(0)
        self.pixels = torch.randn(count, 3, size, size, generator=generator)
        self.labels = torch.randint(0, labels, (count, size, size), generator=generator)

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


def _loss_curve(family, checkpointing, tmp_path):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = SegFaceForSemanticSegmentation(tiny_config(family))
    arguments = TrainingArguments(
        output_dir=str(tmp_path / f"run-{checkpointing}"), per_device_train_batch_size=2, max_steps=4,
        learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], seed=0, use_cpu=True,
        gradient_checkpointing=checkpointing, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=arguments, train_dataset=_Faces())
    trainer.train()
    checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry], checkpointed


@pytest.mark.parametrize("family", ["swin", "timm-mobilenet"])
def test_trainer_gradient_checkpointing_gives_the_same_loss_curve(family, tmp_path, one_thread):
    plain, none_checkpointed = _loss_curve(family, False, tmp_path)
    checkpointed, modules = _loss_curve(family, True, tmp_path)
    assert not none_checkpointed
    names = {type(m).__name__ for m in modules}
    assert "SegFaceTwoWayAttentionBlock" in names  # the decoder layers
    assert names & {"SwinLayer", "SwinStage", "SegFaceTimmBackbone"}  # and the backbone
    assert len(plain) == len(checkpointed) == 4
    assert plain[0] != plain[-1]  # it trains
    torch.testing.assert_close(torch.tensor(checkpointed), torch.tensor(plain), rtol=1e-5, atol=1e-6)
