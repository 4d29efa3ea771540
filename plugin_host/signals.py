"""Stopping the live commands: SIGINT or SIGTERM winds down, a second one forces the exit.

``tympan play`` and ``tympan serve`` stop on Ctrl-C (SIGINT) or ``kill``
(SIGTERM): the first signal asks the command to wind down (the audio fades
out, devices and the matcher worker close) and the exit code is 0; a second
one during that wind-down ends the process at once with one line on stderr.

Why handlers of our own, not Python's ``KeyboardInterrupt``:

- a process started as a background job of a non-interactive shell
  (``cmd &`` in a script, some CI runners) inherits SIGINT *ignored*, and
  Python then installs no handler: Ctrl-C did nothing and the live host ran
  on (the hang of issue 13);
- SIGTERM's default kills the process without closing the stream or the
  worker;
- a ``KeyboardInterrupt`` can land anywhere, and a Python handler runs only
  between bytecodes of the main thread: while that thread is blocked in C
  (PortAudio's stop, libjack's deactivate) a second Ctrl-C would wait for it.

So the handler only records the signal, and a watcher thread reads the
signal numbers from :func:`signal.set_wakeup_fd`'s pipe, which the C-level
handler writes at once whatever the main thread is doing: the first sets
:attr:`StopSignals.requested`, the second forces the exit.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

__all__ = ["FORCED_EXIT", "StopSignals"]

FORCED_EXIT = 130          # exit code of a forced (second-signal) exit: 128 + SIGINT
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """SIGINT/SIGTERM handling for the duration of a ``with`` block (main thread only).

    Parameters
    ----------
    prog : str
        The command's name, for the forced-exit message (``"tympan play"``).

    Attributes
    ----------
    requested : threading.Event
        Set by the first signal; the command polls or waits on it.

    Notes
    -----
    Nothing else may install SIGINT/SIGTERM handlers inside the block:
    ``tympan serve`` runs uvicorn in a thread of its own for that reason
    (uvicorn installs handlers only when run in the main thread).
    """

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.requested = threading.Event()
        self._count = 0
        self._count_lock = threading.Lock()
        self._old: dict[int, Any] = {}
        self._old_fd = -1
        self._pipe: tuple[int, int] | None = None

    # -- the block ---------------------------------------------------------------
    def __enter__(self) -> "StopSignals":
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)      # set_wakeup_fd needs a non-blocking fd
        self._pipe = (read_fd, write_fd)
        for sig in _SIGNALS:
            self._old[sig] = signal.signal(sig, self._on_signal)
        self._old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read_fd,), name="tympan-signals",
                         daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.set_wakeup_fd(self._old_fd)
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old.clear()
        if self._pipe is not None:
            # Closing the write end ends the watcher's read with EOF; it closes its end.
            os.close(self._pipe[1])
            self._pipe = None

    # -- what a signal does ------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        # Python-level handler (main thread, maybe late): the wakeup fd has
        # already told the watcher; nothing to do here. It must exist, though:
        # the C handler writes the wakeup fd only for signals Python handles.
        return None

    def _watch(self, read_fd: int) -> None:
        try:
            while True:
                try:
                    data = os.read(read_fd, 64)
                except InterruptedError:
                    continue
                if not data:
                    return
                for signum in data:
                    if signum in _SIGNALS:
                        self._received(signum)
        finally:
            os.close(read_fd)

    def _received(self, signum: int) -> None:
        with self._count_lock:
            self._count += 1
            first = self._count == 1
        if first:
            self.requested.set()
            return
        name = signal.Signals(signum).name
        os.write(2, f"\n{self.prog}: second {name} while stopping: forced exit\n".encode())
        os._exit(FORCED_EXIT)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a stop request; whether one came."""
        return self.requested.wait(timeout)
