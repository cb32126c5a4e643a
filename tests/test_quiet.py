"""pipelines.quiet: TensorFlow's start-up notices filtered from fd 2, everything else kept."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import PROJECT


def _stderr(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=PROJECT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_only_the_known_notices_are_dropped_native_writes_included() -> None:
    err = _stderr("""
        import os, sys
        from pipelines.quiet import native_stderr_without
        with native_stderr_without():
            os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
            os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see ...\\n")
            os.write(2, b"a real native warning\\n")
            print("a python warning", file=sys.stderr)
        print("after", file=sys.stderr)
    """)
    assert err.splitlines() == ["a real native warning", "a python warning", "after"]


def test_importing_tensorflow_through_the_package_prints_no_notice() -> None:
    err = _stderr("""
        import sys
        import pipelines  # what every stage and tool imports first
        import keras, tensorflow as tf
        assert type(tf.__spec__.loader).__name__ == "_QuietLoader"
        print("tf", tf.__version__, float(tf.constant(2.0) * 2), file=sys.stderr)
    """)
    assert "oneDNN" not in err and "absl::InitializeLog" not in err
    assert "tf 2." in err and "4.0" in err
