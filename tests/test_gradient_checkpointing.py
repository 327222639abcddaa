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


def test_training_memory_benchmark_measures_both_settings(capsys, one_thread):
    """`benchmarks/training_memory.py` on its tiny model, both runs in this process (the fresh processes of a real
    measurement cost an import each): one table row per setting, the same losses (checkpointing recomputes the same
    forward pass), a growth within the peak, and usage errors under the given program name."""
    from benchmarks.training_memory import main

    assert main(["--variant", "tiny", "--in-process", "--steps", "2", "--batch-size", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("load average before: ") and "load average after: " in out
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| tiny at 64 (")]  # fmt: skip
    assert [row[1] for row in rows] == ["off", "on"]
    for _, _, peak, growth, seconds, losses in rows:
        peak_mib, growth_mib = float(peak.removesuffix(" MiB").replace(",", "")), float(growth.split(" MiB")[0])
        assert 0 <= growth_mib < peak_mib  # in this process the steps may reuse memory freed by earlier tests
        assert float(seconds) > 0
        assert len(losses.split(", ")) == 2
    assert rows[0][5] == rows[1][5]
    # The change against the run without checkpointing, from growths given by hand (in this shared process the
    # measured growth of the first run can be 0, which has no ratio).
    from benchmarks.training_memory import table

    made = [{"checkpointing": on, "resolution": 64, "parameters": 2e6, "peak_mib": 900.0 - 25 * on,
             "growth_mib": 100.0 - 25 * on, "seconds_per_step": 1.0, "losses": [1.0]} for on in (False, True)]  # fmt: skip
    off_row, on_row = table("tiny", 1, 1, "cpu", made).splitlines()[2:]
    assert "| off | 900 MiB | 100 MiB |" in off_row and "| on | 875 MiB | 75 MiB (-25%) |" in on_row

    with pytest.raises(SystemExit) as stop:
        main(["--variant", "swinb_faces_512"], prog="segface benchmark training-memory")
    assert stop.value.code == 2
    assert "segface benchmark training-memory: error: Unknown SegFace variant" in capsys.readouterr().err
