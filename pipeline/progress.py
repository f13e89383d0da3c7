"""Progress of a long job: a bar with items/s and ETA on a terminal, plain lines otherwise.

On a terminal (the stream is a TTY) a tqdm bar moves with every batch of results the driver receives (the
encode stage yields its rows ``max_batch`` images at a time, so the bar moves per image at ``--batch-size
1``); redirected, the job prints one plain line per finished unit instead, no control characters.
"""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int, label: str, emit=print, stream=None, unit: str = "img"):
        self.emit, self.bar = emit, None
        stream = stream or sys.stderr
        if emit is not None and total and stream.isatty():
            from tqdm import tqdm

            columns, rows = _size(stream)
            self.bar = tqdm(total=total, desc=label, unit=unit, file=stream, smoothing=0.1, ncols=columns, nrows=rows)

    def advance(self, count: int, line: str | None = None, postfix: str = "") -> None:
        """``count`` more items done; ``line`` is what a redirected output prints (None: nothing this time)."""
        if self.bar is not None:
            self.bar.update(count)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
        elif line and self.emit is not None:
            self.emit(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _size(stream) -> tuple[int, int]:
    """The terminal's columns and rows; 100 x 20 where it reports none (a pseudo-terminal nobody sized:
    tqdm would draw no bar on a terminal of 0 rows)."""
    import os

    try:
        size = os.get_terminal_size(stream.fileno())
        return size.columns or 100, size.lines or 20
    except (OSError, ValueError, AttributeError):
        return 100, 20
