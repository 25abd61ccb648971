"""Which library models become ABNs: every torchvision classifier and one model of each timm
family (a module of timm.models: its smallest model by parameters, timm's tiny test_ models
aside), each built as an ABN (10 classes, random weights, for the input's size), run forward
on two images in eval mode beside its plain twin, and optionally exported to ONNX and
checked against PyTorch.

    python benchmarks/backbone_coverage.py --size 64 -o docs/backbone-coverage.md
    python benchmarks/backbone_coverage.py --names timm:resnet18,torchvision:vgg11 --onnx

Each model ends in one of three ways: `ok` (the row gives the map's size, the parameters
ABN / plain and the forward time ABN / plain; a model whose forward asserts a size other than
the input's is built and run at its own, timm's configured size, and the map says so), `refused` (models.backbones.build said why in
one line: a model that cannot be split) or `ERROR` (anything else: a defect). The table is
written to `-o` (Markdown, with the counts on top); the exit status is 1 where any model
ended in an ERROR.
"""
import argparse
import gc
import os
import sys
import tempfile
import time
import traceback
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import machine  # noqa: E402
from models import backbones  # noqa: E402


def timm_families(pick: str = 'smallest') -> dict[str, str]:
    """{timm module: its first model by name, or its smallest by parameters (its test_
    models aside)}."""
    import timm
    chosen = {}
    for module in timm.list_modules():
        names = timm.list_models(module=module)
        # timm's tiny test_ models stand for a family only where it has no other
        names = [n for n in names if not n.startswith('test_')] or names
        if not names:
            continue
        if pick == 'first':
            chosen[module] = names[0]
            continue
        sizes = {}
        for name in names:
            try:
                with torch.device('meta'):
                    model = timm.create_model(name)
                sizes[name] = sum(p.numel() for p in model.parameters())
            except Exception:  # a model timm cannot build on the meta device: not a candidate
                pass
        chosen[module] = min(sizes, key=sizes.get) if sizes else names[0]
    return chosen


def all_names(sources, pick):
    rows = []  # (family, 'source:name')
    for source in sources:
        if source == 'timm':  # its thousands of names: one model of each family (module)
            rows += [(f'timm.{module}', f'timm:{name}')
                     for module, name in timm_families(pick).items()]
        else:
            rows += [(source, f'{source}:{name}') for name in backbones.library_names(source)]
    return rows


def seconds(model, x, repeats):
    with torch.inference_mode():
        model(x)
        started = time.perf_counter()
        for _ in range(repeats):
            model(x)
        return (time.perf_counter() - started) / repeats


def onnx_agrees(model, size):
    """Exports the ABN as export.py does and compares onnxruntime with PyTorch."""
    import numpy as np
    import onnxruntime as ort

    from utils.weights.export import ExportedAbn, export_program, write_onnx
    from utils.weights.loading import LoadedModel
    loaded = LoadedModel(model, '', None, ((0.5,) * 3, (0.25,) * 3), size, True, None, size)
    wrapped = ExportedAbn(model, loaded.normalization).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'abn.onnx')
        write_onnx(export_program(wrapped, loaded, False), path,
                   ['attention_logits', 'logits', 'attention_map'], {})
        session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        got = session.run(None, {'image': x.numpy()})
        with torch.no_grad():
            want = wrapped(x)
    return all(np.abs(g - w.numpy()).max() <= 1e-4 * max(w.abs().max().item(), 1e-6)
               for g, w in zip(got, want))


def exports(model, size):
    """Whether the library's own model exports to ONNX as export.py exports (an ABN that
    does not export where its plain model does not either fails for the library's reason)."""
    from utils.weights.export import OPSET
    with tempfile.TemporaryDirectory() as folder:
        try:
            torch.onnx.export(model, (torch.randn(1, 3, size, size),),
                              os.path.join(folder, 'plain.onnx'), dynamo=True,
                              opset_version=OPSET, verbose=False)
        except Exception:
            return False
    return True


def one_line(error):
    text = str(error).strip().splitlines()
    return f'{type(error).__name__}: {text[0] if text else ""}'[:200]


