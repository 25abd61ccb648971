"""`--resume auto`: one command a scheduler can re-submit forever. It continues from
<checkpoint dir>/checkpoint.pth.tar when that exists and starts afresh when it does not
(also when the directory holds only args.json/log.txt of a run that died before its first
checkpoint)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

from utils.weights.checkpoint import LAST

if TYPE_CHECKING:
    import argparse

AUTO = 'auto'


def resolve_resume(args: argparse.Namespace) -> bool:
    """Replaces args.resume == 'auto' by the checkpoint to continue from, or '' (a fresh
    start); returns True when --resume was auto. Idempotent."""
    if getattr(args, 'resume', None) != AUTO:
        return False
    directory = args.checkpoint or 'checkpoint'
    last = os.path.join(directory, LAST)
    args.resume = last if os.path.isfile(last) else ''
    return True


def resume_requested_auto(argv: Sequence[str]) -> bool:
    """True when the command line says --resume auto (kept as is in printed commands)."""
    for i, arg in enumerate(argv):
        if arg == '--resume' and i + 1 < len(argv) and argv[i + 1] == AUTO:
            return True
        if arg == f'--resume={AUTO}':
            return True
    return False
