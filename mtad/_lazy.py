"""Lazy package namespaces: a name is imported from its module on first use, so
`import mtad` (and the CLI's --help, and a torch-free inferencer) does not pay
for torch, timm or scikit-image."""
from __future__ import annotations

import importlib


def lazy_namespace(package: str, api: dict[str, str]):
    """(__getattr__, __dir__) for a package whose names live in modules: ``api``
    maps a public name to the module that defines it, absolute ("mtad.models")
    or relative to the package ("dataset")."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name):
        if name not in api:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = api[name] if api[name].startswith("mtad") else f"{package}.{api[name]}"
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(api))

    return __getattr__, __dir__