def cover(arch, size, repeats, onnx):
    """{'status', 'map', 'params', 'forward', 'onnx', 'reason'} for one model."""
    source, name = arch.split(':', 1)
    row = {'status': 'ok', 'map': '', 'params': '', 'forward': '', 'onnx': '', 'reason': ''}
    try:
        torch.manual_seed(0)
        try:
            abn = backbones.build(source, name, 10, image_size=size).eval()
        except backbones.Final:
            # a model whose forward asserts its own size: built and run at that size (the
            # refusal at `size` says so, and --image-size N is what its user would give)
            own = backbones.library(source).own_size(name)
            if not own or own == size:
                raise
            size = own
            abn = backbones.build(source, name, 10, image_size=size).eval()
            row['size'] = size
    except ValueError as refusal:
        row.update(status='refused', reason=str(refusal).splitlines()[0])
        return row
    except Exception as error:
        row.update(status='ERROR', reason=one_line(error))
        return row
    try:
        pools_tokens = backbones.is_vit(source, name) or isinstance(abn, backbones.TokenGraphABN)
        plain = backbones.library_model(source, name, 10, size, pools_tokens).eval()
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            output = abn(x)
        if tuple(output.perception_logits.shape) != (2, 10) or not torch.isfinite(output.perception_logits).all():
            raise RuntimeError(f'logits of shape {tuple(output.perception_logits.shape)}, or not finite')
        side = output.attention_map.shape[-2:]
        row['map'] = f'{side[0]}x{side[1]}' + (f' ({size} px)' if row.get('size') else '')
        count = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (abn, plain)]
        row['params'] = f'{count[0]:.2f} / {count[1]:.2f}'
        if repeats:
            times = [seconds(m, x, repeats) for m in (abn, plain)]
            row['forward'] = f'{times[0] / times[1]:.2f}x'
        if onnx:
            try:
                agrees = onnx_agrees(abn, size)
            except Exception:
                if exports(plain, size):
                    raise
                row['onnx'] = "no: the library's own model does not export either"
            else:
                row['onnx'] = 'yes' if agrees else 'outputs differ'
    except Exception as error:
        row.update(status='ERROR', reason=one_line(error))
        if os.environ.get('COVERAGE_TRACEBACK'):
            traceback.print_exc()
    return row


def table(rows, results, options):
    lines = []
    for source in dict.fromkeys(arch.split(':')[0] for _, arch in rows):
        mine = [(family, arch) for family, arch in rows if arch.startswith(source + ':')]
        counts = {status: sum(results[arch]['status'] == status for _, arch in mine)
                  for status in ('ok', 'refused', 'ERROR')}
        what = 'families' if source == 'timm' else 'classifiers'
        lines.append(f'- {source}: {counts["ok"]} of {len(mine)} {what} ABNs, '
                     f'{counts["refused"]} refused, {counts["ERROR"]} errors')
    lines += ['', '| family | model | map | parameters ABN / plain (M) | forward ABN / plain '
              '| ONNX | refused or failed: why |', '|---|---|---|---|---|---|---|']
    for family, arch in rows:
        r = results[arch]
        status = '' if r['status'] == 'ok' else r['status']
        why = f'{status}: {r["reason"]}' if status else ''
        lines.append(f'| {family} | `{arch}` | {r["map"]} | {r["params"]} | {r["forward"]} | '
                     f'{r["onnx"]} | {why.replace("|", "/")} |')
    return '\n'.join(lines) + '\n'


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sources', default='torchvision,timm')
    parser.add_argument('--names', default='', help='SOURCE:NAME,... in place of the lists')
    parser.add_argument('--pick', choices=('smallest', 'first'), default='smallest',
                        help="which model of each timm family (default: its smallest)")
    parser.add_argument('--size', type=int, default=64, help='input size in pixels')
    parser.add_argument('--repeats', type=int, default=0,
                        help='timed forward passes per model (0: no timing)')
    parser.add_argument('--onnx', action='store_true', help='export each ABN and check it')
    parser.add_argument('-o', '--output', default='', help='write the Markdown table here')
    return parser.parse_args(argv)


def main(argv=None):
    options = parse(argv)
    warnings.filterwarnings('ignore')
    if options.names:
        rows = [(arch.split(':')[0], arch) for arch in options.names.split(',')]
    else:
        rows = all_names(options.sources.split(','), options.pick)
    results = {}
    for i, (family, arch) in enumerate(rows, 1):
        started = time.perf_counter()
        results[arch] = cover(arch, options.size, options.repeats, options.onnx)
        r = results[arch]
        print(f'[{i}/{len(rows)}] {arch}: {r["status"]} {r["map"]} {r["onnx"]} {r["reason"]} '
              f'({time.perf_counter() - started:.1f} s)', flush=True)
        gc.collect()
    text = table(rows, results, options)
    header = (f'Generated by `python benchmarks/backbone_coverage.py --size {options.size}'
              f'{f" --repeats {options.repeats}" if options.repeats else ""}'
              f'{" --onnx" if options.onnx else ""}` ({time.strftime("%Y-%m-%d")}; {machine()}; '
              f'torchvision {__import__("torchvision").__version__}'
              f'{"" if options.sources == "torchvision" else ", timm " + __import__("timm").__version__}).\n\n')
    if options.output:
        with open(options.output, 'w') as f:
            f.write(header + text)
    print(text)
    return 1 if any(r['status'] == 'ERROR' for r in results.values()) else 0


if __name__ == '__main__':
    sys.exit(main())
