"""export.py's work: a loaded ABN as a file that runs without this repository.

- ONNX (opset 18, dynamic batch) and a `torch.export` program (.pt2): input `image`, outputs
  `attention_logits`, `logits` and `attention_map` ((N, 1, h, w) in [0, 1]; multi-task models
  (N, T, h, w), one unbounded map per attribute). A model without an attention branch has
  `logits` only. The input's preprocessing is written into the file's metadata (ONNX
  metadata_props; the .pt2 archive's extra file `abn.json`); `with_preprocessing` bakes the
  normalisation in, so the input is 0-255 RGB.
- safetensors: the weights, with the model spec as metadata (utils.weights.portable).

`check` runs the written file on seeded inputs of batch 1 and 5 and compares it with PyTorch.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn as nn

from utils.errors import AbnError
from utils.weights.portable import INSTALL, resolved_spec, save_safetensors

if TYPE_CHECKING:
    from utils.weights.loading import LoadedModel

FORMATS = ('onnx', 'pt2', 'safetensors')
SUFFIXES = {'onnx': '.onnx', 'pt2': '.pt2', 'safetensors': '.safetensors'}
OUTPUTS = ('attention_logits', 'logits', 'attention_map')
OPSET = 18
CHECK_BATCHES = (1, 5)
TOLERANCE = 1e-4  # largest difference allowed, relative to the output's largest magnitude


class ExportedAbn(nn.Module):
    """The graph that leaves: the model's three outputs as a plain tuple (AbnOutput is a
    NamedTuple the exporters would flatten anyway), with the normalisation in front of it
    when `with_preprocessing`."""

    def __init__(self, model: nn.Module, normalization: tuple[Sequence[float], Sequence[float]],
                 with_preprocessing: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_preprocessing = with_preprocessing
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)
                     for v in normalization)
        self.register_buffer('mean', mean * 255, persistent=False)
        self.register_buffer('std', std * 255, persistent=False)

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUTS if self.model.has_attention else ('logits',)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.with_preprocessing:
            image = (image - self.mean) / self.std
        out = self.model(image)
        if not self.model.has_attention:
            return (out.perception_logits,)
        return out.attention_logits, out.perception_logits, out.attention_map


def metadata(loaded: LoadedModel, with_preprocessing: bool,
             output_names: Sequence[str]) -> dict[str, str]:
    """What a user of the file needs to feed it and read it, as text: key -> str."""
    size = loaded.image_size
    mean, std = (list(map(float, v)) for v in loaded.normalization)
    if loaded.imagenet:
        resize = f'resize the shorter side to {loaded.resize_size}, centre crop {size}x{size}'
    else:
        resize = f'resize to {size}x{size}'
    pixels = ('RGB 0-255 as float32 (the normalisation is inside)' if with_preprocessing else
              'RGB scaled to [0, 1], then (x - mean) / std per channel')
    return {
        'abn.format': 'abn-export/1',
        'abn.description': loaded.description,
        'abn.input': f'image: float32 (N, 3, {size}, {size}); {pixels}',
        'abn.preprocessing': resize,
        'abn.normalization': json.dumps({'mean': mean, 'std': std}),
        'abn.with_preprocessing': json.dumps(bool(with_preprocessing)),
        'abn.outputs': ', '.join(output_names),
        'abn.class_names': json.dumps(list(loaded.class_names or [])),
        'abn.model_spec': json.dumps(resolved_spec(loaded).to_dict()),
    }


def example_input(loaded: LoadedModel, batch: int, with_preprocessing: bool,
                  seed: int = 0) -> torch.Tensor:
    """Seeded inputs in the file's input space: normalised-looking or 0-255 pixels."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, loaded.image_size, loaded.image_size)
    if with_preprocessing:
        return torch.rand(shape, generator=generator) * 255
    return torch.randn(shape, generator=generator)


