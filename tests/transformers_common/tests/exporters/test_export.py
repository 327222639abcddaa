"""Stand-in for transformers' tests/exporters/test_export.py, which the 5.24.0 source distribution does not ship.

`ModelTesterMixin` derives from `ExportTesterMixin`; the export checks it would add are written for SegFace in
tests/test_export.py (torch.export strict and non-strict, torch.compile with a dynamic batch).
"""


class ExportTesterMixin:
    pass
