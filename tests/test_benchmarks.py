"""The benchmark scripts run on cifar.py's engine: tiny runs keep them working as the engine
changes, and check that their last line is the fast/authors ratio."""
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

import bench_accuracy  # noqa: E402
import bench_boxes  # noqa: E402
import bench_data  # noqa: E402
import bench_loop  # noqa: E402
import bench_right_reasons  # noqa: E402
import bench_teaching_step  # noqa: E402
import bench_train  # noqa: E402
import profile_step  # noqa: E402


def run_script(module, argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', [module.__file__] + argv)
    module.main()
    return capsys.readouterr().out.strip().splitlines()


@pytest.mark.slow
def test_bench_train_ends_with_the_training_ratio(monkeypatch, capsys):
    lines = run_script(bench_train, ['--depth', '8', '--batch', '8', '--steps', '2',
                                     '--test-batch', '8', '--rounds', '1', '--gpu-id', 'cpu',
                                     '--authors=-j 0', '--data', 'shapes'], monkeypatch, capsys)
    assert lines[0].startswith('machine: ') and 'cores' in lines[0]
    assert any(line.startswith('authors ') and line.endswith('batch 8 -j 0') for line in lines)
    assert any(line.startswith('fast ') and '--fast-data --channels-last' in line
               for line in lines)
    assert re.fullmatch(r'fast/authors training images/s: \d+\.\d\dx', lines[-1])


def test_bench_loop_ends_with_the_loop_overhead(monkeypatch, capsys):
    lines = run_script(bench_loop, ['--depth', '8', '--batch', '8', '--steps', '2',
                                    '--rounds', '1', '--gpu-id', 'cpu', '--clock', 'cpu'],
                       monkeypatch, capsys)
    assert [line.split()[0] for line in lines[2:5]] == ['bare', 'loop', 'loader']
    assert re.fullmatch(r'loop/bare seconds per epoch: \d+\.\d{3}x \([+-]\d+\.\d% overhead\)',
                        lines[-1])


def test_bench_data_ends_with_the_pipeline_ratio(monkeypatch, capsys):
    lines = run_script(bench_data, ['--images', '48', '--batch', '16', '--rounds', '1',
                                    '-j', '0', '--gpu-id', 'cpu'], monkeypatch, capsys)
    assert [line.split()[0] for line in lines[2:5]] == ['authors', 'per-sample', 'fast']
    assert re.fullmatch(r'fast/authors data pipeline images/s: \d+\.\dx', lines[-1])


@pytest.mark.slow
def test_bench_accuracy_ends_with_the_difference(monkeypatch, capsys):
    lines = run_script(bench_accuracy, ['--depth', '8', '--epochs', '2', '--train-size', '64',
                                        '--batch', '32', '--gpu-id', 'cpu'], monkeypatch, capsys)
    assert re.fullmatch(r'fast - authors final test top-1: [+-]\d+\.\d\d points', lines[-1])


def test_profile_step_ends_with_the_layout_ratio(monkeypatch, capsys):
    lines = run_script(profile_step, ['--depth', '8', '--batch', '4', '--steps', '1',
                                      '--rounds', '1', '--gpu-id', 'cpu'], monkeypatch, capsys)
    assert any('convolution' in line for line in lines)  # the profiler's table
    assert re.fullmatch(r'channels-last/NCHW training images/s: \d+\.\d\dx', lines[-1])


@pytest.mark.slow
def test_bench_export_ends_with_the_ratios_to_eager(monkeypatch, capsys):
    import bench_export
    lines = run_script(bench_export, ['--cases', 'resnet8:32:2', '--rounds', '1',
                                      '--seconds', '0.01'], monkeypatch, capsys)
    assert [line.split()[0] for line in lines[2:5]] == ['eager', 'pt2', 'onnxruntime']
    assert re.fullmatch(r'resnet8 32px batch 2: pt2/eager \d+\.\d\dx, '
                        r'onnxruntime/eager \d+\.\d\dx', lines[-1])


def test_bench_boxes_times_grabcut_at_each_size(capsys):
    assert bench_boxes.main(['--images', '2', '--rounds', '1']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert 'cores' in lines[0] and len(lines) == 4
    for line, (width, height) in zip(lines[1:], bench_boxes.SIZES):
        assert re.fullmatch(rf'{width}x{height}: GrabCut \d+\.\d\d ms per image, the plain box '
                            r'\d+\.\d{3} ms \(2 images, median of 1 rounds\)', line), line


def test_bench_teaching_step_gives_each_methods_ratio_to_a_plain_step(monkeypatch, capsys):
    lines = run_script(bench_teaching_step, ['--depth', '8', '--batch', '8', '--steps', '2',
                                             '--rounds', '1', '--threads', '1', '--clock', 'cpu'],
                       monkeypatch, capsys)
    methods = [line.split()[0:2] for line in lines[-4:]]
    assert methods == [['plain', 'step'], ['--teach-by', 'map'], ['--teach-by', 'counterfactual'],
                       ['--teach-by', 'rrr']]
    assert all(re.search(r'x\d+\.\d\d of the plain step$', line) for line in lines[-4:])


@pytest.mark.slow
def test_bench_right_reasons_writes_its_table(tmp_path, capsys):
    assert bench_right_reasons.main(['-o', str(tmp_path), '--train-size', '64', '--depth', '8',
                                     '--epochs', '1', '--test-images', '16',
                                     '--runs', 'counterfactual:50']) == 0
    table = (tmp_path / 'table.md').read_text().splitlines()
    assert table[0].startswith('| model | test top-1 | top-1, the object amid')
    assert [row.split(' | ')[0] for row in table[2:]] == [
        '| plain (the shortcut)', '| clean (no shortcut)', '| fine-tuned without maps',
        '| --teach-by counterfactual, 50% of the masks']
