"""An independent, functional statement of the authors' forward passes.

Each function takes a state_dict with the authors' parameter names and an input batch and
computes (attention_logits, perception_logits, attention_map) with torch.nn.functional
only, step by step as the authors' modules do it (including their quirks: ResNeXt skips
bn_att, WRN's shortcut takes the pre-activated input, DenseNet's map is 8x8). The tests run
the project's models on the same weights and compare. `Weights` records which parameters
were read, so a test can also prove that every parameter of the file is used.
"""
import torch
import torch.nn.functional as F


class Weights:
    def __init__(self, state_dict, training=False):
        self.sd = state_dict
        self.used = set()
        self.training = training

    def __getitem__(self, key):
        self.used.add(key)
        return self.sd[key]

    def has(self, key):
        return key in self.sd

    def conv(self, x, name, stride=1, padding=0, groups=1):
        return F.conv2d(x, self[f'{name}.weight'], None, stride, padding, 1, groups)

    def bn(self, x, name):
        self.used.update({f'{name}.running_mean', f'{name}.running_var'})
        if f'{name}.num_batches_tracked' in self.sd:
            self.used.add(f'{name}.num_batches_tracked')
        return F.batch_norm(x, self.sd[f'{name}.running_mean'].clone(),
                            self.sd[f'{name}.running_var'].clone(), self[f'{name}.weight'],
                            self[f'{name}.bias'], self.training, 0.1, 1e-5)

    def linear(self, x, name):
        return F.linear(x, self[f'{name}.weight'], self[f'{name}.bias'])


def head(w, x, use_bn_att=True):
    """bn_att -> att_conv -> bn_att2 -> ReLU; map: att_conv3, bn_att3, sigmoid;
    logits: att_conv2, average pool."""
    if use_bn_att:
        x = w.bn(x, 'bn_att')
    x = F.relu(w.bn(w.conv(x, 'att_conv'), 'bn_att2'))
    attention = torch.sigmoid(w.bn(w.conv(x, 'att_conv3', padding=1), 'bn_att3'))
    logits = w.conv(x, 'att_conv2').mean((2, 3))
    return logits, attention


def gate(x, attention, mode):
    return x * (1 + attention) if mode == 'residual' else x * attention


def _resnet_block(w, x, name, stride, bottleneck, se=False):
    if bottleneck:
        out = F.relu(w.bn(w.conv(x, f'{name}.conv1'), f'{name}.bn1'))
        out = F.relu(w.bn(w.conv(out, f'{name}.conv2', stride, 1), f'{name}.bn2'))
        out = w.bn(w.conv(out, f'{name}.conv3'), f'{name}.bn3')
    else:
        out = F.relu(w.bn(w.conv(x, f'{name}.conv1', stride, 1), f'{name}.bn1'))
        out = w.bn(w.conv(out, f'{name}.conv2', 1, 1), f'{name}.bn2')
    if se:  # senet_resnet.py: squeeze-and-excitation on the residual branch
        scale = F.relu(w.linear(out.mean((2, 3)), f'{name}.fc1'))
        out = out * torch.sigmoid(w.linear(scale, f'{name}.fc2'))[:, :, None, None]
    if w.has(f'{name}.downsample.0.weight'):
        x = w.bn(w.conv(x, f'{name}.downsample.0', stride), f'{name}.downsample.1')
    return F.relu(out + x)


def _resnet_layer(w, x, name, blocks, stride, bottleneck, se=False):
    for i in range(blocks):
        x = _resnet_block(w, x, f'{name}.{i}', stride if i == 0 else 1, bottleneck, se)
    return x


def cifar_resnet(w, x, depth, mode='residual'):
    n, bottleneck = (depth - 2) // 6, depth >= 44
    x = F.relu(w.bn(w.conv(x, 'conv1', 1, 1), 'bn1'))
    x = _resnet_layer(w, x, 'layer1', n, 1, bottleneck)
    x = _resnet_layer(w, x, 'layer2', n, 2, bottleneck)
    logits, attention = head(w, _resnet_layer(w, x, 'att_layer3', n, 1, bottleneck))
    rx = _resnet_layer(w, gate(x, attention, mode), 'layer3', n, 2, bottleneck)
    return logits, w.linear(rx.mean((2, 3)), 'fc'), attention


def _dense_block(w, x, name, blocks):
    for i in range(blocks):
        p = f'{name}.{i}'
        out = w.conv(F.relu(w.bn(x, f'{p}.bn1')), f'{p}.conv1')
        out = w.conv(F.relu(w.bn(out, f'{p}.bn2')), f'{p}.conv2', 1, 1)
        x = torch.cat((x, out), 1)
    return x


def _transition(w, x, name):
    return F.avg_pool2d(w.conv(F.relu(w.bn(x, f'{name}.bn1')), f'{name}.conv1'), 2)


def cifar_densenet(w, x, depth, mode='residual'):
    n = (depth - 4) // 6
    x = w.conv(x, 'conv1', 1, 1)
    x = _transition(w, _dense_block(w, x, 'dense1', n), 'trans1')
    x = _transition(w, _dense_block(w, x, 'dense2', n), 'trans2')
    logits, attention = head(w, _dense_block(w, x, 'att_dense3', n))
    rx = F.relu(w.bn(_dense_block(w, gate(x, attention, mode), 'dense3', n), 'bn'))
    return logits, w.linear(F.avg_pool2d(rx, 8).flatten(1), 'fc'), attention


