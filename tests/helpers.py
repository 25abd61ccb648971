"""What the command-line tests share: running a script's main in this process, and checking
that a refused input gave one error line and left a run's files alone."""
import glob
import os

from utils.cli import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def documentation():
    """(name, text) of every page that holds commands: README.md, TRAINING.md, docs/*.md;
    lines continued with a backslash are joined."""
    paths = [os.path.join(ROOT, 'README.md'), os.path.join(ROOT, 'TRAINING.md')]
    paths += sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
    pages = []
    for path in paths:
        with open(path) as f:
            pages.append((os.path.relpath(path, ROOT), f.read().replace('\\\n', ' ')))
    return pages


def run_script(main, argv, capsys):
    """Runs a script's main(argv) as its __main__ does; returns (exit status, stdout, stderr)."""
    try:
        code = run(main, argv)
    except SystemExit as done:  # argparse's own errors
        code = done.code
    out, err = capsys.readouterr()
    return code, out, err


def file_states(directory):
    """(inode, mtime, size) of every file below `directory`: a rewrite or an atomic
    replacement changes them (cheaper than reading large checkpoints back)."""
    out = {}
    for base, _, files in os.walk(directory):
        for name in files:
            info = os.stat(os.path.join(base, name))
            out[os.path.relpath(os.path.join(base, name), directory)] = (
                info.st_ino, info.st_mtime_ns, info.st_size)
    return out


def assert_refused(main, argv, expected, run_dir, capsys):
    """`argv` exits non-zero with one `error:` line on stderr containing `expected`, no
    traceback, and every file of `run_dir` as it was."""
    before = file_states(run_dir)
    code, out, err = run_script(main, argv, capsys)
    assert code not in (0, None)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert 'error:' in lines[0] and expected in lines[0], lines[0]
    assert 'Traceback' not in out + err
    assert file_states(run_dir) == before
