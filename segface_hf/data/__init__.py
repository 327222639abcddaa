"""Dataset builders: turn raw CelebAMask-HQ, LaPa, Helen or a user's own face-parsing folders into `datasets`
folders (parquet shards, dataset card, build report), and upload them to a Hub dataset repo.

Requires the `datasets` package (the `train` / `dev` extras).
"""

try:
    import datasets  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "segface_hf.data needs the `datasets` package: pip install 'segface-hf[train]' (or pip install datasets)."
    ) from error

from .builders import LICENSED_DATASETS, build_celebamask_hq, build_from_folder, build_helen, build_lapa
from .celebamask_hq import merge_part_masks, plan_celebamask_hq
from .common import BuildPlan, Problem, RawLayoutError, SampleOutcome
from .folder import plan_folder
from .labels import ID2LABEL_FILE, LabelSpec, read_label_spec
from .helen import helen_crop_box, plan_helen
from .hub import push_dataset_to_hub
from .lapa import five_point_landmarks, plan_lapa, read_lapa_landmarks
from .writer import REPORT_FILE, BuildSummary, write_dataset

__all__ = [
    "LICENSED_DATASETS",
    "REPORT_FILE",
    "BuildPlan",
    "BuildSummary",
    "ID2LABEL_FILE",
    "LabelSpec",
    "Problem",
    "RawLayoutError",
    "SampleOutcome",
    "build_celebamask_hq",
    "build_from_folder",
    "build_helen",
    "build_lapa",
    "five_point_landmarks",
    "helen_crop_box",
    "merge_part_masks",
    "plan_celebamask_hq",
    "plan_folder",
    "plan_helen",
    "plan_lapa",
    "push_dataset_to_hub",
    "read_label_spec",
    "read_lapa_landmarks",
    "write_dataset",
]