def _wide_block(w, x, name, stride):
    activated = F.relu(w.bn(x, f'{name}.bn1'))
    out = F.relu(w.bn(w.conv(activated, f'{name}.conv1', stride, 1), f'{name}.bn2'))
    out = w.conv(out, f'{name}.conv2', 1, 1)
    if w.has(f'{name}.convShortcut.weight'):
        return w.conv(activated, f'{name}.convShortcut', stride) + out
    return x + out


def _wide_stage(w, x, name, blocks, stride):
    for i in range(blocks):
        x = _wide_block(w, x, f'{name}.layer.{i}', stride if i == 0 else 1)
    return x


def cifar_wrn(w, x, depth, mode='residual'):
    n = (depth - 4) // 6
    x = w.conv(x, 'conv1', 1, 1)
    x = _wide_stage(w, _wide_stage(w, x, 'block1', n, 1), 'block2', n, 2)
    logits, attention = head(w, _wide_stage(w, x, 'att_block3', n, 1))
    rx = F.relu(w.bn(_wide_stage(w, gate(x, attention, mode), 'block3', n, 2), 'bn1'))
    return logits, w.linear(F.avg_pool2d(rx, 8).flatten(1), 'fc'), attention


def _resnext_stage(w, x, name, blocks, stride, cardinality):
    for i in range(blocks):
        p = f'{name}.{name}_bottleneck_{i}'
        s = stride if i == 0 else 1
        out = F.relu(w.bn(w.conv(x, f'{p}.conv_reduce'), f'{p}.bn_reduce'))
        out = F.relu(w.bn(w.conv(out, f'{p}.conv_conv', s, 1, cardinality), f'{p}.bn'))
        out = w.bn(w.conv(out, f'{p}.conv_expand'), f'{p}.bn_expand')
        if w.has(f'{p}.shortcut.shortcut_conv.weight'):
            x = w.bn(w.conv(x, f'{p}.shortcut.shortcut_conv', s), f'{p}.shortcut.shortcut_bn')
        x = F.relu(x + out)
    return x


def cifar_resnext(w, x, depth, cardinality, mode='residual'):
    n = (depth - 2) // 9
    x = F.relu(w.bn(w.conv(x, 'conv_1_3x3', 1, 1), 'bn_1'))
    x = _resnext_stage(w, _resnext_stage(w, x, 'stage_1', n, 1, cardinality), 'stage_2', n, 2,
                       cardinality)
    logits, attention = head(w, _resnext_stage(w, x, 'stage_att', n, 1, cardinality),
                             use_bn_att=False)
    rx = _resnext_stage(w, gate(x, attention, mode), 'stage_3', n, 2, cardinality)
    return logits, w.linear(F.avg_pool2d(rx, 8, 1).flatten(1), 'classifier'), attention


def imagenet_resnet(w, x, layers, bottleneck, mode='residual', se=False):
    """The authors' models/imagenet/resnet.py, `layers` blocks per stage. Their fixed
    AvgPool2d(14) and AvgPool2d(7) are global means at 224 px; here, means at any size.
    se=True: the blocks of their senet_resnet.py, with the ordinary head (their SE code's
    log-sum map is not what the paper describes, and is not reproduced)."""
    x = F.max_pool2d(F.relu(w.bn(w.conv(x, 'conv1', 2, 3), 'bn1')), 3, 2, 1)
    for i, stride in enumerate((1, 2, 2)):
        x = _resnet_layer(w, x, f'layer{i + 1}', layers[i], stride, bottleneck, se)
    logits, attention = head(w, _resnet_layer(w, x, 'att_layer4', layers[3], 1, bottleneck, se))
    rx = _resnet_layer(w, gate(x, attention, mode), 'layer4', layers[3], 2, bottleneck, se)
    return logits, w.linear(rx.mean((2, 3)), 'fc'), attention


def multitask_resnet(w, x, layers, bottleneck, residual_attention=True):
    """The authors' MtABNResNetV1 (MultitaskABN, mtabn/models/resnet_mtabn_v1.py), with their
    per-task Python loop: conv_att's T maps are unbounded, the attention logits their means;
    task t runs the shared layer4 on the features gated by map t, then its own output_per.<t>.
    Returned in this project's order (attention, perception, maps); theirs was
    (perception, attention, maps)."""
    x = F.max_pool2d(F.relu(w.bn(w.conv(x, 'conv1', 2, 3), 'bn1')), 3, 2, 1)
    for i, stride in enumerate((1, 2, 2)):
        x = _resnet_layer(w, x, f'layer{i + 1}', layers[i], stride, bottleneck)
    maps = w.conv(_resnet_layer(w, x, 'layer4_att', layers[3], 1, bottleneck), 'conv_att')
    attention_logits = maps.mean((2, 3))
    per_task = []
    for t in range(maps.shape[1]):
        task_map = maps[:, t:t + 1]
        gated = x * (task_map + 1) if residual_attention else x * task_map
        rx = _resnet_layer(w, gated, 'layer4', layers[3], 2, bottleneck)
        per_task.append(w.linear(rx.mean((2, 3)), f'output_per.{t}'))  # (N, 1)
    perception_logits = torch.stack(per_task).permute(1, 2, 0).squeeze(1)
    return attention_logits, perception_logits, maps
