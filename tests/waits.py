"""How long tests wait for a subprocess, a worker, a DICOM node or a job before calling it hung.

These bound a hang; they are not speed targets (benchmarks measure speed). On the 2-core CI
machine beside a training run, a server start or a job that takes seconds alone has taken over
a minute, and the suite failed twice at 60 s deadlines.
"""

#: a start-up, a single job, a DICOM association (seconds)
HANG_S = 300.0
#: a chain of them: a worker's or node's whole inference pipeline after start-up (seconds)
LONG_HANG_S = 600.0

#: pytest-timeout's limit on one test is ``timeout`` in pyproject.toml (300 s): no test can hang CI.
#: The tests under these folders of tests/ start servers, workers and DICOM peers and wait on them
#: for up to LONG_HANG_S: they get LONG_TEST_S (set by tests/conftest.py; an explicit
#: ``@pytest.mark.timeout`` on a test wins)
LONG_TEST_S = 1200
LONG_TEST_DIRS = ("service", "dicom")
