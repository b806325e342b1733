"""Blending (BILLY): each method against hand-computed numbers on small tensors."""

import math

import pytest
import torch

from persona_lens.blend import blend, gram_schmidt
from persona_lens.cli import main
from persona_lens.errors import ModelMismatchError, NonFiniteError, VectorShapeError
from persona_lens.vectors import PersonaVector


def pv(rows, name, model="m"):
    return PersonaVector(torch.tensor(rows, dtype=torch.float32), {"persona": name, "model_id": model,
                                                                   "method": "mean_diff"})


# layer 0 and layer 1 of three 3-d persona vectors
A = pv([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]], "a")
B = pv([[0.0, 0.0, 2.0], [1.0, 1.0, 0.0]], "b")
C = pv([[6.0, 8.0, 0.0], [0.0, 2.0, 2.0]], "c")


def test_mean_is_plain_average_of_raw_vectors():
    out = blend([A, B, C])
    # layer 0: ((3,4,0) + (0,0,2) + (6,8,0)) / 3 = (3, 4, 2/3); layer 1: (2, 3, 2) / 3
    assert torch.allclose(out.vectors, torch.tensor([[3.0, 4.0, 2 / 3], [2 / 3, 1.0, 2 / 3]]))
    md = out.metadata
    assert md["blend_method"] == "mean" and md["method"] == "blend"
    assert md["weights"] == pytest.approx([1 / 3] * 3)
    assert [c["persona"] for c in md["components"]] == ["a", "b", "c"]
    assert md["components"][0]["norms"] == pytest.approx([5.0, 1.0])
    assert md["components"][2]["norms"] == pytest.approx([10.0, math.sqrt(8)])
    assert md["model_id"] == "m"


def test_edge_rows_blend_like_layers_and_are_dropped_when_any_input_lacks_them():
    def with_edges(v, e, f):
        return PersonaVector(v.vectors, dict(v.metadata), torch.tensor(e), torch.tensor(f))

    a = with_edges(A, [1.0, 0.0, 0.0], [0.0, 0.0, 3.0])
    b = with_edges(B, [0.0, 1.0, 0.0], [0.0, 0.0, 0.0])
    out = blend([a, b], "weighted", [2.0, -1.0])
    assert torch.allclose(out.embed_diff, torch.tensor([2.0, -1.0, 0.0]))
    assert torch.allclose(out.final_norm_diff, torch.tensor([0.0, 0.0, 6.0]))
    assert torch.allclose(out.vectors, 2 * A.vectors - B.vectors)
    # orthogonal: the edge rows are Gram-Schmidt'ed per row like any layer ((1,0,0) then (0,1,0))
    ortho = blend([a, b], "orthogonal")
    assert torch.allclose(ortho.embed_diff, torch.tensor([0.5, 0.5, 0.0]))
    mixed = blend([a, B])
    assert mixed.embed_diff is None and mixed.final_norm_diff is None


def test_duplicate_components_count_twice():
    # BILLY's main config repeats futurist: (a + b + c + c) / 4
    out = blend([A, B, C, C])
    expected = torch.tensor([[(3 + 0 + 12) / 4, (4 + 0 + 16) / 4, 2 / 4], [(1 + 1 + 0) / 4, (0 + 1 + 4) / 4, 4 / 4]])
    assert torch.allclose(out.vectors, expected)
    assert [c["persona"] for c in out.metadata["components"]] == ["a", "b", "c", "c"]


def test_weighted_is_a_plain_weighted_sum():
    out = blend([A, B], "weighted", [2.0, -0.5])
    # layer 0: 2*(3,4,0) - 0.5*(0,0,2) = (6, 8, -1); layer 1: 2*(1,0,0) - 0.5*(1,1,0) = (1.5, -0.5, 0)
    assert torch.allclose(out.vectors, torch.tensor([[6.0, 8.0, -1.0], [1.5, -0.5, 0.0]]))
    assert out.metadata["weights"] == [2.0, -0.5]


def test_normalized_averages_unit_vectors_per_layer():
    out = blend([A, B], "normalized")
    # layer 0: ((0.6, 0.8, 0) + (0, 0, 1)) / 2 ; layer 1: ((1,0,0) + (1,1,0)/sqrt2) / 2
    s = 1 / math.sqrt(2)
    assert torch.allclose(out.vectors, torch.tensor([[0.3, 0.4, 0.5], [(1 + s) / 2, s / 2, 0.0]]), atol=1e-6)
    w = blend([A, B], "normalized", [1.0, 3.0])
    assert torch.allclose(w.vectors[0], torch.tensor([0.6, 0.8, 3.0]), atol=1e-6)


