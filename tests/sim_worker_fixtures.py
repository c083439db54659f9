"""Objects served by worker processes in tests/test_sim_worker.py (imported by the workers)."""

import os
import sys
import time

import numpy as np


def expected_arrays() -> dict:
    """Arrays of many dtypes and shapes; `Dummy.arrays` returns exactly these."""
    rng = np.random.default_rng(0)
    return {
        "mask": np.array([[True, False, True], [False, False, True]]),
        "image": rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8),
        "state": rng.standard_normal(7).astype(np.float32),
        "ids": np.arange(-5, 5, dtype=np.int64).reshape(2, 5),
        "scalar": np.array(3.5),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "half": np.array([1.5, -2.0], dtype=np.float16),
        "complex": np.array([1 + 2j, -3j], dtype=np.complex64),
        "big_endian": np.arange(4, dtype=">i4"),
        "strided": np.arange(24, dtype=np.int16).reshape(4, 6)[::2, ::-3].T,
        "nested": [{"depth": np.uint32(7)}, [np.ones((2, 2, 2), dtype=np.float64)]],
    }


class Dummy:
    """A stand-in for a simulator environment."""

    def __init__(self, tag: str = "", noisy: bool = False) -> None:
        self.tag = tag
        if noisy:  # must not corrupt the protocol on stdout
            print("Dummy says hello on stdout")
            os.write(1, b"and writes to file descriptor 1\n")

    def echo(self, x=None):
        return x

    def get_tag(self) -> str:
        return self.tag

    def arrays(self) -> dict:
        return expected_arrays()

    def boom(self) -> None:
        raise ValueError("boom from the worker")

    def crash(self) -> None:
        os._exit(3)

    def crash_once(self, path: str) -> str:
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            os._exit(3)
        return "recovered"

    def hang(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def pid(self) -> int:
        return os.getpid()

    def noisy(self) -> str:
        print("printed to stdout inside a job")
        sys.stdout.flush()
        os.write(1, b"raw write to fd 1 inside a job\n")
        return "still fine"

    def unsendable(self) -> dict:
        return {"ok": [1, {"bad": {1, 2}}]}

    def _private(self) -> str:
        return "should never be reachable"


def broken_factory(**kwargs) -> Dummy:
    raise RuntimeError("this factory always fails")
