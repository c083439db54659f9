"""Test-session setup.

TensorFlow and SAPIEN's renderer cannot share a process (lavapipe segfaults once TensorFlow is
loaded), so the TensorFlow tests live in tests/tensorflow_process/ and run in their own pytest
process, started by tests/test_tensorflow_process.py with C2A_TENSORFLOW_PROCESS=1; any other
session leaves them out.
"""

import os

collect_ignore = [] if os.environ.get("C2A_TENSORFLOW_PROCESS") else ["tensorflow_process"]
