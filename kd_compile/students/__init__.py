"""Student families: model-free parameter spaces that build ``nn.Module`` students.

Built-in families register by being imported here (``trade``, ``cnn``, ``teacher-family``, ...);
plugins come in through the ``kd_compile.spaces`` entry-point group.
"""

from . import cnn as _cnn  # noqa: F401  (registers the built-in families)
from . import fbnet as _fbnet  # noqa: F401
from . import nb201 as _nb201  # noqa: F401
from . import ofa as _ofa  # noqa: F401
from . import timm_family as _timm_family  # noqa: F401
from . import trade as _trade  # noqa: F401
from .base import StudentSpace, create_space, get_space, list_spaces, register_space, space_for_teacher

__all__ = ["StudentSpace", "create_space", "get_space", "list_spaces", "register_space", "space_for_teacher"]
