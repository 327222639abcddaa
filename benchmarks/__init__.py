"""Benchmarks of segface-hf, kept outside the installed package: they time the original SegFace code (imported from
a checkout given on the command line) beside this package's model. Run them with `segface benchmark` or
`python scripts/benchmark.py` from a source checkout; `harness.py` says what is measured and how."""