def test_orthogonal_gram_schmidt_in_order_then_average():
    out = blend([A, B, C], "orthogonal")
    # layer 0: o_a = (3,4,0); o_b = (0,0,2) (already orthogonal); o_c = (6,8,0) - 2*(3,4,0) = 0
    # layer 1: o_a = (1,0,0); o_b = (1,1,0) - (1,0,0) = (0,1,0); o_c = (0,2,2) - 2*(0,1,0) = (0,0,2)
    assert torch.allclose(out.vectors, torch.tensor([[1.0, 4 / 3, 2 / 3], [1 / 3, 1 / 3, 2 / 3]]), atol=1e-6)
    comps = gram_schmidt(torch.stack([A.vectors, B.vectors, C.vectors]))
    assert torch.equal(comps[2, 0], torch.zeros(3))  # c lies in span(a) at layer 0: exactly zero
    for l in range(2):  # residuals are mutually orthogonal
        g = comps[:, l] @ comps[:, l].T
        assert torch.allclose(g - torch.diag(torch.diag(g)), torch.zeros(3, 3), atol=1e-6)
    assert out.metadata["orthogonal_order"] == ["a", "b", "c"]
    # order matters: c first keeps c whole
    rev = blend([C, A], "orthogonal")
    assert torch.allclose(rev.vectors[0], torch.tensor([3.0, 4.0, 0.0]))


def test_orthogonal_duplicate_contributes_zero():
    out = blend([A, B, B], "orthogonal", [1.0, 1.0, 1.0])
    assert torch.allclose(out.vectors, A.vectors + torch.stack([B.vectors[0], B.vectors[1] - A.vectors[1]]),
                          atol=1e-6)


def test_refuses_other_models_and_widths():
    with pytest.raises(ModelMismatchError):
        blend([A, pv([[1.0, 0, 0], [0, 1.0, 0]], "x", model="other")])
    with pytest.raises(VectorShapeError):
        blend([A, pv([[1.0, 0], [0, 1.0]], "x")])
    with pytest.raises(VectorShapeError):
        blend([A, pv([[1.0, 0, 0]], "x")])


def test_bad_arguments():
    with pytest.raises(ValueError, match="no weights"):
        blend([A, B], "mean", [1, 2])
    with pytest.raises(ValueError, match="needs weights"):
        blend([A, B], "weighted")
    with pytest.raises(ValueError, match="2 vectors"):
        blend([A, B], "weighted", [1.0])
    with pytest.raises(NonFiniteError):
        blend([A, B], "weighted", [1.0, float("nan")])
    with pytest.raises(ValueError, match="unknown blend method"):
        blend([A, B], "median")
    with pytest.raises(ValueError):
        blend([])


def test_cli_blend_roundtrip(tmp_path, capsys):
    paths = []
    for v in (A, B, C):
        paths.append(str(v.save(tmp_path / f"{v.name}.safetensors")))
    out = tmp_path / "m.safetensors"
    assert main(["blend", paths[0], paths[1], paths[2], paths[2], "--out", str(out)]) == 0
    m = PersonaVector.load(out)
    assert torch.allclose(m.vectors, blend([A, B, C, C]).vectors)
    assert m.metadata["blend_method"] == "mean"
    assert [c["persona"] for c in m.metadata["components"]] == ["a", "b", "c", "c"]
    assert m.metadata["component_files"][3] == paths[2]

    out2 = tmp_path / "w.safetensors"
    assert main(["blend", paths[0], paths[1], "--weights", "2,-0.5", "--out", str(out2), "--name", "ab"]) == 0
    w = PersonaVector.load(out2)
    assert w.metadata["blend_method"] == "weighted" and w.name == "ab"
    assert torch.allclose(w.vectors, torch.tensor([[6.0, 8.0, -1.0], [1.5, -0.5, 0.0]]))

    other = pv([[1.0, 0, 0], [0, 1.0, 0]], "x", model="other").save(tmp_path / "x.safetensors")
    assert main(["blend", paths[0], str(other), "--out", str(tmp_path / "bad.safetensors")]) == 1
    assert "ModelMismatchError" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()
