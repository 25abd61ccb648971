"""Progress of an epoch: a `progress` bar on a terminal, plain periodic lines otherwise
(CI logs, files), so logs stay readable and terminals stay live."""
import sys
import time

from progress.bar import Bar


def format_seconds(seconds):
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}:{m:02d}:{s:02d}' if h else f'{m}:{s:02d}'


class Progress:
    """`update(done, text)` after each step; `finish(text)` at the end. Silent when not
    `enabled` (processes other than rank 0)."""

    def __init__(self, title, total, enabled=True, stream=None, lines=10):
        self.title, self.total, self.enabled = title, total, enabled
        self.stream = stream or sys.stdout
        self.start = time.time()
        self.tty = enabled and self.stream.isatty()
        self.every = max(1, total // lines) if total else 1
        self.bar = Bar(title, max=max(total, 1), file=self.stream, width=24,
                       suffix='%(index)d/%(max)d') if self.tty else None
        self.text = ''

    def eta(self, done):
        elapsed = time.time() - self.start
        return elapsed / done * (self.total - done) if done else 0.0

    def update(self, done, text=None):
        if not self.enabled:
            return
        if text is not None:
            self.text = text
        timing = f'{format_seconds(time.time() - self.start)} ETA {format_seconds(self.eta(done))}'
        if self.bar is not None:
            self.bar.suffix = f'({done}/{self.total}) {timing} | {self.text}'
            self.bar.goto(done)
        elif done % self.every == 0 and done < self.total:
            print(f'{self.title} [{done}/{self.total}] {timing}' + (f' | {self.text}' if self.text
                                                                   else ''),
                  file=self.stream, flush=True)

    def finish(self, text=None):
        if not self.enabled:
            return
        if text is not None:
            self.text = text
        elapsed = format_seconds(time.time() - self.start)
        if self.bar is not None:
            self.bar.suffix = f'({self.total}/{self.total}) {elapsed} | {self.text}'
            self.bar.goto(self.total)
            self.bar.finish()
        else:
            print(f'{self.title} [{self.total}/{self.total}] {elapsed} | {self.text}',
                  file=self.stream, flush=True)
