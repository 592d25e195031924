"""Components registered by name, so that a config can pick them.

Each kind (vision encoders, text models, fusions, objectives, datasets) has its own
`Registry`. A factory is a function that takes keyword overrides and returns a module:

    @VISION_ENCODERS.register("cnn")
    def cnn(**kwargs): return ResNetEncoder(**kwargs)

    VISION_ENCODERS.create("cnn", dim=64)

Tests iterate over every registry and build each component at a tiny size, so a newly
registered component is tested without anyone writing a test for it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._factories: Dict[str, Callable[..., Any]] = {}
        # Smallest kwargs that build a working component, used by generated tests.
        self._tiny: Dict[str, Dict[str, Any]] = {}

    def register(self, name: str, tiny: Dict[str, Any] | None = None):
        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._factories:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._factories[name] = factory
            self._tiny[name] = dict(tiny or {})
            return factory

        return decorate

    def create(self, name: str, **kwargs: Any) -> Any:
        if name not in self._factories:
            known = ", ".join(sorted(self._factories)) or "none"
            raise KeyError(f"unknown {self.kind} '{name}'; registered: {known}")
        return self._factories[name](**kwargs)

    def tiny_kwargs(self, name: str) -> Dict[str, Any]:
        return dict(self._tiny[name])

    def names(self) -> List[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories


VISION_ENCODERS = Registry("vision encoder")
TEXT_MODELS = Registry("text model")
FUSIONS = Registry("fusion")
OBJECTIVES = Registry("objective")
DATASETS = Registry("dataset")
