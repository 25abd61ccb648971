"""A teaching run as a background process of the page: started in a session of its own,
on a leash (utils.serve.leash: it ends when the page ends, however the page ends), its
output in `output.txt`, its progress read from that output, stopped with SIGTERM (the run
saves at its next step and says how to resume). `job.json` keeps its command, so that a page
started again on the same folder finds a run its predecessor left unfinished and can
continue it (`--resume`)."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from enum import Enum

from utils.errors import AbnError
from utils.weights.checkpoint import load_checkpoint

PROGRESS = re.compile(r'^(Train|Valid|Test) \S+ ?\[\d+/\d+\]')
LEASH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'leash.py')
JOB_FILE = 'job.json'


class TeachState(str, Enum):
    """Where a teaching run of the page is: what the page shows and allows (a string, its
    value wherever it is printed, on every Python)."""
    STARTING = 'starting'
    RUNNING = 'running'
    MEASURING = 'measuring'  # ended; the taught model measured beside the first
    FINISHED = 'finished'
    STOPPED = 'stopped'  # by Stop, or found unfinished: Continue resumes it
    FAILED = 'failed'

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__

    @property
    def busy(self) -> bool:
        return self in (TeachState.STARTING, TeachState.RUNNING, TeachState.MEASURING)


class TeachingJob:
    """One fine-tuning process started from the page: its output, its progress, its stop."""

    def __init__(self, folder, argv, shown):
        self.folder, self.argv, self.shown = folder, argv, shown
        self.output = os.path.join(folder, 'output.txt')
        self.process = None
        self.stopping = False
        self.state = TeachState.STARTING
        self.note = ''
        self.leash = None  # the write end of the leash's pipe
        self.unattended = False  # found unfinished by a page started again

    def start(self, resume=False):
        """Starts the command (with `resume`, continues it from its checkpoint, its output
        appended)."""
        argv = self.argv + (['--resume', self.checkpoint()] if resume else [])
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        # The leash holds the read end of a pipe whose write end only this process holds:
        # it reads the end of file when this process ends, however it ends.
        read_end, self.leash = os.pipe()
        try:
            with open(self.output, 'ab' if resume else 'wb') as out:
                self.process = subprocess.Popen(
                    [sys.executable, LEASH, str(read_end), '--'] + argv, stdout=out,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                    start_new_session=True, pass_fds=(read_end,))
        finally:
            os.close(read_end)
        with open(os.path.join(self.folder, JOB_FILE), 'w') as f:
            json.dump({'argv': self.argv, 'shown': self.shown, 'pid': self.process.pid}, f,
                      indent=1)
        self.stopping, self.note = False, ''
        self.state = TeachState.RUNNING

    @classmethod
    def unfinished(cls, folder):
        """The run of `folder` as a stopped job if a page started it (its job.json) and it
        saved a checkpoint short of its epochs, else None."""
        try:
            with open(os.path.join(folder, JOB_FILE)) as f:
                job = json.load(f)
            saved = load_checkpoint(os.path.join(folder, 'checkpoint.pth.tar'))
            done = saved['epoch'] >= saved['args']['epochs'] and not saved.get('step')
        except (OSError, ValueError, KeyError, TypeError, AbnError):
            return None
        if done:
            return None
        run = cls(folder, list(job['argv']), job['shown'])
        run.state, run.unattended = TeachState.STOPPED, True
        run.previous_pid = job.get('pid')
        return run

    def still_ending(self):
        """Whether the process of an earlier page's run still lives (its leash saw that page
        end and the run is saving)."""
        pid = getattr(self, 'previous_pid', None)
        if not pid:
            return False
        try:
            os.kill(pid, 0)
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                return b'leash.py' in f.read()
        except FileNotFoundError:  # no /proc: the pid lives
            return os.name != 'posix' or not os.path.isdir('/proc')
        except OSError:
            return False

    def lines(self, last=200):
        try:
            with open(self.output, 'rb') as f:
                f.seek(max(0, os.path.getsize(self.output) - 16384))
                text = f.read().decode('utf-8', 'replace')
        except OSError:
            return []
        return text.splitlines()[-last:]

    def progress(self):
        """The newest epoch header and progress line of the run's output."""
        lines = self.lines()
        epoch = next((line for line in reversed(lines) if line.startswith('Epoch: [')), '')
        step = next((line for line in reversed(lines) if PROGRESS.match(line)), '')
        return epoch.strip(), step.strip()

    def warning(self):
        """The run's newest warning line (e.g. the map collapsing towards zero), or ''."""
        return next((line.strip() for line in reversed(self.lines())
                     if line.startswith('warning:')), '')

    def error(self):
        """The run's own one-line error, if it printed one."""
        return next((line.split('error:', 1)[1].strip() for line in reversed(self.lines())
                     if 'error:' in line), None)

    def checkpoint(self, name='checkpoint.pth.tar'):
        return os.path.join(self.folder, name)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.stopping = True
            os.killpg(self.process.pid, signal.SIGTERM)  # the run saves at the next step

    def pasteable(self, shows_paths):
        """The command to paste into a terminal (the page shows a shortened one): whole,
        with this machine's paths, where the page is served to this machine only; else the
        command file that holds it, from the page's folder. A stopped run's continues it."""
        resume = ['--resume', self.checkpoint()] if self.state == TeachState.STOPPED else []
        if not shows_paths:
            return ' '.join(['sh', shown_argument(os.path.join(self.folder, 'command.sh'))]
                            + [shown_argument(a) for a in resume])
        return f'cd {shlex.quote(os.getcwd())} && {shlex.join(self.argv + resume)}'

    def release(self):
        """The run has ended: its leash's pipe is closed."""
        if self.leash is not None:
            os.close(self.leash)
            self.leash = None

    def end(self, timeout=30):
        """The page is stopping: so is the run (it saves first), killed after `timeout` s."""
        if self.process is None:
            return
        self.stop()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def shown_argument(text):
    """A path of the command as a visitor may see it: relative to the page's folder when
    inside it, else `.../<name>` (command.sh has it whole); other arguments as they are."""
    if not os.path.isabs(text):
        return text
    relative = os.path.relpath(text, os.getcwd())
    if relative != os.pardir and not relative.startswith(os.pardir + os.sep):
        return relative
    return '.../' + os.path.basename(text)
