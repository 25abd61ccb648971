"""What a script contributes to the engine: its model registry, how it builds its data, and
the hooks of its options."""
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Task:
    """What a script contributes to the engine."""
    name: str  # shown in titles: 'cifar', 'imagenet'
    registry: object  # models.registry.ModelRegistry
    # (args, evaluate_only, normalization or None) -> DataBundle
    build_data: Callable
    # builder argument -> the args dest that sets it, e.g. {'depth': 'depth', 'dropRate':
    # 'drop'}: the architecture options, which a self-describing checkpoint also supplies
    model_flags: dict
    # normalisation of the authors' checkpoints, which do not record it
    legacy_normalization: tuple
    # (model, args, runtime) -> None: starts a fresh model from pretrained weights
    init_pretrained: Optional[Callable] = None
    # (args, bundle, runtime) -> loader or None: the fast path's device-resident loaders
    fast_train_loader: Optional[Callable] = None
    fast_eval_loader: Optional[Callable] = None
    # the registry name of what is optimised and measured (utils.objectives)
    objective: str = 'single-label'
    # args -> {keyword: value} for that objective's constructor (e.g. a loss weight)
    objective_options: Optional[Callable] = None
    # what --attention-maps optimises instead (utils.teach.fine_tune): the objective plus
    # the map loss; it takes the task's objective options, `weight` and `focal`
    map_objective: str = 'attention-maps'
    # (model, args, runtime) -> None: once the weights are in (a new, resumed or pretrained
    # run) and before the model is placed on its device, e.g. to freeze part of it
    prepare_model: Optional[Callable] = None
    # args -> None: the script's own checks, once a resumed file's options are applied
    check_arguments: Optional[Callable] = None

    def model_options(self, args):
        """The architecture options of `args`, as the registry's builders name them."""
        return {argument: getattr(args, dest) for argument, dest in self.model_flags.items()}
