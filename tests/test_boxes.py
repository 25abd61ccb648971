"""--attention-boxes: boxes as maps (their union, edge pixels by coverage), read from a CSV or
a folder of Pascal VOC files, found by index or path, moved with their image like maps, the
bad rows refused in one line naming them, and runs of cifar.py, imagenet.py and celeba.py."""
import json
import os

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import celeba
import cifar
import imagenet
from tests.fakedata import write_image_folder
from tests.helpers import assert_refused, run_script
from utils.cli import run
from utils.data.attributes import ShapesMultiDataset
from utils.data.datasets import ImageFolder
from utils.data.shapes import ShapesDataset
from utils.errors import AbnError
from utils.teach.attention_maps import WithAttentionMaps, load_map_set, shapes_mask_subset
from utils.teach.boxes import (box_map, grabcut_map, load_box_map_set, mask_box,
                               write_shapes_boxes)

pytestmark = pytest.mark.usefixtures('one_thread')

TINY = ['--dataset', 'shapes', '--depth', '8', '--train-size', '64', '--test-size', '32',
        '--train-batch', '16', '--test-batch', '32', '-j', '0', '--manualSeed', '3',
        '--save-attention', '0', '--gpu-id', 'cpu']


def write_csv(path, rows, header='image,x0,y0,x1,y1'):
    path.write_text('\n'.join([header] + [','.join(str(v) for v in row) for row in rows]) + '\n')
    return str(path)


def write_voc(path, filename, boxes, names=None, folder=None):
    objects = ''.join(
        f'<object><name>{(names or ["thing"] * len(boxes))[i]}</name><bndbox>'
        f'<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>'
        for i, (x0, y0, x1, y1) in enumerate(boxes))
    folder = f'<folder>{folder}</folder>' if folder else ''
    path.write_text(f'<annotation>{folder}<filename>{filename}</filename>{objects}</annotation>')


# -- the map of some boxes ------------------------------------------------------------------

def test_a_box_map_is_the_union_with_edge_pixels_by_coverage():
    out = box_map(6, 4, [(1, 1, 3, 2), (2.5, 0, 4, 1.5)])
    expected = np.zeros((4, 6), np.float32)
    expected[1, 1:3] = 1  # the first box
    expected[0, 3] = 1  # the second: wholly inside
    expected[0, 2] = expected[1, 3] = 0.5  # half inside
    # pixel (2, 1) is a quarter inside the second box, but wholly inside the first
    assert np.allclose(out, expected)
    assert box_map(4, 4, [(0, 0, 4, 4)]).min() == 1


def test_the_shapes_boxes_are_the_masks_bounding_boxes(tmp_path):
    path = str(tmp_path / 'boxes.csv')
    assert write_shapes_boxes(path, 25, train_size=40) == 10
    train = ShapesDataset(train=True, size=40)
    maps = load_box_map_set(path, train, refine='none')
    assert maps.indices() == shapes_mask_subset(40, 25)
    for index in maps.indices():
        mask = train.masks[index]
        box_of_mask = maps.get(index)
        x0, y0, x1, y1 = mask_box(mask)
        assert box_of_mask.shape == mask.shape and (box_of_mask >= mask).all()
        assert box_of_mask[y0:y1, x0:x1].min() == 1 and box_of_mask.sum() == (x1 - x0) * (y1 - y0)
    # By default each box is cut into its object by GrabCut: close to the masks themselves.
    cut = load_box_map_set(path, train)
    ious = [(cut.get(i).astype(bool) & train.masks[i]).sum()
            / (cut.get(i).astype(bool) | train.masks[i]).sum() for i in cut.indices()]
    boxes = [train.masks[i].sum() / maps.get(i).sum() for i in maps.indices()]
    assert np.mean(ious) > 0.85 and np.mean(ious) > np.mean(boxes) + 0.2, (ious, boxes)


