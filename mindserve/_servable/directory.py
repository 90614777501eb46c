"""Where a servable lives on disk: ``<servable_directory>/<name>/servable_config.py`` plus model files in
all-digit version folders (``<name>/1/``, ``<name>/2/`` ...). Reads the file system only, never user code."""

from __future__ import annotations

import os


def servable_path(servable_directory: str, name: str) -> str:
    """The servable's folder, after checking that it and its servable_config.py exist."""
    path = os.path.join(servable_directory, name)
    if not os.path.isdir(path):
        raise RuntimeError(
            f"Check servable config failed, directory '{path}' not exist, servable directory "
            f"'{servable_directory}', servable name '{name}'"
        )
    config = os.path.join(path, "servable_config.py")
    if not os.path.isfile(config):
        raise RuntimeError(
            f"Check servable config failed, file '{config}' not exist, servable directory "
            f"'{servable_directory}', servable name '{name}'"
        )
    return path


def version_numbers(servable_directory: str, name: str) -> list[int]:
    """The version numbers present, ascending (folders named by digits alone, read as integers)."""
    path = os.path.join(servable_directory, name)
    found = []
    for entry in os.listdir(path):
        if entry.isdigit() and entry.isascii() and os.path.isdir(os.path.join(path, entry)) and int(entry) > 0:
            found.append(int(entry))
    return sorted(found)


def version_path(servable_directory: str, name: str, version: int) -> str:
    """The folder of one version; its name is the plain decimal number."""
    return os.path.join(servable_directory, name, str(version))


def resolve_version(servable_directory: str, name: str, version_number: int) -> int:
    """The version to start: the newest present for 0 (0 again when there is none: a servable without models
    needs no version folder), else ``version_number`` after checking that its folder exists."""
    versions = version_numbers(servable_directory, name)
    if version_number == 0:
        return versions[-1] if versions else 0
    if not os.path.isdir(version_path(servable_directory, name, version_number)):
        raise RuntimeError(
            f"Start servable failed: There is no specified version directory of models, specified "
            f"version number: {version_number}, servable directory: '{servable_directory}', "
            f"servable name: '{name}'"
        )
    return version_number
