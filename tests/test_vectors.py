"""PersonaVector: validation, arithmetic, and the file formats (safetensors, Persona Vectors .pt)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from persona_lens.errors import (
    LayerOutOfRangeError,
    MissingLayerError,
    ModelMismatchError,
    NonFiniteError,
    VectorFileError,
    VectorShapeError,
)
from persona_lens.vectors import METADATA_KEY, TENSOR_KEY, PersonaVector, check_compatible

N_LAYERS, D = 30, 576


def _vec(seed=0, n_layers=N_LAYERS, d=D, **md) -> PersonaVector:
    g = torch.Generator().manual_seed(seed)
    md = {"persona": "humorous", "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "method": "mean_diff", **md}
    return PersonaVector(torch.randn(n_layers, d, generator=g), md)


# --------------------------------------------------------------------------- construction


def test_construction_and_metadata():
    v = _vec()
    assert v.n_layers == N_LAYERS and v.d_model == D
    assert v.vectors.dtype == torch.float32 and v.vectors.is_contiguous()
    assert v.name == "humorous" and v.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    md = v.metadata
    assert md["n_layers"] == N_LAYERS and md["d_model"] == D and md["hook"] == "resid_post"
    assert "package_version" in md and "created" in md
    # float64 / non-contiguous input is normalized
    w = PersonaVector(torch.randn(D, 3, dtype=torch.float64).T)
    assert w.vectors.dtype == torch.float32 and w.vectors.is_contiguous() and w.name == "persona"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_rejected_at_construction(bad):
    t = torch.zeros(4, 8)
    t[2, 5] = bad
    with pytest.raises(NonFiniteError, match=r"\(2, 5\)"):
        PersonaVector(t)


@pytest.mark.parametrize("shape", [(8,), (2, 3, 4), ()])
def test_wrong_rank_rejected(shape):
    with pytest.raises(VectorShapeError):
        PersonaVector(torch.zeros(shape))


def test_layer_access():
    v = _vec()
    assert torch.equal(v.layer(0), v.vectors[0]) and torch.equal(v.layer(29), v.vectors[29])
    for bad in (-1, 30):
        with pytest.raises(LayerOutOfRangeError):
            v.layer(bad)
    assert torch.allclose(v.unit(3).norm(), torch.tensor(1.0))
    assert torch.allclose(v.norms(), v.vectors.norm(dim=-1))
    n = v.normalized()
    assert torch.allclose(n.norms(), torch.ones(N_LAYERS)) and n.metadata["normalized"] is True
    assert PersonaVector(torch.zeros(2, 4)).unit(0).abs().sum() == 0  # no division by zero


# --------------------------------------------------------------------------- arithmetic


def test_arithmetic():
    a, b = _vec(0), _vec(1, persona="evil")
    assert torch.equal((a + b).vectors, a.vectors + b.vectors)
    assert torch.equal((a - b).vectors, a.vectors - b.vectors)
    assert torch.equal((a * 2.5).vectors, a.vectors * 2.5)
    assert torch.equal((2.5 * a).vectors, a.vectors * 2.5)
    assert torch.equal((-a).vectors, -a.vectors)
    assert torch.allclose((a / 4).vectors, a.vectors / 4)
    s = a + b
    assert s.metadata["method"] == "add" and s.model_id == a.model_id
    assert "humorous" in s.name and "evil" in s.name
    with pytest.raises(NonFiniteError):
        a * float("nan")
    with pytest.raises(TypeError):
        a * a
    with pytest.raises(TypeError):
        a + 1.0


def test_compatibility_errors():
    a = _vec(0)
    with pytest.raises(VectorShapeError):
        a + _vec(1, d=D + 1)
    with pytest.raises(VectorShapeError):
        check_compatible([a, _vec(1, n_layers=N_LAYERS - 1)])
    with pytest.raises(ModelMismatchError):
        a + _vec(1, model_id="google/gemma-3-270m")
    check_compatible([a, _vec(2)])
    with pytest.raises(ValueError):
        check_compatible([])


# --------------------------------------------------------------------------- safetensors


def test_safetensors_round_trip(tmp_path):
    from safetensors import safe_open

    v = _vec(0, extra={"nested": [1, 2, {"x": "é"}]})
    path = v.save(tmp_path / "humorous.safetensors")
    assert path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["humorous.safetensors"]  # no temp file left
    w = PersonaVector.load(path)
    assert torch.equal(w.vectors, v.vectors)
    assert w.metadata == json.loads(json.dumps(v.metadata))

    # the raw file contract
    with safe_open(str(path), framework="pt") as fh:
        assert list(fh.keys()) == [TENSOR_KEY] == ["vectors"]
        t = fh.get_tensor("vectors")
        header = fh.metadata()
    assert t.dtype == torch.float32 and tuple(t.shape) == (N_LAYERS, D)
    assert torch.equal(t, v.vectors)
    assert set(header) == {METADATA_KEY} and METADATA_KEY == "persona_lens"
    md = json.loads(header["persona_lens"])
    assert md["persona"] == "humorous" and md["n_layers"] == N_LAYERS and md["d_model"] == D
    assert md["extra"] == {"nested": [1, 2, {"x": "é"}]}


def test_failing_save_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    target = tmp_path / "v.safetensors"
    with pytest.raises(OSError, match="disk full"):
        _vec().save(target)
    assert list(tmp_path.iterdir()) == []

    # an existing file is left intact by a failing overwrite
    monkeypatch.undo()
    old = _vec(7)
    old.save(target)
    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError):
        _vec(8).save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]
    monkeypatch.undo()
    assert torch.equal(PersonaVector.load(target).vectors, old.vectors)


def test_failing_pt_export_leaves_nothing(tmp_path, monkeypatch):
    def broken(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        _vec_with_edges().to_pt(tmp_path / "v.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_in_loaded_file(tmp_path, bad):
    from safetensors.torch import save_file

    t = torch.randn(N_LAYERS, D)
    t[4, 10] = bad
    path = tmp_path / "bad.safetensors"
    save_file({"vectors": t}, str(path), metadata={"persona_lens": json.dumps({"persona": "x"})})
    with pytest.raises(NonFiniteError):
        PersonaVector.load(path)
    pt = tmp_path / "bad.pt"
    torch.save(torch.cat([torch.zeros(1, D), t]), pt)
    with pytest.raises(NonFiniteError):
        PersonaVector.load(pt)


def test_bad_vector_files(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(VectorFileError, match="not found"):
        PersonaVector.load(tmp_path / "missing.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"weights": torch.zeros(2, 3)}, str(other))
    with pytest.raises(VectorFileError, match="vectors"):
        PersonaVector.load(other)
    bad_md = tmp_path / "badmd.safetensors"
    save_file({"vectors": torch.zeros(2, 3)}, str(bad_md), metadata={"persona_lens": "{not json"})
    with pytest.raises(VectorFileError, match="not JSON"):
        PersonaVector.load(bad_md)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 this is not a safetensors file")
    with pytest.raises(VectorFileError):
        PersonaVector.load(garbage)
    no_md = tmp_path / "nomd.safetensors"
    save_file({"vectors": torch.ones(2, 3)}, str(no_md))
    assert PersonaVector.load(no_md).n_layers == 2  # metadata is optional


# --------------------------------------------------------------------------- Persona Vectors .pt


def _vec_with_edges(seed=3) -> PersonaVector:
    g = torch.Generator().manual_seed(seed + 100)
    v = _vec(seed)
    return PersonaVector(v.vectors, v.metadata, embed_diff=torch.randn(D, generator=g),
                         final_norm_diff=torch.randn(D, generator=g))


def test_pt_export_rows(tmp_path):
    """row 0 = embed_diff, row k = layer k - 1 (k < n), row n = final_norm_diff: never layer n - 1."""
    v = _vec_with_edges()
    path = v.to_pt(tmp_path / "humorous_response_avg_diff.pt")
    raw = torch.load(path, weights_only=True)
    assert tuple(raw.shape) == (N_LAYERS + 1, D)
    assert torch.equal(raw[0], v.embed_diff)
    assert torch.equal(raw[1:N_LAYERS], v.vectors[: N_LAYERS - 1])
    assert torch.equal(raw[N_LAYERS], v.final_norm_diff)


def test_pt_export_without_edge_rows_is_a_named_error(tmp_path):
    v = _vec(3)  # no embed_diff / final_norm_diff (an old file, a blend)
    with pytest.raises(MissingLayerError, match="row 0 .*row 30"):
        v.to_pt(tmp_path / "v.pt")
    assert list(tmp_path.iterdir()) == []
    raw = torch.load(v.to_pt(tmp_path / "v.pt", missing_rows="zeros"), weights_only=True)
    assert torch.equal(raw[0], torch.zeros(D)) and torch.equal(raw[N_LAYERS], torch.zeros(D))
    assert torch.equal(raw[1:N_LAYERS], v.vectors[: N_LAYERS - 1])
    with pytest.raises(ValueError, match="missing_rows"):
        v.to_pt(tmp_path / "w.pt", missing_rows="last_layer")


def test_pt_import_maps_rows_back(tmp_path):
    v = _vec_with_edges()
    path = v.to_pt(tmp_path / "humorous_response_avg_diff.pt")
    w = PersonaVector.load(path)  # load() dispatches on the suffix
    assert w.name == "humorous" and w.metadata["source"] == "persona_vectors_pt" and w.n_layers == N_LAYERS
    assert torch.equal(w.embed_diff, v.embed_diff) and torch.equal(w.final_norm_diff, v.final_norm_diff)
    assert torch.equal(w.vectors[: N_LAYERS - 1], v.vectors[: N_LAYERS - 1])
    assert w.missing_layers == [N_LAYERS - 1] and torch.isnan(w.vectors[N_LAYERS - 1]).all()
    with pytest.raises(MissingLayerError):
        w.layer(N_LAYERS - 1)
    with pytest.raises(MissingLayerError):
        w.unit(N_LAYERS - 1)
    assert PersonaVector.from_pt(path, model_id="m").model_id == "m"
    # pt -> safetensors -> pt keeps every row bit for bit, and the missing layer stays missing
    back = PersonaVector.load(PersonaVector.from_pt(path).save(tmp_path / "back.safetensors"))
    assert back.missing_layers == [N_LAYERS - 1]
    assert torch.equal(back.pt_rows(), torch.load(path, weights_only=True))
    # arithmetic keeps the bases apart: the missing layer stays missing, edge rows combine
    s = back + v
    assert s.missing_layers == [N_LAYERS - 1] and torch.equal(s.embed_diff, back.embed_diff + v.embed_diff)
    assert (2 * back).missing_layers == [N_LAYERS - 1]


def test_pt_import_upstream_layout(tmp_path):
    # an upstream Persona Vectors file: [n_layers + 1, d], row 0 a real embedding-layer row
    full = torch.randn(N_LAYERS + 1, D)
    path = tmp_path / "evil_response_avg_diff.pt"
    torch.save(full, path)
    v = PersonaVector.load(path)
    assert v.name == "evil" and v.n_layers == N_LAYERS
    assert torch.equal(v.vectors[: N_LAYERS - 1], full[1:N_LAYERS]) and torch.equal(v.final_norm_diff, full[-1])
    # a dict holding one tensor is accepted
    torch.save({"vec": full}, tmp_path / "d.pt")
    assert torch.equal(PersonaVector.load(tmp_path / "d.pt").embed_diff, full[0])


def test_edge_rows_in_safetensors(tmp_path):
    from safetensors import safe_open

    v = _vec_with_edges()
    path = v.save(tmp_path / "v.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        assert sorted(fh.keys()) == ["embed_diff", "final_norm_diff", "vectors"]
    w = PersonaVector.load(path)
    assert torch.equal(w.embed_diff, v.embed_diff) and torch.equal(w.final_norm_diff, v.final_norm_diff)
    assert w.normalized().embed_diff.norm().item() == pytest.approx(1.0)
    # an old file (vectors only) still loads, without edge rows
    old = PersonaVector.load(_vec().save(tmp_path / "old.safetensors"))
    assert old.embed_diff is None and old.final_norm_diff is None and old.missing_layers == []
    with pytest.raises(VectorShapeError, match="embed_diff"):
        PersonaVector(v.vectors, embed_diff=torch.zeros(D + 1))
    with pytest.raises(NonFiniteError, match="final_norm_diff"):
        PersonaVector(v.vectors, final_norm_diff=torch.full((D,), float("nan")))


def test_bad_pt_files(tmp_path):
    torch.save(torch.zeros(D), tmp_path / "a.pt")
    torch.save(torch.zeros(1, D), tmp_path / "b.pt")
    torch.save({"a": torch.zeros(3, D), "b": torch.zeros(3, D)}, tmp_path / "c.pt")
    (tmp_path / "d.pt").write_bytes(b"not a torch file")
    for name in "abcd":
        with pytest.raises(VectorFileError):
            PersonaVector.load(tmp_path / f"{name}.pt")


# --------------------------------------------------------------------------- against the model


@pytest.mark.slow
def test_check_model(default_model):
    _vec().check_model(default_model)
    with pytest.raises(VectorShapeError, match="576"):
        _vec(d=D + 64).check_model(default_model)
    with pytest.raises(VectorShapeError, match="layers"):
        _vec(n_layers=N_LAYERS - 2).check_model(default_model)


def test_norm_helpers_are_finite():
    v = PersonaVector(torch.zeros(3, 4))
    assert all(math.isfinite(x) for x in v.normalized().vectors.flatten().tolist())
