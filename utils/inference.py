"""The one way a loaded ABN answers when no gradient is needed (the Python API's `explain`,
explain.py's maps and measures): an evaluation copy of the model run by the fastest runtime
this machine has, chosen once per loaded model.

- `onnxruntime`: the model exported as export.py exports it (one torch.export program, ONNX
  opset 18, dynamic batch), run by onnxruntime with this process's threads and no spinning
  (a waiting thread sleeps: on shared cores a spinning one takes the CPU the others need);
- `folded`: an evaluation copy of the model with its BatchNorm layers folded into the
  convolutions before them, in eager, where onnxruntime is not installed;
- `eager`: the model itself, in inference mode.

`auto` (the default) picks onnxruntime when it is installed, else folded, falling back to
eager when a model cannot be exported (the note says why). The export or trace happens once,
when the runtime is made; the ONNX file of a checkpoint is kept in a cache folder
(ABN_CACHE, default ~/.cache/abn-pytorch) under the checkpoint's size, time and the torch
version, so a second `load` of the same file starts at once. Every runtime gives the model's
outputs within 1e-5 of their scale (`agree`; tests/test_inference.py). Grad-CAM, which needs gradients,
and edited maps keep the model itself.
"""
from __future__ import annotations

import copy
import hashlib
import os
import tempfile
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn

from models.abn import AbnOutput
from utils.errors import AbnError

if TYPE_CHECKING:
    from utils.weights.loading import LoadedModel

RUNTIMES = ('auto', 'onnxruntime', 'folded', 'eager')


def cache_folder() -> str:
    return os.environ.get('ABN_CACHE') or os.path.join(os.path.expanduser('~'), '.cache',
                                                       'abn-pytorch')


