"""Runs a command for as long as the process that started it lives:

    python -m utils.serve.leash FD -- COMMAND...

The page's Teach job runs in a session of its own (a Ctrl-C in the page's terminal is the
page's to handle), so nothing would end it if the page died without closing: SIGKILL, the
out-of-memory killer. The page keeps the write end of a pipe whose read end `FD` this
process holds; the kernel closes it whatever way the page ends, and then this process sends
the command SIGTERM (a training run saves at its next step and exits), and SIGKILL if it has
not ended after GRACE_SECONDS. Signals sent to this process are the command's: the page
stops the job's whole process group, so this process ignores them itself. The exit status
is the command's (128 + the signal that ended it)."""
import os
import signal
import subprocess
import sys
import threading

GRACE_SECONDS = 120


def watch_the_starter(fd, child, grace=GRACE_SECONDS):
    """Blocks until the pipe's write end is closed, then ends `child`."""
    try:
        while os.read(fd, 1024):
            pass
    except OSError:
        pass
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        child.kill()


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[1] != '--' or not argv[0].isdigit():
        print('usage: python -m utils.serve.leash FD -- COMMAND...', file=sys.stderr)
        return 2
    fd, command = int(argv[0]), argv[2:]
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)  # the group's signal reaches the command too
    child = subprocess.Popen(command, preexec_fn=restore_stop_signals)
    threading.Thread(target=watch_the_starter, args=(fd, child), daemon=True).start()
    code = child.wait()
    return 128 - code if code < 0 else code


def restore_stop_signals():
    """The command hears SIGTERM and SIGINT (ignored signals would be inherited)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)


if __name__ == '__main__':
    sys.exit(main())
