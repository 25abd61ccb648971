#!/usr/bin/env bash
# timm backbones as ABNs trained from scratch on shapes at 64 px, each beside its plain twin
# (--baseline), then the maps measured: the ABN map against CAM and Grad-CAM of the twin
# (docs/imagenet.md, "Trained from scratch"). About 40 minutes per family on 2 CPU cores.
#
#   bash benchmarks/backbones_from_scratch.sh [FAMILY ...]   # default: the three below
set -euo pipefail
cd "$(dirname "$0")/.."
families=("$@")
[ ${#families[@]} -gt 0 ] || families=(timm:resnet18 timm:mobilenetv3_small_100 timm:deit_tiny_patch16_224)
data=data/shapes64
[ -d $data/train ] || python -m utils.data.shapes $data --size 64 --train 5000 --val 1000
for arch in "${families[@]}"; do
    name=${arch#*:}
    lr=0.05; [[ $name == vit* || $name == deit* ]] && lr=0.01  # transformers: a gentler start
    for variant in abn plain; do
        extra=(); [ $variant = plain ] && extra=(--baseline)
        python imagenet.py -a "$arch" "${extra[@]}" --data $data --image-size 64 --epochs 10 \
            --schedule 6 9 --lr $lr --scale 0.7 1 --resize-size 64 --train-batch 64 \
            --test-batch 100 --manualSeed 1 -j 1 \
            --gpu-id cpu -c checkpoints/backbones/$name-$variant --resume auto
    done
    python explain.py checkpoints/backbones/$name-abn/model_best.pth.tar $data/val \
        --baseline checkpoints/backbones/$name-plain/model_best.pth.tar --measure \
        --masks $data/masks/val --road-percentiles none -n 500 --save-images 16 --gpu-id cpu \
        -o outputs/backbones/$name
done
