"""What a script contributes to the engine: a small base class whose methods a script
overrides, as a Lightning DataModule (its model registry, how it builds its data, its
checks and its start from pretrained weights); the engine calls them."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    import torch.nn as nn

    from models.registry import ModelRegistry
    from utils.data.datasets import DataBundle
    from utils.data.fastdata import DeviceLoader
    from utils.distributed import Runtime


class TrainingScript:
    """The defaults are those of a script with nothing of its own to add: a subclass sets
    the class attributes and overrides the methods it has."""

    name: str = ''  # shown in titles and checked against checkpoints: 'cifar', 'imagenet'
    registry: ModelRegistry | None = None  # models.registry.ModelRegistry
    # builder argument -> the args dest that sets it, e.g. {'depth': 'depth', 'dropRate':
    # 'drop'}: the architecture options, which a self-describing checkpoint also supplies
    model_flags: dict[str, str] = {}
    # normalisation of the authors' checkpoints, which do not record it
    legacy_normalization: tuple[Sequence[float], Sequence[float]] | None = None
    # the registry name of what is optimised and measured (utils.objectives)
    objective: str = 'single-label'
    # what --attention-maps optimises instead (utils.train.teaching): the objective plus the
    # map loss; it takes the script's objective options, `weight` and `focal`
    map_objective: str = 'attention-maps'

    def configured(self, args: argparse.Namespace, given: set[str]) -> TrainingScript:
        """The script for these parsed options (`given`: the dests typed, which it may add
        to); a script whose objective depends on an option returns a copy."""
        return self

    def build_data(self, args: argparse.Namespace, evaluate_only: bool,
                   normalization: tuple[Sequence[float], Sequence[float]] | None) -> DataBundle:
        """The DataBundle of the run (`normalization`: (mean, std) a checkpoint asks for,
        or None for the data set's own)."""
        raise NotImplementedError

    def check_arguments(self, args: argparse.Namespace) -> None:
        """The script's own checks, once a resumed file's options are applied."""

    def objective_options(self, args: argparse.Namespace) -> dict[str, Any] | None:
        """{keyword: value} for the objective's constructor, or None where the script has no
        options of its own (a resumed file's objective is then taken as it is)."""
        return None

    def init_pretrained(self, model: nn.Module, args: argparse.Namespace,
                        runtime: Runtime) -> None:
        """A new model's start from pretrained weights (--pretrained, --weights ...)."""

    def prepare_model(self, model: nn.Module, args: argparse.Namespace,
                      runtime: Runtime) -> None:
        """Once the weights are in and before the model is placed on its device."""

    def fast_train_loader(self, args: argparse.Namespace, data: DataBundle,
                          runtime: Runtime) -> DeviceLoader | None:
        """The fast path's device-resident training loader, or None (the standard one)."""
        return None

    def fast_eval_loader(self, args: argparse.Namespace, data: DataBundle,
                         runtime: Runtime) -> DeviceLoader | None:
        return None

    def model_options(self, args: argparse.Namespace) -> dict[str, Any]:
        """The architecture options of `args`, as the registry's builders name them."""
        return {argument: getattr(args, dest) for argument, dest in self.model_flags.items()}
