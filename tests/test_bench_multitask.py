"""benchmarks/bench_multitask.py runs (tiny sizes) and ends with the loop/folded ratio."""
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

import bench_multitask  # noqa: E402


@pytest.mark.slow
def test_bench_multitask_ends_with_the_ratio(capsys):
    bench_multitask.main(['--tasks', '2', '--batch', '2', '--image-size', '32', '--rounds', '1'])
    lines = capsys.readouterr().out.strip().splitlines()
    assert 'cores' in lines[0] and lines[1].startswith('mtabn_v1_resnet18 (width 64), 2 tasks, batch 2')
    assert re.fullmatch(r'ratio loop/folded: training step \d+\.\d\dx, evaluation \d+\.\d\dx',
                        lines[-1])
