"""Models register themselves by name; the scripts build them through `create`, so no script
branches on an architecture's name. A registry may also build the models of every library
of models.backbones.libraries (`sources`: 'timm', 'torchvision'), by the names 'timm:NAME'
and 'torchvision:NAME'."""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    import torch.nn as nn

    from .abn import AttentionBranchNetwork


def library_builder(source: str, name: str) -> Callable[..., AttentionBranchNetwork]:
    """The builder of a library's model `name` as an ABN (models.backbones.build): its
    arguments are what a checkpoint records."""
    from .backbones import build

    def builder(num_classes: int = 1000, attention: bool = True, gate: str = 'residual',
                split: Optional[int] = None, image_size: int = 224) -> AttentionBranchNetwork:
        return build(source, name, num_classes, attention, gate, split, image_size)
    builder.__name__ = builder.__qualname__ = f'{source}:{name}'
    builder.__doc__ = f"{source}'s {name} as an ABN (models.backbones)."
    return builder


class ModelRegistry(dict):
    """name -> builder function. `create` passes a builder only the options it declares, so
    one set of command-line options (depth, widen_factor, ...) serves every family.

    `in`, `[]` and `get` answer alike for every name it builds, the libraries' 'timm:NAME'
    included; iteration, `len` and `keys` are its own families (the libraries' thousands of
    names: `names()`)."""

    def __init__(self, title: str, libraries: bool = False) -> None:
        super().__init__()
        self.title = title
        self.libraries = libraries

    @property
    def sources(self) -> tuple[str, ...]:
        """The libraries whose models it builds: every registered one, where it builds any."""
        if not self.libraries:
            return ()
        from .backbones.libraries import LIBRARIES
        return tuple(LIBRARIES)

    def register(self, builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        self[builder.__name__] = builder
        return builder

    def library_name(self, name: object) -> Optional[tuple[str, str]]:
        """(source, name) where `name` is 'source:name' of one of this registry's sources."""
        from .backbones import split_name
        parts = split_name(name)
        return parts if parts is not None and parts[0] in self.sources else None

    def __contains__(self, name: object) -> bool:
        if dict.__contains__(self, name):
            return True
        parts = self.library_name(name)
        if parts is None:
            return False
        from .backbones import library_names
        return parts[1] in library_names(parts[0])

    def __getitem__(self, name: str) -> Callable[..., nn.Module]:
        if dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        parts = self.library_name(name)
        if parts is None:
            raise KeyError(name)
        return library_builder(*parts)

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def check_name(self, name: str) -> None:
        """Raises ValueError in one line, with the nearest names, for a name it cannot build."""
        if dict.__contains__(self, name):
            return
        parts = self.library_name(name)
        if parts is not None:
            from .backbones import check_name
            check_name(*parts)
            return
        import difflib
        near = difflib.get_close_matches(str(name), list(dict.keys(self)), n=3, cutoff=0.6)
        sources = ''.join(f', or {s}:NAME' for s in self.sources)
        raise ValueError(f"unknown {self.title} architecture '{name}': "
                         + (f"did you mean {', '.join(near)}? " if near else '')
                         + f"choose one of {', '.join(sorted(dict.keys(self)))}{sources}")

    def options_of(self, name: str) -> set[str]:
        return set(inspect.signature(self[name]).parameters)

    def create(self, name: str, **options: Any) -> nn.Module:
        self.check_name(name)
        accepted = self.options_of(name)
        kwargs = {k: v for k, v in options.items() if k in accepted and v is not None}
        return self[name](**kwargs)

    def model_args(self, name: str, **options: Any) -> dict[str, Any]:
        """Every argument the builder will see (the given options it takes, its own defaults
        for the rest): stored in checkpoints so a model can be rebuilt from its file alone."""
        parameters = inspect.signature(self[name]).parameters
        resolved = {k: p.default for k, p in parameters.items()
                    if p.default is not inspect.Parameter.empty}
        resolved.update({k: v for k, v in options.items() if k in parameters and v is not None})
        return resolved

    def names(self, pattern: str = '*') -> list[str]:
        """The names it builds that match `pattern` (fnmatch): its own, then each source's
        ('timm:convnext*', or 'convnext*' across all)."""
        import fnmatch
        from .backbones import library_names
        found = [n for n in sorted(dict.keys(self)) if fnmatch.fnmatchcase(n, pattern)]
        for source in self.sources:
            inner = pattern[len(source) + 1:] if pattern.startswith(source + ':') else \
                pattern if ':' not in pattern else None
            if inner is not None:
                found += [f'{source}:{n}' for n in library_names(source, inner)]
        return found


CIFAR_MODELS = ModelRegistry('CIFAR')
IMAGENET_MODELS = ModelRegistry('ImageNet', libraries=True)
