"""Checkpoint files: the authors' format loads strictly with their outputs; unsafe, truncated
and foreign files are refused with one clear line; writes are atomic."""
import os
import pickle

import pytest
import torch

from models import CIFAR_MODELS
from tests import reference
from tests.fakedata import authors_checkpoint, randomise
from utils.errors import AbnError
from utils.weights import checkpoint as ckpt

FAMILIES = [
    ('resnet', dict(depth=20), reference.cifar_resnet, dict(depth=20)),
    ('densenet', dict(depth=16, growthRate=6), reference.cifar_densenet, dict(depth=16)),
    ('wrn', dict(depth=10, widen_factor=2), reference.cifar_wrn, dict(depth=10)),
    ('resnext', dict(depth=11, cardinality=4), reference.cifar_resnext,
     dict(depth=11, cardinality=4)),
]


@pytest.mark.parametrize('legacy', [True, False], ids=['torch0.4-cuda-legacy', 'zip'])
@pytest.mark.parametrize('family,options,ref,ref_options', FAMILIES, ids=[f[0] for f in FAMILIES])
def test_authors_checkpoint_loads_strictly_with_their_outputs(tmp_path, family, options, ref,
                                                              ref_options, legacy):
    source = randomise(CIFAR_MODELS.create(family, num_classes=100, **options), seed=1)
    path = authors_checkpoint(source, str(tmp_path / 'model_best.pth.tar'), legacy=legacy)

    loaded = ckpt.load_checkpoint(path)
    assert ckpt.is_legacy(loaded)
    assert all(k.startswith('module.') for k in loaded['state_dict'])
    assert ckpt.checkpoint_num_classes(loaded) == 100
    model = CIFAR_MODELS.create(family, num_classes=100, **options)
    ckpt.load_model_state(model, loaded, path, family)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref(reference.Weights(source.state_dict()), x, **ref_options)
        got = model(x)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_wrong_architecture_and_class_count_are_named(tmp_path):
    path = authors_checkpoint(CIFAR_MODELS.create('resnet', depth=20, num_classes=100),
                              str(tmp_path / 'c.pth.tar'))
    loaded = ckpt.load_checkpoint(path)
    with pytest.raises(AbnError, match='trained for 100 classes, but this data set has 10'):
        ckpt.load_model_state(CIFAR_MODELS.create('resnet', depth=20, num_classes=10), loaded,
                              path, 'resnet-20')
    with pytest.raises(AbnError, match=r'does not fit resnet-32: .*missing.*Check -a, --depth'):
        ckpt.load_model_state(CIFAR_MODELS.create('resnet', depth=32, num_classes=100), loaded,
                              path, 'resnet-32')


