"""What a run optimises and reports (utils.objectives.base has the seam). Importing this
package registers every objective: single-label (the authors'), attention-maps (teaching the
map), multi-label and multi-label-focal (celeba.py), multi-label-attention-maps (teaching its
maps)."""
from utils.objectives import (map_loss, multi_label, single_label,  # noqa: F401
                              task_map_loss)  # (registered on import)
from utils.objectives.base import (AUTHORS_COLUMNS, OBJECTIVES, Objective, get_objective,
                                   register_objective)
from utils.objectives.single_label import SingleLabelObjective

__all__ = ['AUTHORS_COLUMNS', 'OBJECTIVES', 'Objective', 'SingleLabelObjective',
           'get_objective', 'register_objective']
