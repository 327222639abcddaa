"""Stand-in for transformers' tests/generation/test_utils.py, which the 5.24.0 source distribution does not ship.

`ModelTesterMixin` only checks that a model which cannot generate does not inherit `GenerationTesterMixin`;
SegFace does not generate, so the class is never used as a base here.
"""


class GenerationTesterMixin:
    pass