def export_program(wrapper: ExportedAbn, loaded: LoadedModel,
                   with_preprocessing: bool) -> torch.export.ExportedProgram:
    """torch.export of the wrapper with a dynamic batch (traced at batch 2: a traced 1 would
    be specialised)."""
    batch = torch.export.Dim('batch', min=1, max=65536)
    try:
        return torch.export.export(wrapper, (example_input(loaded, 2, with_preprocessing),),
                                   dynamic_shapes=({0: batch},))
    except Exception as error:  # torch.export raises many kinds; the first line says which
        raise AbnError(f'torch.export cannot trace {loaded.description}: '
                       f'{str(error).splitlines()[0]}') from None


def write_onnx(program: torch.export.ExportedProgram, path: str, names: Sequence[str],
               extra: dict[str, str]) -> None:
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError:
        raise AbnError(f'--format onnx needs onnx and onnxscript: {INSTALL}') from None
    onnx_program = torch.onnx.export(program, input_names=['image'], output_names=list(names),
                                     opset_version=OPSET, dynamo=True, verbose=False)
    onnx_program.model.metadata_props.update(extra)
    onnx_program.save(path)


def write_pt2(program: torch.export.ExportedProgram, path: str, extra: dict[str, str]) -> None:
    torch.export.save(program, path, extra_files={'abn.json': json.dumps(extra)})


def export(loaded: LoadedModel, path: str, file_format: str,
           with_preprocessing: bool = False) -> None:
    """Writes `loaded` (a LoadedModel, evaluation mode) to `path` in `file_format`."""
    if file_format not in FORMATS:
        raise AbnError(f"unknown format '{file_format}': choose one of {', '.join(FORMATS)}")
    model = loaded.model.eval()
    if file_format == 'safetensors':
        if with_preprocessing:
            raise AbnError('--with-preprocessing bakes the normalisation into a graph: it '
                           'applies to --format onnx and pt2, safetensors holds weights only')
        return save_safetensors(loaded, path)
    wrapper = ExportedAbn(model, loaded.normalization, with_preprocessing).eval()
    extra = metadata(loaded, with_preprocessing, wrapper.output_names)
    program = export_program(wrapper, loaded, with_preprocessing)
    if file_format == 'onnx':
        write_onnx(program, path, wrapper.output_names, extra)
    else:
        write_pt2(program, path, extra)


# -- reading an exported file back --------------------------------------------------------

def runner(path: str, file_format: str) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """A function: input tensor -> list of output tensors, running the exported file itself
    (onnxruntime for ONNX, the loaded program for .pt2)."""
    if file_format == 'onnx':
        try:
            import onnxruntime as ort
        except ImportError:
            raise AbnError(f'running an ONNX file needs onnxruntime: {INSTALL}') from None
        session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
        return lambda x: [torch.from_numpy(o) for o in session.run(None, {'image': x.numpy()})]
    module = torch.export.load(path).module()
    return lambda x: list(module(x))


def check(loaded: LoadedModel, path: str, file_format: str, with_preprocessing: bool = False,
          batches: Sequence[int] = CHECK_BATCHES) -> list[tuple[int, str, float, float]]:
    """Runs the file on seeded inputs of each batch size beside PyTorch: a list of
    (batch, output name, largest absolute difference, relative to the output's scale)."""
    wrapper = ExportedAbn(loaded.model.eval(), loaded.normalization, with_preprocessing).eval()
    run_file = runner(path, file_format)
    rows = []
    for batch in batches:
        x = example_input(loaded, batch, with_preprocessing, seed=batch)
        with torch.no_grad():
            expected = wrapper(x)
        for name, want, got in zip(wrapper.output_names, expected, run_file(x)):
            if tuple(got.shape) != tuple(want.shape):
                raise AbnError(f'{path}: {name} has shape {tuple(got.shape)} at batch {batch}, '
                               f'PyTorch {tuple(want.shape)}')
            difference = (got.float() - want.float()).abs().max().item()
            rows.append((batch, name, difference,
                         difference / max(want.abs().max().item(), 1e-12)))
    return rows

