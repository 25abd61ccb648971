"""A teaching run as a background process of the page: started in a session of its own,
its output in `output.txt`, its progress read from that output, stopped with SIGTERM (the
run saves at its next step and says how to resume)."""
import os
import re
import signal
import subprocess

PROGRESS = re.compile(r'^(Train|Valid|Test) \S+ ?\[\d+/\d+\]')


class TeachingJob:
    """One fine-tuning process started from the page: its output, its progress, its stop."""

    def __init__(self, folder, argv, shown):
        self.folder, self.argv, self.shown = folder, argv, shown
        self.output = os.path.join(folder, 'output.txt')
        self.process = None
        self.stopping = False
        self.state = 'starting'  # running, measuring, finished, stopped, failed
        self.note = ''

    def start(self):
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        with open(self.output, 'wb') as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True)
        self.state = 'running'

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

    def end(self, timeout=30):
        """The page is stopping: so is the run (it saves first), killed after `timeout` s."""
        if self.process is None:
            return
        self.stop()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
