"""log.txt and log.png: the columns (the authors' five first), truncation on resume, the plot."""
from utils.objectives import SingleLabelObjective
from utils.objectives.base import AUTHORS_COLUMNS
from utils.train.logger import COLUMNS, Logger

epoch_row = SingleLabelObjective().log_row

TRAIN = dict(loss=1.5, per_top1=60.0, att_loss=0.75, per_loss=0.75, att_top1=55.0)
VALID = dict(loss=1.25, per_top1=65.0, att_loss=0.5, per_loss=0.75, att_top1=62.5,
             per_top5=90.0, att_top5=87.5)


def read(path):
    with open(path) as f:
        return [line.rstrip('\n').split('\t') for line in f]


def test_columns_begin_with_the_authors():
    assert COLUMNS[:5] == AUTHORS_COLUMNS == ['Learning Rate', 'Train Loss', 'Valid Loss',
                                               'Train Acc.', 'Valid Acc.']
    assert len(set(COLUMNS)) == len(COLUMNS)


def test_epoch_row_puts_each_value_under_its_column():
    row = dict(zip(COLUMNS, epoch_row(0.1, TRAIN, VALID, 12.0)))
    assert row == {'Learning Rate': 0.1, 'Train Loss': 1.5, 'Valid Loss': 1.25,
                   'Train Acc.': 60.0, 'Valid Acc.': 65.0, 'Train Att Loss': 0.75,
                   'Train Per Loss': 0.75, 'Valid Att Loss': 0.5, 'Valid Per Loss': 0.75,
                   'Train Att Acc.': 55.0, 'Valid Att Acc.': 62.5, 'Valid Top-5': 90.0,
                   'Valid Att Top-5': 87.5, 'Epoch Time (s)': 12.0}


def test_rows_are_tab_separated_under_the_header(tmp_path):
    path = tmp_path / 'log.txt'
    logger = Logger(str(path))
    logger.append(epoch_row(0.1, TRAIN, VALID, 12.0))
    lines = read(path)
    assert lines[0] == COLUMNS
    assert lines[1][:5] == ['0.100000', '1.500000', '1.250000', '60.000000', '65.000000']
    assert len(lines) == 2 and len(lines[1]) == len(COLUMNS)


def test_resume_keeps_the_checkpoints_epochs_and_drops_later_rows(tmp_path):
    """A run killed after logging epoch 3 but before its checkpoint resumes from epoch 2."""
    path = tmp_path / 'log.txt'
    logger = Logger(str(path))
    for epoch in range(3):
        logger.append(epoch_row(0.1, TRAIN, VALID, float(epoch)))
    resumed = Logger(str(path), resume_epochs=2)
    assert [row[-1] for row in resumed.rows] == [0.0, 1.0]
    assert len(read(path)) == 3
    resumed.append(epoch_row(0.01, TRAIN, VALID, 9.0))
    assert [line[-1] for line in read(path)[1:]] == ['0.000000', '1.000000', '9.000000']


def test_a_new_run_and_a_foreign_log_start_empty(tmp_path):
    path = tmp_path / 'log.txt'
    path.write_text('\t'.join(AUTHORS_COLUMNS) + '\n0.1\t1\t1\t50\t50\n')  # the authors' log
    assert Logger(str(path), resume_epochs=1).rows == []
    assert read(path) == [COLUMNS]
    Logger(str(path)).append(epoch_row(0.1, TRAIN, VALID, 1.0))
    assert len(Logger(str(path)).rows) == 0  # not resuming: a fresh log


def test_plot_is_written_and_an_empty_log_draws_nothing(tmp_path):
    logger = Logger(str(tmp_path / 'log.txt'))
    logger.plot(str(tmp_path / 'empty.png'))
    assert not (tmp_path / 'empty.png').exists()
    for epoch in range(3):
        logger.append(epoch_row(0.1 * 0.1 ** (epoch // 2), TRAIN, VALID, 1.0))
    logger.plot(str(tmp_path / 'log.png'), title='ABN ResNet-8')
    with open(tmp_path / 'log.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