def test_boxes_move_with_their_image_exactly_as_the_same_map_file_does(tmp_path):
    """The box's map and a map file of the same rectangle give the same target through the
    random resized crop and flip, for the same random state."""
    root = tmp_path / 'data'
    write_image_folder(str(root), splits=(('train', 3), ('val', 1)), size=40)
    transform = T.Compose([T.RandomResizedCrop(24), T.RandomHorizontalFlip(), T.ToTensor()])
    train = ImageFolder(str(root / 'train'), transform=transform)
    csv = write_csv(tmp_path / 'b.csv', [('train/dog/1.jpg', 4, 8, 30, 20)])
    drawn = np.zeros((40, 40), np.uint8)
    drawn[8:20, 4:30] = 255
    (tmp_path / 'maps' / 'dog').mkdir(parents=True)
    Image.fromarray(drawn).save(tmp_path / 'maps' / 'dog' / '1.png')
    from_boxes = WithAttentionMaps(train, load_box_map_set(csv, train, refine='none'))
    from_file = WithAttentionMaps(train, load_map_set(str(tmp_path / 'maps'), train, 'folder'))
    index = [i for i, (p, _) in enumerate(train.samples)
             if p.endswith(os.path.join('dog', '1.jpg'))]
    for seed in range(4):
        torch.manual_seed(seed)
        image_a, target_a = from_boxes[index[0]]
        torch.manual_seed(seed)
        image_b, target_b = from_file[index[0]]
        assert torch.equal(image_a, image_b) and target_a['has_map'] and target_b['has_map']
        assert torch.allclose(target_a['map'], target_b['map'], atol=1e-6)
        assert 0 < target_a['map'].mean() < 1


def test_rows_name_images_by_index_path_or_voc_file_name(tmp_path):
    root = tmp_path / 'data'
    write_image_folder(str(root), splits=(('train', 2), ('val', 1)), size=20)
    train = ImageFolder(str(root / 'train'))
    first = train.samples.index(next(s for s in train.samples if s[0].endswith('fox/0.png')))
    csv = write_csv(tmp_path / 'b.csv', [
        ('train/cat/0.png', 0, 0, 10, 10), ('dog/1.jpg', 1, 1, 5, 5), ('dog/1.jpg', 10, 10, 20, 20),
        (first, 0, 0, 20, 20)])
    maps = load_box_map_set(csv, train, refine='none')
    assert len(maps) == 3 and maps.get(first).min() == 1
    dog = next(i for i, (p, _) in enumerate(train.samples)
               if p.endswith(os.path.join('dog', '1.jpg')))
    assert maps.get(dog).sum() == 16 + 100  # both of its boxes
    voc = tmp_path / 'voc'
    voc.mkdir()
    # VOC: 1-based inclusive pixels; ImageNet's files: the class in <folder>, the image's stem
    write_voc(voc / 'a.xml', '1', [(1, 1, 10, 5)], folder='dog')
    write_voc(voc / 'b.xml', '0.png', [(11, 11, 20, 20)])  # a file name in three classes
    with pytest.raises(AbnError, match='b.xml object 1: 0.png names 3 training images'):
        load_box_map_set(str(voc), train, refine='none')
    (voc / 'b.xml').unlink()
    maps = load_box_map_set(str(voc), train, refine='none')
    assert maps.indices() == [dog]
    assert maps.get(dog)[:5, :10].min() == 1 and maps.get(dog).sum() == 50


@pytest.mark.parametrize('row, header, expected', [
    (('train/cat/0.png', 0, 0, 21, 10), None, 'row 2: the box (0, 0, 21, 10) is outside its image '
                                              '(20x20 px'),
    (('train/cat/0.png', 5, 0, 5, 10), None, 'row 2: an empty box (5, 0, 5, 10)'),
    (('train/cat/9.png', 0, 0, 5, 5), None, 'row 2: train/cat/9.png names no training image'),
    (('val/cat/0.png', 0, 0, 5, 5), None, 'row 2: val/cat/0.png is an image of the val split'),
    ((99, 0, 0, 5, 5), None, 'row 2: image 99 is not in the training split'),
    (('train/cat/0.png', 'a', 0, 5, 5), None, 'row 2: x0, y0, x1, y1 must be numbers'),
    (('train/cat/0.png', 0, 0, 5), 'image,x0,y0,x1', 'missing: y1'),
])
def test_bad_rows_are_refused_naming_the_row(tmp_path, row, header, expected):
    root = tmp_path / 'data'
    write_image_folder(str(root), splits=(('train', 1), ('val', 1)), size=20)
    csv = write_csv(tmp_path / 'b.csv', [row], header=header or 'image,x0,y0,x1,y1')
    with pytest.raises(AbnError) as refused:
        load_box_map_set(csv, ImageFolder(str(root / 'train')), refine='none')
    assert expected in str(refused.value)


