import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The exported graphs utils.inference caches go to a folder of the test session's, not ~/.cache.
os.environ['ABN_CACHE'] = tempfile.mkdtemp(prefix='abn-cache-')

# Keep the suite's CPU use predictable on small machines.
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def offline(monkeypatch):
    """Any download attempt fails at once, as on a machine without internet."""
    import urllib.error
    import urllib.request

    def refuse(*args, **kwargs):
        raise urllib.error.URLError('no network (test)')

    monkeypatch.setattr(urllib.request, 'urlopen', refuse)
    monkeypatch.setattr(urllib.request.OpenerDirector, 'open', refuse)


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny models: the fastest, and far faster on a busy
    machine); modules opt in with pytestmark = pytest.mark.usefixtures('one_thread')."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_tiny(tmp_path_factory, dataset, train_size=1024, epochs=3, batch=32, lr=0.1):
    import cifar
    root = tmp_path_factory.mktemp(f'trained-{dataset}')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cifar.main(['--dataset', dataset, '--depth', '8', '--train-size', str(train_size),
                           '--test-size', '64', '--epochs', str(epochs), '--train-batch',
                           str(batch), '--lr', str(lr), '-j', '0', '--gpu-id', 'cpu',
                           '--manualSeed', '1', '--save-attention', '0', '-c', str(root)]) == 0
    finally:
        torch.set_num_threads(threads)
    return str(root / 'checkpoint.pth.tar')


@pytest.fixture(scope='session')
def trained_shapes(tmp_path_factory):
    """A tiny shapes ABN (depth 8) trained briefly, as cifar.py writes it: the start of the
    teaching tests (a random model's map has no structure to move, and its BatchNorm
    statistics are of no images). About 30 s on 2 busy cores."""
    return train_tiny(tmp_path_factory, 'shapes')


@pytest.fixture(scope='session')
def trained_decoy(tmp_path_factory):
    """The same on shapes-decoy, trained until it has learnt its training images, patch and
    all (10 epochs of 4,096 images: 98.7% on them; on the first 1,000 test images, whose
    patch is a random class's, 69%, and 42% with each object amid another image's
    surroundings); 2-3 minutes on 2 cores. Briefer, it has learnt so little that more
    training of any kind raises what the teaching test measures (3 epochs of 1,024 images:
    chance; 4 of 4,096: 4 epochs more without maps did better than with them)."""
    return train_tiny(tmp_path_factory, 'shapes-decoy', train_size=4096, epochs=10, batch=64,
                      lr=0.05)
