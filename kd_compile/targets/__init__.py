"""Target device profiles (TOML data files) and their loader."""

from .profile import TargetProfile, get_target, list_targets, load_target_file

__all__ = ["TargetProfile", "get_target", "list_targets", "load_target_file"]
