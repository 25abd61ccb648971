"""Small data sets written in the real on-disk formats, for the loaders' real code paths:
CIFAR-10/100 pickles, SVHN .mat files, ImageFolder trees of PNG/JPEG, and checkpoints in the
authors' format (DataParallel `module.` keys; the legacy torch<=1.5 serialisation with CUDA
storages, as their torch 0.4 scripts wrote them). Image contents come from the `shapes`
generator, so a model can actually learn them."""
import os
import pickle

import numpy as np
import scipy.io
import torch
from PIL import Image

from utils.data.shapes import SHAPE_CLASSES, generate_shapes
from utils.weights import checkpoint as ckpt
from utils.weights.modelspec import build_model


def _pickle(path, obj):
    with open(path, 'wb') as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root, per_batch=20, test=40, seed=0):
    folder = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(folder, exist_ok=True)
    images, labels, _ = generate_shapes(per_batch * 5 + test, seed)
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # CIFAR rows: R, G, B planes
    for b in range(5):
        s = slice(b * per_batch, (b + 1) * per_batch)
        _pickle(os.path.join(folder, f'data_batch_{b + 1}'),
                {'batch_label': f'training batch {b + 1} of 5', 'data': flat[s],
                 'labels': labels[s].tolist(), 'filenames': []})
    _pickle(os.path.join(folder, 'test_batch'),
            {'batch_label': 'testing batch 1 of 1', 'data': flat[5 * per_batch:],
             'labels': labels[5 * per_batch:].tolist(), 'filenames': []})
    _pickle(os.path.join(folder, 'batches.meta'), {'label_names': list(SHAPE_CLASSES),
                                                    'num_cases_per_batch': per_batch})
    return folder, images, labels


def write_cifar100(root, train=60, test=40, seed=1):
    folder = os.path.join(root, 'cifar-100-python')
    os.makedirs(folder, exist_ok=True)
    images, labels, _ = generate_shapes(train + test, seed)
    fine = (labels * 10 + np.arange(len(labels)) % 10).astype(int)  # 100 fine classes
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    _pickle(os.path.join(folder, 'train'), {'data': flat[:train], 'fine_labels': fine[:train].tolist(),
                                            'coarse_labels': labels[:train].tolist()})
    _pickle(os.path.join(folder, 'test'), {'data': flat[train:], 'fine_labels': fine[train:].tolist(),
                                           'coarse_labels': labels[train:].tolist()})
    _pickle(os.path.join(folder, 'meta'), {'fine_label_names': [f'class{i:02d}' for i in range(100)],
                                           'coarse_label_names': list(SHAPE_CLASSES)})
    return folder, images, fine


def write_svhn(root, train=50, test=30, seed=2):
    os.makedirs(root, exist_ok=True)
    out = {}
    for split, n, s in (('train', train, seed), ('test', test, seed + 1)):
        images, labels, _ = generate_shapes(n, s)
        svhn_labels = np.where(labels == 0, 10, labels).astype(np.uint8)  # SVHN writes 0 as 10
        scipy.io.savemat(os.path.join(root, f'{split}_32x32.mat'),
                         {'X': images.transpose(1, 2, 3, 0), 'y': svhn_labels.reshape(-1, 1)})
        out[split] = (images, labels)
    return out


def write_image_folder(root, splits=(('train', 6), ('val', 3)), classes=('cat', 'dog', 'fox'),
                       size=40, seed=3, formats=('png', 'jpg')):
    """root/<split>/<class>/<i>.<fmt>, `n` images per class and split."""
    rng = np.random.default_rng(seed)
    paths = []
    for split, n in splits:
        for c, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                pixels[..., c % 3] = (255 - c * 40) % 256  # a per-class colour cast
                path = os.path.join(folder, f'{i}.{formats[i % len(formats)]}')
                Image.fromarray(pixels).save(path)
                paths.append(path)
    return paths


def randomise(model, seed=0):
    """Random weights and BN statistics, so comparisons are not trivially equal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.dtype.is_floating_point:
                continue
            if name.endswith('running_var'):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.2)
    return model


def authors_checkpoint(model, path, epoch=300, acc=77.5, legacy=True, cuda=True):
    """Saves `model` as the authors' scripts did: DataParallel keys, their five top-level
    keys, and (legacy=True) the pre-1.6 serialisation with CUDA storages."""
    state_dict = {f'module.{k}': v for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=1e-4)
    checkpoint = {'epoch': epoch, 'state_dict': state_dict, 'acc': torch.tensor(acc),
                  'best_acc': torch.tensor(acc), 'optimizer': optimizer.state_dict()}
    if not legacy:
        torch.save(checkpoint, path)
        return path
    import io
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    if cuda:
        # What torch 0.4 wrote for tensors on the GPU: CUDA storage classes, location cuda:0.
        for kind in ('Float', 'Long', 'Double'):
            data = data.replace(f'ctorch\n{kind}Storage\n'.encode(),
                                f'ctorch.cuda\n{kind}Storage\n'.encode())
        data = data.replace(b'X\x03\x00\x00\x00cpu', b'X\x06\x00\x00\x00cuda:0')
        assert b'cuda:0' in data
    with open(path, 'wb') as f:
        f.write(data)
    return path


def save_run_checkpoint(spec, path, seed=0):
    """A checkpoint as the engine writes it: weights, the spec and the format."""
    model = randomise(build_model(spec), seed)
    ckpt.save_checkpoint({'epoch': 1, 'state_dict': model.state_dict(), 'acc': 10.0,
                          'best_acc': 10.0, 'model_spec': spec.to_dict(), 'arch': spec.arch,
                          'model_args': spec.model_args, 'format': ckpt.FORMAT}, path)
    return path