class Payload:
    """A pickle that, if loaded unsafely, would create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth.tar'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'extra': Payload(str(marker))}, path)
    with pytest.raises(AbnError, match=r'refusing to load .*asks to run code \(.*open.*\); '
                                       r'nothing from it was executed'):
        ckpt.load_checkpoint(str(path))
    assert not marker.exists()


def test_malicious_legacy_pickle_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil_legacy.pth.tar'
    with open(path, 'wb') as f:
        pickle.dump({'state_dict': Payload(str(marker))}, f, protocol=2)
    with pytest.raises(AbnError, match='refusing to load|cannot read checkpoint'):
        ckpt.load_checkpoint(str(path))
    assert not marker.exists()


def test_truncated_and_foreign_files(tmp_path):
    good = tmp_path / 'good.pth.tar'
    torch.save({'state_dict': {'w': torch.randn(1000)}, 'epoch': 1}, good)
    data = good.read_bytes()
    truncated = tmp_path / 'truncated.pth.tar'
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(AbnError, match='truncated or not a PyTorch checkpoint'):
        ckpt.load_checkpoint(str(truncated))
    text = tmp_path / 'notes.txt'
    text.write_text('not a checkpoint\n')
    with pytest.raises(AbnError, match='cannot read checkpoint|truncated or not'):
        ckpt.load_checkpoint(str(text))
    other = tmp_path / 'list.pth'
    torch.save([1, 2, 3], other)
    with pytest.raises(AbnError, match='holds no state_dict'):
        ckpt.load_checkpoint(str(other))
    with pytest.raises(AbnError, match='no checkpoint at'):
        ckpt.load_checkpoint(str(tmp_path / 'missing.pth.tar'))
    with pytest.raises(AbnError, match='is a directory'):
        ckpt.load_checkpoint(str(tmp_path))


def test_bare_state_dict_and_compiled_prefix(tmp_path):
    model = CIFAR_MODELS.create('resnet', depth=8, num_classes=10)
    path = tmp_path / 'bare.pth'
    torch.save({f'_orig_mod.{k}': v for k, v in model.state_dict().items()}, path)
    loaded = ckpt.load_checkpoint(str(path))
    ckpt.load_model_state(CIFAR_MODELS.create('resnet', depth=8, num_classes=10), loaded,
                          str(path), 'resnet-8')


def test_atomic_save_keeps_the_previous_file_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / 'checkpoint.pth.tar')
    ckpt.save_checkpoint({'state_dict': {'w': torch.ones(3)}, 'epoch': 1}, path)
    before = open(path, 'rb').read()

    def failing_save(obj, f):
        f.write(b'partial bytes')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(torch, 'save', failing_save)
    with pytest.raises(AbnError, match='No space left on device; the previous file is intact'):
        ckpt.save_checkpoint({'state_dict': {'w': torch.zeros(3)}, 'epoch': 2}, path)
    assert open(path, 'rb').read() == before
    assert sorted(os.listdir(tmp_path)) == ['checkpoint.pth.tar']  # no temporary left behind


def test_saved_files_have_the_usual_mode(tmp_path):
    path = str(tmp_path / 'c.pth.tar')
    ckpt.save_checkpoint({'state_dict': {}}, path)
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask


def test_the_checkpoint_policy_keeps_the_best_by_the_objectives_direction(tmp_path):
    from argparse import Namespace
    from types import SimpleNamespace

    from utils.objectives import SingleLabelObjective
    from utils.train.checkpoint_policy import CheckpointPolicy
    args = Namespace(checkpoint=str(tmp_path / 'run'), resume='', evaluate=False,
                     overwrite=False)
    policy = CheckpointPolicy(args, SimpleNamespace(is_main=True), SingleLabelObjective())
    policy.prepare(torch.nn.Linear(2, 2))
    assert policy.record(50.0) and not policy.record(40.0)
    assert (policy.best, policy.last) == (50.0, 40.0)
    policy.save({'epoch': 1, 'state_dict': {}}, is_best=True)
    assert os.path.exists(policy.path(ckpt.BEST)) and os.path.exists(policy.path(ckpt.LAST))

    class Error(SingleLabelObjective):
        higher_is_better = False
    with pytest.raises(AbnError, match='already holds a run'):  # the directory is now taken
        CheckpointPolicy(args, SimpleNamespace(is_main=True), Error())
    args.checkpoint = str(tmp_path / 'other')
    lower = CheckpointPolicy(args, SimpleNamespace(is_main=True), Error())
    assert lower.record(2.0) and lower.record(1.0) and not lower.record(1.5)
    assert lower.best == 1.0


def test_a_file_without_its_spec_loads_as_the_file_the_engine_writes(tmp_path):
    """The loaders work a spec out of the keys older files hold (save_checkpoint_without_spec):
    the same model, classes, size and normalisation as from the spec the engine writes."""
    from tests.helpers import save_checkpoint_without_spec, save_project_checkpoint, tiny_model
    from utils.weights.loading import load_model
    model = tiny_model(gate='multiply')
    written = load_model(save_project_checkpoint(model, str(tmp_path / 'engine.pth.tar')))
    guessed = load_model(save_checkpoint_without_spec(model, str(tmp_path / 'older.pth.tar')))
    assert 'model_spec' in torch.load(str(tmp_path / 'engine.pth.tar'), weights_only=True)
    for field in ('script', 'arch', 'model_args', 'class_names', 'image_size', 'dataset'):
        assert getattr(written.spec, field) == getattr(guessed.spec, field), field
    assert written.description == guessed.description
    assert [list(v) for v in written.normalization] == [list(v) for v in guessed.normalization]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(written.model(x), guessed.model(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
