"""segface-hf: SegFace face parsing as a Hugging Face `transformers` model.

Importing the package registers `SegFaceConfig`, `SegFaceForSemanticSegmentation` and `SegFaceImageProcessor` (with
its torchvision backend `SegFaceImageProcessorFast`) with `AutoConfig`, `AutoModelForSemanticSegmentation` and
`AutoImageProcessor`.
"""

from . import third_party_logging  # noqa: F401  (first: it filters a notice that importing transformers logs)

from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation
from transformers.models.auto import image_processing_auto

from .configuration_segface import (
    CELEBAMASK_HQ_LABELS,
    HELEN_LABELS,
    LABEL_SETS,
    LAPA_LABELS,
    OFFICIAL_VARIANTS,
    SegFaceConfig,
    backbone_config_for,
)
from .image_processing_segface import SegFaceImageProcessor
from .image_processing_segface_fast import SegFaceImageProcessorFast
from .errors import SegFaceError
from .image_io import SegFaceImageError
from .modeling_segface import SegFaceForSemanticSegmentation, SegFacePreTrainedModel

__version__ = "0.1.0"

AutoConfig.register(SegFaceConfig.model_type, SegFaceConfig, exist_ok=True)
AutoModelForSemanticSegmentation.register(SegFaceConfig, SegFaceForSemanticSegmentation, exist_ok=True)
AutoImageProcessor.register(
    SegFaceConfig,
    image_processor_classes={"pil": SegFaceImageProcessor, "torchvision": SegFaceImageProcessorFast},
    exist_ok=True,
)
# transformers picks the torchvision backend when none is asked for, except for the processors on this list (kept
# for filters torchvision does not reproduce). The original resizes with PIL's bicubic filter, which only the PIL
# backend reproduces bit for bit, so it stays the default; backend="torchvision" (or use_fast=True) gives the other.
if SegFaceImageProcessor.__name__ not in image_processing_auto.DEFAULT_TO_PIL_BACKEND_IMAGE_PROCESSORS:
    image_processing_auto.DEFAULT_TO_PIL_BACKEND_IMAGE_PROCESSORS.append(SegFaceImageProcessor.__name__)

# Saved models carry their code, so a folder or Hub repo also loads with trust_remote_code=True without this package.
SegFaceConfig.register_for_auto_class()
SegFaceForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
SegFaceImageProcessor.register_for_auto_class("AutoImageProcessor")
SegFaceImageProcessorFast.register_for_auto_class("AutoImageProcessor")

from .inference.pipeline import register_pipeline_support  # noqa: E402
from .moved_modules import install_moved_module_hints  # noqa: E402

register_pipeline_support()  # pipeline("image-segmentation") accepts SegFace models
install_moved_module_hints()

__all__ = [
    "CELEBAMASK_HQ_LABELS",
    "HELEN_LABELS",
    "LABEL_SETS",
    "LAPA_LABELS",
    "OFFICIAL_VARIANTS",
    "SegFaceConfig",
    "SegFaceError",
    "SegFaceForSemanticSegmentation",
    "SegFaceImageError",
    "SegFaceImageProcessor",
    "SegFaceImageProcessorFast",
    "SegFacePreTrainedModel",
    "backbone_config_for",
]
