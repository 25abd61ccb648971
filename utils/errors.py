"""The one exception the scripts show as a line of text, and `run`, which shows it: every
layer (data, checkpoints, devices) raises AbnError without importing the command line."""
import os
import sys


class AbnError(Exception):
    """A problem with the user's input or environment, shown as one line without traceback."""


def run(main, argv=None):
    """Runs `main(argv)` and turns the expected failures into one line on stderr and a
    non-zero exit status."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'abn'
    try:
        return main(argv)
    except AbnError as error:
        print(f'{prog}: error: {error}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        sys.exit(130)