class Outputs(nn.Module):
    """The model's three outputs as a tuple (what tracing and export take), attention or not."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(image)
        if out.attention_map is None:
            return (out.perception_logits,)
        return out.attention_logits, out.perception_logits, out.attention_map


def as_output(values: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> AbnOutput:
    if len(values) == 1:
        return AbnOutput(None, values[0], None)
    return AbnOutput(*values)


class EagerRuntime:
    """A loaded model's answers on a batch of normalised inputs, run as it is (eager):
    `runtime(x) -> AbnOutput`; the base of the faster ones below."""
    name = 'eager'

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, x: torch.Tensor) -> AbnOutput:
        with torch.inference_mode():
            return self.model(x)


class FoldedRuntime(EagerRuntime):
    """The model's evaluation copy with every BatchNorm that only normalises a convolution's
    output folded into that convolution (one pass over memory fewer a layer), in eager."""
    name = 'folded'

    def __init__(self, model: nn.Module, size: int) -> None:
        device = next(model.parameters()).device
        super().__init__(fold_batchnorm(model, torch.randn(
            2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)))


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """An evaluation copy of `model` where each nn.BatchNorm2d fed by a convolution's output
    is folded into that convolution and becomes an identity. The pairs are found by running
    `example` (a BatchNorm whose input is the very tensor a convolution returned), and the
    copy is checked against the model on it: where they differ (a convolution's output read
    by something else too), the copy is returned unfolded."""
    folded = copy.deepcopy(model).eval()
    produced, pairs, kept, handles = {}, [], [], []

    def after_conv(module, inputs, output):
        kept.append(output)  # alive until the end: an id is not reused meanwhile
        produced[id(output)] = module

    def before_norm(module, inputs):
        conv = produced.get(id(inputs[0]))
        if conv is not None and type(module) is nn.BatchNorm2d:
            pairs.append((conv, module))

    for module in folded.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(after_conv))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(before_norm))
    with torch.no_grad():
        expected = Outputs(folded)(example)
    for handle in handles:
        handle.remove()
    convs = [conv for conv, _ in pairs]
    norms = {id(norm): norm for _, norm in pairs}
    names = {id(m): name for name, m in folded.named_modules()}
    for conv, norm in pairs:
        if convs.count(conv) != 1 or norm.affine is False or not norm.track_running_stats:
            continue
        with torch.no_grad():
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            conv.weight.mul_(scale.view(-1, *[1] * (conv.weight.dim() - 1)))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
            conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias)
        parent, _, child = names[id(norms[id(norm)])].rpartition('.')
        setattr(folded.get_submodule(parent) if parent else folded, child, nn.Identity())
    with torch.no_grad():
        got = Outputs(folded)(example)
    # 1e-4: float32 rounding of an untrained model's large activations stays below it, a
    # wrong fold (a convolution's output read twice) is far above
    if all(agree(a, b, 1e-4) for a, b in zip(got, expected)):
        return folded
    return copy.deepcopy(model).eval()


def agree(got: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> bool:
    """Within `tolerance` of the output's scale, at least 1 (a map's values are shares of
    [0, 1]: an untrained map near 0 is compared at that scale, not at its own)."""
    scale = max(expected.abs().max().item(), 1.0)
    return (got.float() - expected.float()).abs().max().item() <= tolerance * scale


class OnnxRuntime(EagerRuntime):
    name = 'onnxruntime'

    def __init__(self, model: nn.Module, loaded: LoadedModel, cache_key: str | None) -> None:
        super().__init__(model)
        import onnxruntime as ort
        path = onnx_file(model, loaded, cache_key)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        self.session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        if cache_key is None:
            os.remove(path)

    def __call__(self, x: torch.Tensor) -> AbnOutput:
        values = self.session.run(None, {'image': x.detach().cpu().float().numpy()})
        return as_output([torch.from_numpy(v) for v in values])


def onnx_file(model: nn.Module, loaded: LoadedModel, cache_key: str | None) -> str:
    """The model's ONNX file: from the cache when it holds it, else exported (into the
    cache with a key, else a temporary file the caller removes)."""
    from utils.weights.export import ExportedAbn, export_program, write_onnx
    path, folder = None, cache_folder()
    if cache_key is not None:
        path = os.path.join(folder, f'{cache_key}.onnx')
        if os.path.isfile(path):
            return path
        os.makedirs(folder, exist_ok=True)
    wrapper = ExportedAbn(model, loaded.normalization).eval()
    program = export_program(wrapper, loaded, False)
    handle, partial = tempfile.mkstemp(suffix='.onnx', dir=folder if path else None)
    os.close(handle)
    write_onnx(program, partial, wrapper.output_names, {})
    if path is None:
        return partial
    os.replace(partial, path)  # whole, or not there: another process may read it at once
    return path


def cache_key(path: str | None) -> str | None:
    """A name for a checkpoint file's exported graph: its path, size and time, and the
    versions that wrote the graph."""
    if not path or not os.path.isfile(path):
        return None
    info = os.stat(path)
    import onnxruntime
    text = (f'{os.path.abspath(path)}|{info.st_size}|{info.st_mtime_ns}|{torch.__version__}|'
            f'{onnxruntime.__version__}')
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def installed(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def make_runtime(loaded: LoadedModel, name: str = 'auto', path: str | None = None,
                 note: Callable[[str], None] = print) -> EagerRuntime:
    """The runtime `name` (RUNTIMES) for `loaded`'s model, as it is placed now; `path`: the
    checkpoint file, whose exported graph is cached. A runtime that cannot take the model
    falls back to the next (onnxruntime, folded, eager), with a note, under 'auto'."""
    if name not in RUNTIMES:
        raise AbnError(f"unknown runtime '{name}': choose one of {', '.join(RUNTIMES)}")
    model = loaded.model.eval()
    on_cpu = next(model.parameters()).device.type == 'cpu'
    if name == 'eager' or (name == 'auto' and not on_cpu):
        return EagerRuntime(model)
    order = [name] if name != 'auto' else (
        (['onnxruntime'] if installed('onnxruntime') and installed('onnxscript') else [])
        + ['folded'])
    for candidate in order:
        try:
            if candidate == 'onnxruntime':
                if not on_cpu:
                    raise AbnError('onnxruntime runs on the CPU here: give --runtime eager '
                                   'for a GPU')
                if not installed('onnxruntime'):
                    raise AbnError('--runtime onnxruntime needs onnxruntime: pip install -r '
                                   'requirements-export.txt')
                return OnnxRuntime(model, loaded, cache_key(path))
            return FoldedRuntime(model, loaded.image_size)
        except AbnError:
            if name != 'auto':
                raise
        except Exception as error:  # tracing and export fail in many ways: say which
            reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else \
                type(error).__name__
            if name != 'auto':
                raise AbnError(f'--runtime {candidate} cannot run {loaded.description}: '
                               f'{reason}') from None
            note(f'note: {candidate} cannot run {loaded.description} ({reason}); '
                 f'answering with the next runtime')
    return EagerRuntime(model)
