"""The test suite: one test module per package module (`test_<module>.py`), plus feature suites and helpers."""
