"""timm and torchvision models as ABNs beside their plain twins (the same backbone without
the attention branch, which is the library's own model): parameters, the attention map's
resolution, the forward pass's time ABN / plain on this machine, and whether the ABN exported
to ONNX gives PyTorch's outputs (onnxruntime, within 1e-4 of each output's scale).

    python benchmarks/bench_backbones.py --size 224 --batch 4 --rounds 5

Each family's ABN and plain twin are timed in alternating rounds (the median round counts),
so a change in the machine's load affects both alike. Weights are random: speed does not
depend on them. One Markdown table row per family.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from backbone_coverage import onnx_agrees  # noqa: E402
from harness import machine, median  # noqa: E402
from models import IMAGENET_MODELS  # noqa: E402

FAMILIES = ['timm:resnet18', 'timm:convnext_atto', 'timm:efficientnet_b0',
            'timm:mobilenetv3_small_100', 'timm:regnety_002', 'timm:vit_tiny_patch16_224',
            'timm:deit_tiny_patch16_224', 'torchvision:resnet50', 'torchvision:convnext_tiny',
            'torchvision:efficientnet_b0', 'torchvision:mobilenet_v3_large',
            'torchvision:regnet_y_400mf']


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--families', default=','.join(FAMILIES))
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--no-onnx', action='store_true', help='leave the ONNX check out')
    return parser.parse_args()


def seconds(model, x, repeats=3):
    with torch.inference_mode():
        started = time.perf_counter()
        for _ in range(repeats):
            model(x)
        return (time.perf_counter() - started) / repeats


def main():
    options = parse()
    print(machine())
    print(f'input {options.size} px, batch {options.batch}, {options.rounds} alternating rounds')
    print()
    print('| model | parameters ABN / plain (M) | map at {0} px | forward ABN / plain, 1000 '
          'classes | forward ABN / plain, 10 classes | ONNX |'.format(options.size))
    print('|---|---|---|---|---|---|')
    x = torch.randn(options.batch, 3, options.size, options.size)
    for arch in options.families.split(','):
        cells, abn = [], None
        for classes in (1000, 10):  # the attention head's cost grows with the classes
            torch.manual_seed(0)
            pair = [IMAGENET_MODELS.create(arch, num_classes=classes, image_size=options.size,
                                           attention=attention).eval()
                    for attention in (True, False)]
            abn = abn or pair[0]
            seconds(pair[0], x, 1), seconds(pair[1], x, 1)  # warm-up
            times = ([], [])
            for _ in range(options.rounds):
                for model, kept in zip(pair, times):
                    kept.append(seconds(model, x))
            cells.append(f'{median(times[0]) / median(times[1]):.2f}x '
                         f'({median(times[0]) * 1000:.0f} / {median(times[1]) * 1000:.0f} ms)')
            if classes == 1000:
                count = [sum(p.numel() for p in m.parameters()) / 1e6 for m in pair]
        with torch.inference_mode():
            side = abn(x[:1]).attention_map.shape[-1]
        checked = '-' if options.no_onnx else ('yes' if onnx_agrees(abn, options.size) else 'NO')
        print(f'| `{arch}` | {count[0]:.2f} / {count[1]:.2f} | {side}x{side} | {cells[0]} | '
              f'{cells[1]} | {checked} |', flush=True)


if __name__ == '__main__':
    main()
