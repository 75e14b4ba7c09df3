"""A library that takes seconds to import, as TensorFlow does (tests/pipeline/test_step_server.py)."""
import time

time.sleep(5)
