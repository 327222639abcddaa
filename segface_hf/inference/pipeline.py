"""Make `transformers.pipeline("image-segmentation", model=...)` accept SegFace models.

The pipeline already works through SegFace's image processor (`post_process_semantic_segmentation`) and returns
one `{"label", "mask", "score": None}` per class present, as for SegFormer. Two registrations remove its rough edges:

- `ImageSegmentationPipeline` checks the model class against `transformers`' own list of segmentation models (the
  Auto-class registrations are not in it) and logs an error for any other model; SegFace is added to that list.
- the pipeline also tries to load a video processor: for a folder whose `preprocessor_config.json` names remote code
  (every converted SegFace folder does, so that it loads without this package), that attempt asks on the terminal
  whether to run the custom code. Registering "no video processor" for `SegFaceConfig` answers it locally.

Importing `segface_hf` runs [`register_pipeline_support`].
"""

from __future__ import annotations

from ..configuration_segface import SegFaceConfig


def register_pipeline_support() -> None:
    """Register SegFace with the `image-segmentation` pipeline (idempotent)."""
    from transformers import AutoVideoProcessor
    from transformers.models.auto import modeling_auto
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING

    modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES.setdefault(
        SegFaceConfig.model_type, "SegFaceForSemanticSegmentation"
    )
    if SegFaceConfig not in VIDEO_PROCESSOR_MAPPING:
        AutoVideoProcessor.register(SegFaceConfig, video_processor_classes={}, exist_ok=True)


__all__ = ["register_pipeline_support"]
