"""Weights as a safetensors file: the tensors, and the model spec as its metadata, so the file
alone rebuilds the model (`utils.api.load`, explain.py and export.py read it like a
checkpoint). safetensors holds tensors only, so nothing in the file can run code, and any
framework can read the weights.

The spec written is the resolved one: normalisation, input sizes and class names filled in,
also for the authors' files, which record none of them."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from utils.errors import AbnError
from utils.weights.checkpoint import FORMAT

if TYPE_CHECKING:
    from utils.weights.modelspec import ModelSpec

INSTALL = 'pip install -r requirements-export.txt'


def is_safetensors(path: str) -> bool:
    """True when the file starts as safetensors does: an 8-byte little-endian header length,
    then a JSON header."""
    try:
        with open(path, 'rb') as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b'{':
        return False
    return 0 < int.from_bytes(head[:8], 'little') <= os.path.getsize(path) - 8


def _safetensors_torch():
    try:
        import safetensors.torch
    except ImportError:
        raise AbnError(f'safetensors files need the safetensors package: {INSTALL}') from None
    return safetensors.torch


def resolved_spec(loaded: Any) -> ModelSpec:
    """The spec of a LoadedModel with what loading it worked out (normalisation, sizes, class
    names, data set) written in."""
    return replace(loaded.spec, normalization=tuple(map(tuple, loaded.normalization)),
                   image_size=loaded.image_size,
                   resize_size=loaded.resize_size if loaded.imagenet else None,
                   class_names=list(loaded.class_names) if loaded.class_names else None,
                   dataset=loaded.dataset)


def save_safetensors(loaded: Any, path: str) -> None:
    """Writes the model's weights and its resolved spec (JSON metadata 'model_spec')."""
    st = _safetensors_torch()
    # Own contiguous copies: safetensors refuses tensors that share memory.
    tensors = {k: v.detach().cpu().contiguous().clone()
               for k, v in loaded.model.state_dict().items()}
    metadata = {'format': FORMAT, 'model_spec': json.dumps(resolved_spec(loaded).to_dict()),
                'description': loaded.description}
    st.save_file(tensors, path, metadata=metadata)


def read_safetensors(path: str) -> dict[str, Any]:
    """A safetensors file of export.py as a checkpoint's contents: {'state_dict', 'model_spec'}.
    One line for a file without the spec (weights from elsewhere) or a damaged one."""
    st = _safetensors_torch()
    try:
        from safetensors import safe_open
        with safe_open(path, framework='pt') as f:
            metadata = f.metadata() or {}
        tensors = st.load_file(path)
    except Exception as error:  # safetensors raises its own SafetensorError, and OSError
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AbnError(f'cannot read safetensors file {path} ({reason})') from None
    if 'model_spec' not in metadata or metadata.get('format') != FORMAT:
        raise AbnError(f'{path} holds weights without a model spec: only safetensors files of '
                       f'export.py say which model they belong to')
    try:
        spec = json.loads(metadata['model_spec'])
    except ValueError:
        raise AbnError(f"{path}: its model spec is not valid JSON") from None
    return {'format': metadata.get('format'), 'state_dict': tensors, 'model_spec': spec}
