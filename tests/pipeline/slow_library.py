"""A library whose import takes as long as the test wants, as TensorFlow's takes seconds: it ends
once the file named by $SLOW_LIBRARY_GATE exists (tests/pipeline/test_step_server.py), or after
longer than any test waits for a task."""
import os
import time

_gate, _deadline = os.environ.get("SLOW_LIBRARY_GATE", ""), time.monotonic() + 300
while _gate and not os.path.exists(_gate) and time.monotonic() < _deadline:
    time.sleep(0.02)
