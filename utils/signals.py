"""Signals in a job that schedulers stop: SLURM, Kubernetes and `timeout` send SIGTERM to
every process of the job, a terminal's Ctrl-C sends SIGINT to the whole foreground group.
Only the main process acts on them (it stops at a step boundary, saves and shuts its data
workers down); a data worker that died of the signal first would turn the stop into a
crash, so workers ignore both. `StopSignals` is how the main process hears them."""
import atexit
import multiprocessing
import signal
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_stop_signals(worker_id=None):
    """A DataLoader worker_init_fn: the worker leaves SIGTERM/SIGINT to the main process."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, 'pthread_sigmask'):  # started inside stop_signals_blocked
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def stop_signals_blocked():
    """Holds SIGTERM/SIGINT back while data workers are started: a worker forked in this
    block inherits the mask, so the signal cannot kill it before `ignore_stop_signals` runs;
    the main process gets any held signal when the block ends."""
    if not hasattr(signal, 'pthread_sigmask'):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@atexit.register  # runs before multiprocessing's own exit handler (registered earlier)
def _end_data_workers():
    """At exit multiprocessing ends its daemonic children (data workers) with SIGTERM and
    waits for them: ours ignore SIGTERM, so they are ended with SIGKILL here instead."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join()


class StopSignals:
    """Turns the first SIGTERM/SIGINT into a request to stop at the next step boundary; a
    second Ctrl-C interrupts at once."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.signum = None
        self.previous = {}

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.signum is not None:
            # torchrun's agent forwards the signal the whole group already got: not a
            # second Ctrl-C from the user
            if signum == signal.SIGINT and not self.runtime.distributed:
                raise KeyboardInterrupt
            return
        self.signum = signum
        if signum == signal.SIGINT and not self.runtime.distributed:
            self.runtime.print('\nCtrl-C: stopping after this step to save a checkpoint '
                               '(Ctrl-C again to quit at once)')
        else:  # a scheduler's signal (or Ctrl-C under torchrun): nobody to press it again
            name = 'SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C'
            status = 143 if signum == signal.SIGTERM else 130
            self.runtime.print(f'\n{name}: stopping after this step to save a checkpoint, '
                               f'then exiting with status {status}')

    def requested(self):
        return self.signum is not None
