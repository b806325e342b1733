"""The one analysis pattern: ``Config`` dataclass -> ``run(model, config) -> Result`` -> ``save``/``load``.

Every analysis (sweep, projection, monitor, screen, shift, creativity) follows it:

* a frozen **config dataclass** deriving from :class:`AnalysisConfig` — plain JSON-able fields
  (paths as strings, tuples for sequences), with ``to_dict()`` / ``from_dict()`` for the CLI,
  the demo's stage hashes and the ``config.json`` beside every result;
* ``run(model, config, ...) -> Result``: computes numbers only (no figures, no printing beyond
  progress bars); long work resumes through :mod:`persona_lens.runs`;
* a **result** deriving from :class:`AnalysisResult`: ``save(dir)`` writes ``config.json`` +
  ``result.json`` (+ whatever tables the analysis adds) atomically, ``load(dir)`` reads them
  back; figures are drawn from a result by :mod:`persona_lens.viz`, never inside ``run``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..io import atomic_write_json, json_safe

C = TypeVar("C", bound="AnalysisConfig")
R = TypeVar("R", bound="AnalysisResult")

CONFIG_FILE = "config.json"
RESULT_FILE = "result.json"


def _is_tuple_type(tp: Any) -> bool:
    if typing.get_origin(tp) is tuple:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is_tuple_type(a) for a in typing.get_args(tp))
    return False


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """Base of every analysis config: JSON round trip with unknown keys refused by name."""

    name: ClassVar[str] = "analysis"

    def to_dict(self) -> dict[str, Any]:
        return json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        values = {k: tuple(v) if isinstance(v, list) and _is_tuple_type(hints.get(k)) else v for k, v in data.items()}
        return cls(**values)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


class AnalysisResult:
    """Base of every analysis result: ``config`` plus JSON-able numbers (``to_dict``/``from_dict``)."""

    config_type: ClassVar[type[AnalysisConfig]] = AnalysisConfig
    config: AnalysisConfig

    def to_dict(self) -> dict[str, Any]:  # overridden by results with more than dataclass fields
        if not dataclasses.is_dataclass(self):
            raise TypeError(f"{type(self).__name__} must define to_dict()")
        return json_safe({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "config"})

    @classmethod
    def from_dict(cls: type[R], config: AnalysisConfig, data: dict[str, Any]) -> R:
        return cls(config=config, **data)  # type: ignore[call-arg]

    def save(self, directory: str | os.PathLike) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / CONFIG_FILE, {"analysis": self.config.name, **self.config.to_dict()})
        atomic_write_json(out / RESULT_FILE, self.to_dict())
        return out

    @classmethod
    def load(cls: type[R], directory: str | os.PathLike) -> R:
        src = Path(directory)
        raw = json.loads((src / CONFIG_FILE).read_text(encoding="utf-8"))
        kind = raw.pop("analysis", cls.config_type.name)
        if kind != cls.config_type.name:
            raise ValueError(f"{src} holds a {kind!r} result, not {cls.config_type.name!r}")
        config = cls.config_type.from_dict(raw)
        return cls.from_dict(config, json.loads((src / RESULT_FILE).read_text(encoding="utf-8")))
