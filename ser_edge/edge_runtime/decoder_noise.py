"""Keep the MP3 decoder's diagnostics off the process's stderr.

libmpg123, inside the libsndfile that soundfile bundles, writes notes such as
``Note: Illegal Audio-MPEG-Header 0x... at offset 8208.`` and
``[src/libmpg123/layer3.c:...] error: dequantization failed!`` straight to file
descriptor 2 when it meets a damaged MP3 stream, and nothing in soundfile's API turns
them off. They would break the rule that a bad file gets one line on stderr (the
library's own error, which says the same thing), and they would surface in apps that
embed the runtime.

:func:`decoder_stderr_filtered` points descriptor 2 at a temporary file while a decoder
runs, then restores it and writes back every captured line that is not the decoder's,
so that output of other threads in that window is delayed, not lost. Nested and
concurrent uses share one redirection: the first to enter starts it, the last to leave
ends it. Where descriptor 2 cannot be duplicated (a process without stderr) nothing is
redirected.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from typing import IO, Iterator

STDERR_FD = 2
# The shapes of libmpg123's messages: its debug macros prefix the source file
# ("[src/libmpg123/parse.c:do_readahead():1083] warning: ..."), its notes start "Note: ".
DECODER_LINE = re.compile(rb"^(?:\[src/libmpg123/|Note: )")

_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None
_capture: IO[bytes] | None = None


def _start() -> None:
    global _saved_fd, _capture
    try:
        sys.stderr.flush()  # what Python buffered so far goes to the real stderr
    except (AttributeError, OSError, ValueError):
        pass
    try:
        capture = tempfile.TemporaryFile()
    except OSError:  # no writable temporary folder: leave stderr as it is
        return
    try:
        saved = os.dup(STDERR_FD)
    except OSError:
        capture.close()
        return
    os.dup2(capture.fileno(), STDERR_FD)
    _saved_fd, _capture = saved, capture


def _stop() -> None:
    global _saved_fd, _capture
    if _saved_fd is None or _capture is None:
        return
    saved, capture = _saved_fd, _capture
    _saved_fd = _capture = None
    os.dup2(saved, STDERR_FD)
    os.close(saved)
    capture.seek(0)
    kept = [line for line in capture.read().splitlines(keepends=True) if not DECODER_LINE.match(line)]
    capture.close()
    if kept:
        os.write(STDERR_FD, b"".join(kept))


@contextlib.contextmanager
def decoder_stderr_filtered() -> Iterator[None]:
    """Within the block, libmpg123's lines on descriptor 2 are dropped; other lines are kept."""
    global _depth
    with _lock:
        if _depth == 0:
            _start()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _stop()
