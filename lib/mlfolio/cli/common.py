"""What every command shares: the terminal's lasting and progress lines."""

from __future__ import annotations

import shutil
import sys
import threading
from typing import Any


class _Terminal:
    """stderr: lasting lines, and one transient progress line rewritten in place below
    them when stderr is a terminal (left out in a file or pipe, where the stage's final
    line carries the totals). Progress comes from the runner's watcher thread."""

    def __init__(self, stream: Any = None):
        self._stream = stream
        self.pending = False
        self.lock = threading.Lock()

    @property
    def stream(self) -> Any:
        return self._stream or sys.stderr  # looked up late: tests replace sys.stderr

    @property
    def tty(self) -> bool:
        return self.stream.isatty()

    def echo(self, line: str) -> None:
        with self.lock:
            if self.pending:
                self.stream.write("\r\x1b[K")  # clear the progress line
                self.pending = False
            print(line, file=self.stream, flush=True)

    def progress(self, line: str) -> None:
        if not self.tty:
            return
        width = shutil.get_terminal_size().columns - 1  # a wrapped line cannot be redrawn
        with self.lock:
            self.stream.write("\r\x1b[K" + line[:width])
            self.stream.flush()
            self.pending = True


TERMINAL = _Terminal()


def echo(line: str) -> None:
    """A lasting line on stderr (clearing the progress line first)."""
    TERMINAL.echo(line)
