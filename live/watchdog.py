"""A timer around every KVM_RUN, so that no guest can hold a run past its budget.

A guest that never reaches its exit (a livelock of spurious faults, a loop that never ends) keeps
KVM_RUN in the kernel for ever. The kernel leaves KVM_RUN with EINTR when a signal is pending for the
thread in it, so the watchdog, a thread of its own, sends one: it sets `immediate_exit` in the vCPU's
shared page (so a KVM_RUN that had not started yet returns at once) and kicks the running thread with
`KICK_SIGNAL`.

The signal is SIGURG, whose default action is to ignore it: a kick that arrives after the run ended
does nothing. A signal that is ignored is discarded without interrupting anything, though, so the
process needs a handler for it; Python runs signal handlers on the main thread only, and a C handler
exists only once Python installed one, so `install_kick_handler` is called when this module is imported
(from the main thread, as every shell imports it) and a vCPU run from another thread relies on that.
"""

from __future__ import annotations

import ctypes
import signal
import threading
import time
from types import FrameType

KICK_SIGNAL = signal.SIGURG


def _on_kick(number: int, frame: FrameType | None) -> None:
    """Nothing to do: the signal's only work is to make the thread's KVM_RUN return EINTR."""


def install_kick_handler() -> bool:
    """Install the kick's handler, once, from the main thread. False when it cannot be (another thread,
    and none installed yet): then a running guest cannot be stopped, and `Watchdog` refuses to run it."""
    if signal.getsignal(KICK_SIGNAL) is _on_kick:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(KICK_SIGNAL, _on_kick)
    return True


class Watchdog:
    """One thread that stops the vCPU run armed on it once its deadline passes.

    `arm(run_page, deadline)` before KVM_RUN, `disarm()` after; `fired` says whether the last armed run
    was stopped by it. `close()` ends the thread (idempotent).
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._deadline: float | None = None
        self._target: int | None = None
        self._stop_flag: tuple[int, int] | None = None  # (address of immediate_exit, thread to kick)
        self._closed = False
        self.fired = False
        self._thread = threading.Thread(target=self._watch, name="sptelab-kvm-watchdog", daemon=True)
        self._thread.start()

    def arm(self, immediate_exit_address: int, seconds: float) -> None:
        """Watch the calling thread's next KVM_RUN for `seconds`."""
        if not install_kick_handler():
            raise RuntimeError(
                "no handler for the watchdog's signal: live.watchdog must be imported from the main thread"
            )
        with self._lock:
            self.fired = False
            self._deadline = time.monotonic() + seconds
            self._stop_flag = (immediate_exit_address, threading.get_ident())
            self._lock.notify()

    def disarm(self) -> None:
        with self._lock:
            self._deadline = None
            self._stop_flag = None
            self._lock.notify()

    def _watch(self) -> None:
        with self._lock:
            while not self._closed:
                if self._deadline is None:
                    self._lock.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._lock.wait(left)
                    continue
                assert self._stop_flag is not None
                address, thread = self._stop_flag
                ctypes.c_uint8.from_address(address).value = 1
                self.fired = True
                signal.pthread_kill(thread, KICK_SIGNAL)
                # Kick again every few milliseconds until disarmed: a signal that arrived between two
                # KVM_RUNs of the same step would otherwise be spent.
                self._lock.wait(0.005)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()


install_kick_handler()
