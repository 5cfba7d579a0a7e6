"""Reading the broker's log lines (Rust writes them to file descriptor 2) in tests."""

from __future__ import annotations

import os


def captured_stderr() -> str:
    """Everything written to stderr so far in a test that uses `capfd`, read without
    consuming it. Polling `capfd.readouterr()` instead loses lines: it truncates the
    capture file after reading, and a line the broker writes in between is gone."""
    size = os.fstat(2).st_size
    return os.pread(2, size, 0).decode("utf-8", "replace")