def test_an_unreadable_image_of_a_box_is_named_in_one_line(tmp_path):
    root = tmp_path / 'data'
    write_image_folder(str(root), splits=(('train', 1), ('val', 1)), size=20)
    (root / 'train' / 'cat' / '0.png').write_bytes(b'not a png')
    csv = write_csv(tmp_path / 'b.csv', [('train/cat/0.png', 0, 0, 5, 5)])
    for refine in ('none', 'grabcut'):
        with pytest.raises(AbnError, match='cannot read the image .*0.png'):
            load_box_map_set(csv, ImageFolder(str(root / 'train')), refine=refine)


def test_boxes_per_attribute_for_a_multi_task_split(tmp_path):
    train = torch.utils.data.Subset(ShapesMultiDataset(train=True, size=20), range(10))
    csv = write_csv(tmp_path / 'b.csv', [(3, 0, 0, 32, 64, 'circle'), (3, 0, 0, 64, 16, 'plus'),
                                         (12, 0, 0, 8, 8, 'circle')],
                    header='image,x0,y0,x1,y1,attribute')
    maps = load_box_map_set(csv, train, refine='none')
    assert maps.indices() == [3] and maps.unused == 1 and len(maps) == 2
    three = maps.get(3)
    names = train.dataset.attribute_names
    assert maps.present(3).tolist() == [name in ('circle', 'plus') for name in names]
    assert three.shape == (len(names), 64, 64)
    assert three[names.index('circle')].sum() == 32 * 64
    assert three[names.index('plus')].sum() == 64 * 16
    bad = write_csv(tmp_path / 'c.csv', [(3, 0, 0, 5, 5, 'square')],
                    header='image,x0,y0,x1,y1,attribute')
    with pytest.raises(AbnError, match="row 2: 'square' is not an attribute"):
        load_box_map_set(bad, train, refine='none')
    with pytest.raises(AbnError, match='add an attribute column'):
        load_box_map_set(write_csv(tmp_path / 'd.csv', [(3, 0, 0, 5, 5)]), train,
                              refine='none')


