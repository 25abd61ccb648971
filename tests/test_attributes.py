"""Multi-label data sets on tiny files written in their real formats: CelebA's text files and
178x218 JPEGs, an attribute CSV folder; the generated shapes-multi set; the map pictures."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data import attributes as attr
from utils.errors import AbnError

CELEBA_NAMES = ('5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips '
                'Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby '
                'Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male '
                'Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin '
                'Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair '
                'Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace '
                'Wearing_Necktie Young').split()


def write_celeba(root, partition=(0, 0, 0, 1, 1, 2, 2), seed=0):
    """root/celeba as the CelebA site ships it: the header lines (a count, then the names; the
    attribute names line ends with a space), right-aligned columns, -1/1 attributes."""
    folder = os.path.join(root, 'celeba')
    os.makedirs(os.path.join(folder, 'img_align_celeba'))
    rng = np.random.default_rng(seed)
    n = len(partition)
    files = [f'{i + 1:06d}.jpg' for i in range(n)]
    values = rng.choice([-1, 1], (n, 40))
    for name in files:
        pixels = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, 'img_align_celeba', name))

    def write(name, lines):
        with open(os.path.join(folder, name), 'w') as f:
            f.write('\n'.join(lines) + '\n')

    write('list_attr_celeba.txt', [str(n), ' '.join(CELEBA_NAMES) + ' '] +
          [f + ' ' + ' '.join(f'{v:2d}' for v in row) for f, row in zip(files, values)])
    write('list_eval_partition.txt', [f'{f} {p}' for f, p in zip(files, partition)])
    write('identity_CelebA.txt', [f'{f} {2880 + i}' for i, f in enumerate(files)])
    write('list_bbox_celeba.txt', [str(n), 'image_id x_1 y_1 width height'] +
          [f'{f}    95  71 226 313' for f in files])
    write('list_landmarks_align_celeba.txt', [str(n), 'lefteye_x lefteye_y righteye_x '
                                              'righteye_y nose_x nose_y leftmouth_x leftmouth_y '
                                              'rightmouth_x rightmouth_y'] +
          [f'{f} 69  109  106  113   77  142   73  152  108  154' for f in files])
    return folder, values


def test_celeba_splits_and_targets(tmp_path):
    _, values = write_celeba(str(tmp_path))
    train = attr.CelebAAttributes(str(tmp_path), 'train')
    valid = attr.CelebAAttributes(str(tmp_path), 'valid')
    test = attr.CelebAAttributes(str(tmp_path), 'test')
    assert (len(train), len(valid), len(test)) == (3, 2, 2)
    assert train.attribute_names == CELEBA_NAMES  # no trailing empty name
    image, target = valid[1]
    assert image.shape == (3, 218, 178) and image.dtype == torch.float32
    assert target.dtype == torch.float32 and target.shape == (40,)
    assert target.tolist() == ((values[4] + 1) / 2).tolist()  # -1/1 -> 0/1
    assert train.targets.shape == (3, 40)


@pytest.mark.parametrize('remove', ['list_eval_partition.txt', 'identity_CelebA.txt',
                                    'img_align_celeba'])
def test_celeba_missing_files_named_in_one_line(tmp_path, remove, offline):
    folder, _ = write_celeba(str(tmp_path))
    target = os.path.join(folder, remove)
    if os.path.isdir(target):
        for name in os.listdir(target):
            os.unlink(os.path.join(target, name))
        os.rmdir(target)
    else:
        os.unlink(target)
    with pytest.raises(AbnError) as error:
        attr.CelebAAttributes(str(tmp_path), 'train')
    message = str(error.value)
    assert '\n' not in message and remove in message and folder in message
    assert 'list_attr_celeba.txt' in message  # and the full list of what goes where


def test_celeba_unreadable_image_and_bad_split(tmp_path):
    folder, _ = write_celeba(str(tmp_path))
    with open(os.path.join(folder, 'img_align_celeba', '000002.jpg'), 'wb') as f:
        f.write(b'not a jpeg')
    data = attr.CelebAAttributes(str(tmp_path), 'train')
    with pytest.raises(AbnError, match='cannot read CelebA image .*000002.jpg'):
        data[1]
    with pytest.raises(AbnError, match="no split 'val'"):
        attr.CelebAAttributes(str(tmp_path), 'val')


def write_folder(root, rows, header='file,split,smiling,hat'):
    os.makedirs(root, exist_ok=True)
    for name in ('a.png', 'b.jpg', 'c.png'):
        Image.fromarray(np.full((20, 24, 3), 40, np.uint8)).save(os.path.join(root, name))
    with open(os.path.join(root, 'attributes.csv'), 'w') as f:
        f.write(header + '\n' + '\n'.join(rows) + '\n')
    return root


def test_attribute_folder(tmp_path):
    root = write_folder(str(tmp_path), ['a.png,train,1,0', 'b.jpg,train,0,1', 'c.png,test,1,1'])
    train = attr.AttributeFolder(root, 'train')
    assert train.attribute_names == ['smiling', 'hat'] and len(train) == 2
    image, target = train[1]
    assert image.shape == (3, 20, 24) and target.tolist() == [0.0, 1.0]
    assert attr.AttributeFolder(root, 'test').targets.tolist() == [[1.0, 1.0]]
    # the columns may come in any order
    root2 = write_folder(str(tmp_path / 'b'), ['train,1,a.png'], header='split,smiling,file')
    assert attr.AttributeFolder(root2, 'train').targets.tolist() == [[1.0]]


@pytest.mark.parametrize('rows,header,split,expected', [
    (['a.png,train,1,0', 'd.png,train,0,1'], None, 'train',
     'image .*d.png \\(split train\\) does not exist'),
    (['a.png,train,1,2'], None, 'train', 'row 2: hat is "2", not 0 or 1'),
    (['a.png,train,1,yes'], None, 'train', 'row 2: hat is "yes"'),
    (['a.png,1,0'], 'file,smiling,hat', 'train', 'no "split" column'),
    (['a.png,train,1'], None, 'train', 'row 2: 3 columns, the header has 4'),
    (['a.png,,1,0'], None, 'train', 'row 2: no split'),
    (['a.png,train,1,0'], None, 'test', "no image in split 'test' \\(splits found: train\\)"),
])
def test_attribute_folder_refuses_bad_input_in_one_line(tmp_path, rows, header, split, expected):
    root = write_folder(str(tmp_path), rows, header or 'file,split,smiling,hat')
    with pytest.raises(AbnError, match=expected) as error:
        attr.AttributeFolder(root, split)
    assert 'attributes.csv' in str(error.value) and '\n' not in str(error.value)


def test_attribute_folder_without_csv(tmp_path):
    with pytest.raises(AbnError, match='no attribute table at .*attributes.csv'):
        attr.AttributeFolder(str(tmp_path), 'train')


def test_shapes_multi_is_deterministic_prefix_stable_and_masks_fit_targets():
    images, targets, masks = attr.generate_multi_shapes(600, seed=3)
    again = attr.generate_multi_shapes(40, seed=3)
    assert np.array_equal(again[0], images[:40]) and np.array_equal(again[2], masks[:40])
    assert images.shape == (600, 64, 64, 3) and images.dtype == np.uint8
    assert targets.shape == (600, 4) and masks.shape == (600, 4, 64, 64)
    assert np.array_equal(masks.any((2, 3)), targets.astype(bool))  # present <=> drawn
    assert 0.4 < targets.mean() < 0.6
    assert not (masks.sum(1) > 1).any()  # kinds never overlap
    assert not np.array_equal(attr.generate_multi_shapes(40, seed=4)[0], images[:40])


def test_shapes_multi_dataset_items():
    data = attr.ShapesMultiDataset(train=False, size=5)
    image, target = data[2]
    assert image.shape == (3, 64, 64) and target.dtype == torch.float32
    assert target.tolist() == data.targets[2].tolist()
    assert data.attribute_names == ['circle', 'triangle', 'plus', 'frame']
    assert data.masks.shape == (5, 4, 64, 64)


def test_map_pictures_as_the_authors_scale_them():
    maps = torch.tensor([[[[-4., 0.], [2., 6.]], [[-8., -2.], [1., 3.]]]])  # (1, 2, 2, 2)
    pos = attr.map_picture(maps, 'pos')  # negatives to 0, min-max over the image's maps
    torch.testing.assert_close(pos, torch.tensor([[[[0., 0.], [2 / 6, 1.]],
                                                   [[0., 0.], [1 / 6, 3 / 6]]]]))
    neg = attr.map_picture(maps, 'neg')  # positives to 0, min-max: -8 -> 0, 0 -> 1
    torch.testing.assert_close(neg, torch.tensor([[[[.5, 1.], [1., 1.]],
                                                   [[0., .75], [1., 1.]]]]))
    both = attr.map_picture(maps, 'both')  # M / (2 max|M|) + 0.5, max|M| = 8
    torch.testing.assert_close(both, maps / 16 + 0.5)
    each = attr.map_picture(maps, 'pos', dims=(-2, -1))  # each map on its own
    torch.testing.assert_close(each[0, 1], torch.tensor([[0., 0.], [1 / 3, 1.]]))
    assert attr.map_picture(-maps.abs(), 'pos').eq(0).all()
    assert attr.map_picture(torch.zeros(1, 2, 2, 2), 'both').eq(0.5).all()
    with pytest.raises(ValueError, match='pos, neg, both'):
        attr.map_picture(maps, 'abs')
