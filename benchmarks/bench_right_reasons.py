"""Right for the right reasons on `shapes-decoy`: does teaching change what the model decides
with? One table, every row on the same data, start and budget (docs/teach.md, BENCHMARKS.md).

    python benchmarks/bench_right_reasons.py -o outputs/right-reasons

1. `plain`: an ABN trained on shapes-decoy, whose training images carry a class-coloured patch
   (the shortcut); `clean`: the same recipe on `shapes`, without it.
2. From `plain`, each teaching method (--teach-by) with the object masks of a share of the
   training images (shapes-masks:P%), for the same epochs and learning rate; `fine-tuned`:
   the same run without maps (what fine-tuning alone does).
3. Each model on the shapes-decoy test split (the patch in a random class's colour): top-1,
   top-1 with everything outside the object taken from another test image (what the decision
   rests on), the pointing game of the ABN map within 2 px, the attention branch's own top-1;
   and seconds per training epoch (log.txt, the epoch's training and test).

Runs already complete in -o are reused (delete a folder to run it again)."""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402

from utils.data.shapes import ShapesDataset  # noqa: E402
from utils.explain.measures import pointing_tolerance, split_scores  # noqa: E402
from utils.weights.loading import load_model  # noqa: E402


def run(argv, folder):
    """cifar.py with `argv` into `folder`, unless a finished run is there (its output ends
    with the log's path)."""
    if os.path.exists(folder + '.log'):
        with open(folder + '.log') as f:
            if '\nLog: ' in f.read():
                return
    command = [sys.executable, os.path.join(ROOT, 'cifar.py')] + argv + ['-c', folder]
    print('$ python cifar.py ' + ' '.join(argv + ['-c', folder]), flush=True)
    with open(folder + '.log', 'w') as log:
        subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)


def in_parallel(runs, jobs):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(jobs) as pool:
        for done in [pool.submit(run, argv, folder) for argv, folder in runs]:
            done.result()


def epoch_seconds(folder):
    """The median seconds of the run's epochs (log.txt's Epoch Time column)."""
    with open(os.path.join(folder, 'log.txt')) as f:
        header, *rows = f.read().splitlines()
    column = header.split('\t').index('Epoch Time (s)')
    values = sorted(float(row.split('\t')[column]) for row in rows)
    return values[len(values) // 2]


def scores(path, images):
    """{'accuracy', 'object_kept', 'pointing', 'attention_accuracy'} of the file's model on the
    decoy test split (the last: the attention branch's own classifier)."""
    loaded = load_model(path)
    model = loaded.model.eval()
    test = ShapesDataset(train=False, size=images, decoy=True,
                         transform=T.Compose([T.ToTensor(), T.Normalize(*loaded.normalization)]))

    def answer(batch, labels):
        with torch.no_grad():
            out = model(batch)
        right = float((out.perception_logits.argmax(1) == labels).sum())
        return right, out.attention_map.float()

    measured = split_scores(answer, test, len(test), test.masks, 32, pointing_tolerance(32))
    right = 0
    for start in range(0, len(test), 100):
        items = [test[i] for i in range(start, min(len(test), start + 100))]
        with torch.no_grad():
            out = model(torch.stack([image for image, _ in items]))
        right += int((out.attention_logits.argmax(1).cpu() ==
                      torch.tensor([label for _, label in items])).sum())
    measured['attention_accuracy'] = 100 * right / len(test)
    return measured


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('-o', '--output', default='outputs/right-reasons')
    parser.add_argument('--train-size', type=int, help='default: all 10,000')
    parser.add_argument('--depth', type=int, default=20)
    parser.add_argument('--epochs', type=int, default=4,
                        help='of every run: plain, clean and teaching (default: %(default)s)')
    parser.add_argument('--lr', type=float, default=0.05, help='of every run')
    parser.add_argument('--runs', nargs='+', default=[
        'counterfactual:100', 'counterfactual:10', 'counterfactual:1', 'rrr:100', 'rrr:10',
        'map:100'], help='METHOD:PERCENT of the masks, from the plain model')
    parser.add_argument('--test-images', type=int, default=2000)
    parser.add_argument('--jobs', type=int, default=1,
                        help='runs at once (each with the CPUs shared out)')
    args = parser.parse_args(argv)
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    threads = max(1, torch.get_num_threads() // args.jobs)
    common = ['--depth', str(args.depth), '--train-batch', '64', '--manualSeed', '1', '--fast',
              '--save-attention', '0', '--threads', str(threads), '--epochs', str(args.epochs),
              '--schedule', str(max(1, args.epochs * 3 // 4)), '--lr', str(args.lr)]
    if args.train_size:
        common += ['--train-size', str(args.train_size)]
    in_parallel([(['--dataset', 'shapes-decoy'] + common, os.path.join(out, 'plain')),
                 (['--dataset', 'shapes'] + common, os.path.join(out, 'clean'))], args.jobs)
    plain = os.path.join(out, 'plain', 'model_best.pth.tar')
    teach = common + ['--dataset', 'shapes-decoy', '--weights', plain]
    rows = [('plain (the shortcut)', 'plain'), ('clean (no shortcut)', 'clean'),
            ('fine-tuned without maps', 'fine-tuned')]
    runs = [(teach, os.path.join(out, 'fine-tuned'))]
    for wanted in args.runs:
        method, share = wanted.split(':')
        name = f'{method}-{share}'
        runs.append((teach + ['--attention-maps', f'shapes-masks:{share}%', '--teach-by', method],
                     os.path.join(out, name)))
        rows.append((f'--teach-by {method}, {share}% of the masks', name))
    in_parallel(runs, args.jobs)
    tolerance = pointing_tolerance(32)
    lines = [f'| model | test top-1 | top-1, the object amid another image\'s surroundings | '
             f'pointing game ±{tolerance} px | attention branch top-1 | seconds per epoch |',
             '|---|---|---|---|---|---|']
    for title, name in rows:
        folder = os.path.join(out, name)
        measured = scores(os.path.join(folder, 'model_best.pth.tar'), args.test_images)
        lines.append(f"| {title} | {measured['accuracy']:.2f} | {measured['object_kept']:.2f} | "
                     f"{measured['pointing']:.1f} | {measured['attention_accuracy']:.2f} | "
                     f"{epoch_seconds(folder):.1f} |")
        print(lines[-1], flush=True)
    with open(os.path.join(out, 'table.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
