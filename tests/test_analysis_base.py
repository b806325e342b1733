"""The shared analysis pattern: config JSON round trip, result save/load."""

from __future__ import annotations

import dataclasses

import pytest

from persona_lens.analysis.base import AnalysisConfig, AnalysisResult


@dataclasses.dataclass(frozen=True)
class DemoConfig(AnalysisConfig):
    name = "demo_analysis"
    layers: tuple[int, ...] = (1, 2)
    alpha: float = 0.5
    out: str | None = None


@dataclasses.dataclass
class DemoResult(AnalysisResult):
    config_type = DemoConfig
    config: DemoConfig
    scores: list[float]


def test_config_round_trips_through_json_types():
    cfg = DemoConfig(layers=(3, 4), alpha=float("nan"))
    data = cfg.to_dict()
    assert data == {"layers": [3, 4], "alpha": None, "out": None}  # NaN is JSON-safe None
    back = DemoConfig.from_dict({"layers": [3, 4], "alpha": 0.5, "out": None})
    assert back == DemoConfig(layers=(3, 4), alpha=0.5)


def test_unknown_config_field_is_named():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['alhpa'\]"):
        DemoConfig.from_dict({"alhpa": 1.0})


def test_result_save_load(tmp_path):
    res = DemoResult(DemoConfig(layers=(7,)), [0.25, 0.75])
    res.save(tmp_path)
    back = DemoResult.load(tmp_path)
    assert back.config == res.config and back.scores == [0.25, 0.75]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "result.json"]


def test_load_refuses_another_analysis(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Other(AnalysisConfig):
        name = "other"

    @dataclasses.dataclass
    class OtherResult(AnalysisResult):
        config_type = Other
        config: Other

    DemoResult(DemoConfig(), [1.0]).save(tmp_path)
    with pytest.raises(ValueError, match="holds a 'demo_analysis' result"):
        OtherResult.load(tmp_path)
