"""Models register themselves by name; the scripts build them through `create`, so no script
branches on an architecture's name."""
import inspect


class ModelRegistry(dict):
    """name -> builder function. `create` passes a builder only the options it declares, so
    one set of command-line options (depth, widen_factor, ...) serves every family."""

    def __init__(self, title):
        super().__init__()
        self.title = title

    def register(self, builder):
        self[builder.__name__] = builder
        return builder

    def options_of(self, name):
        return set(inspect.signature(self[name]).parameters)

    def create(self, name, **options):
        if name not in self:
            raise ValueError(f"unknown {self.title} architecture '{name}': choose one of "
                             f"{', '.join(sorted(self))}")
        accepted = self.options_of(name)
        kwargs = {k: v for k, v in options.items() if k in accepted and v is not None}
        return self[name](**kwargs)

    def model_args(self, name, **options):
        """Every argument the builder will see (the given options it takes, its own defaults
        for the rest): stored in checkpoints so a model can be rebuilt from its file alone."""
        parameters = inspect.signature(self[name]).parameters
        resolved = {k: p.default for k, p in parameters.items()
                    if p.default is not inspect.Parameter.empty}
        resolved.update({k: v for k, v in options.items() if k in parameters and v is not None})
        return resolved


CIFAR_MODELS = ModelRegistry('CIFAR')
IMAGENET_MODELS = ModelRegistry('ImageNet')
