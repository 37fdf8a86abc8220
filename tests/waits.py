"""How long tests wait for a subprocess, a worker, a DICOM node or a job before calling it hung.

These bound a hang; they are not speed targets (benchmarks measure speed). On the 2-core CI
machine beside a training run, a server start or a job that takes seconds alone has taken over
a minute, and the suite failed twice at 60 s deadlines.
"""

#: a start-up, a single job, a DICOM association (seconds)
HANG_S = 300.0
#: a chain of them: a worker's or node's whole inference pipeline after start-up (seconds)
LONG_HANG_S = 600.0
