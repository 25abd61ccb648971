"""Runs a training script as `python SCRIPT ARGS` would, and reads its own resident memory as
each epoch starts: `python tests/memory_probe.py [--leak-mib N] SCRIPT ARGS...`.

When the script prints its `Epoch: [E | N]` line, the probe first hands glibc's free heap
pages back to the system (malloc_trim(0)), then prints `memory-probe: E KIB`. A single
VmRSS reading otherwise moves by ~20 MiB as malloc keeps freed memory or not, which is the
size of the leak the memory test must catch; after the trim, what stays resident is memory
still in use. Nothing is collected here: garbage that only a full collection frees (log.png's
figures once) still counts, as it would in a user's run.

`--leak-mib N` keeps N MiB more each epoch (touched bytes): the leak the test must see."""
import ctypes
import ctypes.util
import os
import runpy
import sys

PREFIX = 'memory-probe:'


def resident_kib():
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmRSS:'))


class EpochProbe:
    """A stdout that passes everything on, and reads the memory at each epoch's first line."""

    def __init__(self, stream, leak_mib):
        self.stream = stream
        self.leak_mib = leak_mib
        self.kept = []
        self.epoch = None  # an epoch's line begun, its memory not yet read
        path = ctypes.util.find_library('c')
        libc = ctypes.CDLL(path) if path else None
        self.trim = getattr(libc, 'malloc_trim', None)

    def write(self, text):
        written = self.stream.write(text)
        for line in text.splitlines():
            if line.startswith('Epoch: ['):
                self.epoch = int(line.split('[')[1].split('|')[0])
        if self.epoch is not None and text.endswith('\n'):  # print() ends lines in a write of their own
            if self.leak_mib:
                self.kept.append(os.urandom(self.leak_mib << 20))
            if self.trim is not None:
                self.trim(0)
            self.stream.write(f'{PREFIX} {self.epoch} {resident_kib()}\n')
            self.epoch = None
        return written

    def __getattr__(self, name):
        return getattr(self.stream, name)


def main(argv):
    leak_mib = 0
    if argv[:1] == ['--leak-mib']:
        leak_mib, argv = int(argv[1]), argv[2:]
    sys.stdout = EpochProbe(sys.stdout, leak_mib)
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    runpy.run_path(argv[0], run_name='__main__')


if __name__ == '__main__':
    main(sys.argv[1:])
