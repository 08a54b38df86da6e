"""Student search spaces."""

from .base import Config, Param, SearchSpace, create_space, list_spaces, register_space

__all__ = ["Config", "Param", "SearchSpace", "create_space", "list_spaces", "register_space"]
