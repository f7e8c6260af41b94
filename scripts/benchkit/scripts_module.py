"""Loads one of scripts/*.py as a module, for the unit tests of its functions
(the scripts are programs, not packages)."""

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parent.parent


def load(name: str) -> ModuleType:
    """scripts/NAME.py as a module named NAME_script."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
