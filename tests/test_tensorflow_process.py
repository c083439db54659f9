"""Runs the TensorFlow tests (RLDS export) in a separate pytest process: see tests/conftest.py."""

import os
import subprocess
import sys

from tests.helpers import ROOT


def test_tensorflow_tests_pass_in_their_own_process():
    directory = os.path.join(ROOT, "tests", "tensorflow_process")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", ROOT, directory],
        capture_output=True, text=True, timeout=1500, cwd=ROOT,
        env={**os.environ, "C2A_TENSORFLOW_PROCESS": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