def test_grabcut_cuts_a_box_into_its_object_even_a_hollow_one():
    """A ring on a textured background: GrabCut keeps the ring and leaves out the box's
    middle and corners, where the plain box would mark background."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 60, (48, 48, 3)).astype(np.uint8)  # dark noise
    yy, xx = np.mgrid[:48, :48]
    radius = np.hypot(yy - 24, xx - 24)
    ring = (radius >= 8) & (radius <= 13)
    pixels[ring] = (230, 40, 40)
    image = Image.fromarray(pixels)
    cut = grabcut_map(image, [(10, 10, 38, 38)])
    assert set(np.unique(cut)) <= {0, 1} and not cut[:10].any() and not cut[38:].any()
    iou = (cut.astype(bool) & ring).sum() / (cut.astype(bool) | ring).sum()
    assert iou > 0.85 and not cut[22:27, 22:27].any()  # the hollow middle is left out
    assert np.array_equal(grabcut_map(image, [(10, 10, 38, 38)]), cut)  # seeded
    # A box that leaves no pixel outside it cannot be cut: it counts whole.
    assert grabcut_map(image, [(0, 0, 48, 48)]).min() == 1
    # A large image is cut at GRABCUT_SIDE and the cut resized back to it.
    large = image.resize((300, 300), Image.NEAREST)
    big = grabcut_map(large, [(62.5, 62.5, 237.5, 237.5)])
    ring_big = np.asarray(Image.fromarray(ring).resize((300, 300), Image.NEAREST))
    assert big.shape == (300, 300) and set(np.unique(big)) <= {0, 1}
    assert (big.astype(bool) & ring_big).sum() / (big.astype(bool) | ring_big).sum() > 0.8


# -- the scripts ----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp('boxes')
    torch.set_num_threads(1)
    assert run(cifar.main, TINY + ['--epochs', '1', '-c', str(root / 'base')]) == 0
    write_shapes_boxes(str(root / 'boxes.csv'), 50, train_size=64)
    return root


@pytest.mark.parametrize('fast, refine', [(False, 'none'), (True, 'none'), (True, 'grabcut')])
def test_cifar_teaches_from_boxes(base, tmp_path, fast, refine, capsys):
    out = str(tmp_path / 'taught')
    argv = TINY + ['--epochs', '2', '--lr', '0.05', '--weights',
                   str(base / 'base' / 'model_best.pth.tar'), '--box-refine', refine,
                   '--attention-boxes', str(base / 'boxes.csv'), '-c', out]
    code, stdout, _ = run_script(cifar.main, argv + (['--fast'] if fast else []), capsys)
    assert code == 0, stdout
    assert 'attention boxes: 32 of 64 training images' in stdout
    assert ('32 images cut' in stdout) == (refine == 'grabcut')
    with open(os.path.join(out, 'args.json')) as f:
        recorded = json.load(f)
    assert recorded['attention_boxes'] == str(base / 'boxes.csv')
    assert recorded['attention_maps_count'] == 32 and recorded['box_refine'] == refine
    with open(os.path.join(out, 'log.txt')) as f:
        rows = f.read().splitlines()[1:]
    losses = [float(row.split('\t')[-2]) for row in rows]  # Train Map Loss, then Taught Score
    assert losses[1] < losses[0]


def test_imagenet_and_celeba_take_boxes(tmp_path, capsys):
    data = tmp_path / 'data'
    write_image_folder(str(data), splits=(('train', 4), ('val', 2)), size=64)
    voc = tmp_path / 'voc'
    voc.mkdir()
    write_voc(voc / 'cat0.xml', 'train/cat/0.png', [(10, 10, 40, 40)])
    write_voc(voc / 'dog3.xml', '3.jpg', [(1, 1, 64, 20)], folder='dog')
    common = ['--epochs', '1', '--train-batch', '4', '--test-batch', '6', '-j', '0',
              '--gpu-id', 'cpu', '--manualSeed', '1', '--save-attention', '0']
    code, stdout, _ = run_script(imagenet.main, [
        '-d', str(data), '-a', 'resnet18', '--image-size', '32'] + common + [
        '--attention-boxes', str(voc), '--teach-by', 'map', '--train-feature-extractor', '-c',
        str(tmp_path / 'in')], capsys)
    assert code == 0 and 'attention boxes: 2 of 12 training images' in stdout
    boxes = write_csv(tmp_path / 'multi.csv',
                      [(0, 0, 0, 32, 32, 'circle'), (1, 8, 8, 40, 40, 'plus')],
                      header='image,x0,y0,x1,y1,attribute')
    code, stdout, _ = run_script(celeba.main, [
        '--dataset', 'shapes-multi', '--image-size', '32', '--width', '8', '--train-size', '16',
        '--test-size', '8', '--residual-attention', '--attention-boxes', boxes,
        '--train-feature-extractor', '-c', str(tmp_path / 'multi')] + common, capsys)
    assert code == 0 and 'attention boxes: 2 of 16 training images' in stdout
    assert '2 images cut' in stdout  # each attribute's boxes, by GrabCut


def test_refusals_of_the_scripts(base, tmp_path, capsys):
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    start = str(base / 'base' / 'model_best.pth.tar')
    common = TINY + ['--epochs', '1', '--weights', start, '-c', str(run_dir)]
    bad = write_csv(tmp_path / 'bad.csv', [(0, 0, 0, 5, 5), (1, 0, 0, 33, 5)])
    assert_refused(cifar.main, common + ['--attention-boxes', bad],
                   'bad.csv row 3: the box (0, 0, 33, 5) is outside its image (32x32 px', run_dir,
                   capsys)
    assert_refused(cifar.main, common + ['--attention-boxes', str(base / 'boxes.csv'),
                                         '--attention-maps', 'shapes-masks:10%'],
                   'give one of --attention-maps and --attention-boxes', run_dir, capsys)
    assert_refused(cifar.main, common + ['--attention-boxes', str(tmp_path / 'none.csv')],
                   'none.csv: no such file or folder', run_dir, capsys)
    assert_refused(cifar.main, TINY + ['--box-refine', 'grabcut', '-c', str(run_dir)],
                   '--box-refine grabcut needs --attention-boxes', run_dir, capsys)
    assert_refused(cifar.main, TINY + ['--map-loss-weight', '3', '-c', str(run_dir)],
                   '--map-loss-weight needs --attention-maps (or --attention-boxes)', run_dir,
                   capsys)
