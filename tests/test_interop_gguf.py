"""GGUF control vectors: file layout read back with gguf.GGUFReader, llama.cpp's layer mapping,
metadata, float32, round trips, CLI."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from persona_lens.cli import main
from persona_lens.errors import LayerOutOfRangeError, MissingLayerError, VectorFileError
from persona_lens.interop import load_vector
from persona_lens.interop.gguf import export_gguf, load_gguf_control_vector
from persona_lens.vectors import PersonaVector

N_LAYERS, D = 6, 16


@pytest.fixture
def vector() -> PersonaVector:
    g = torch.Generator().manual_seed(0)
    # Row l is filled with a recognisable pattern: l + small noise, so a shifted mapping shows.
    rows = torch.arange(N_LAYERS, dtype=torch.float32)[:, None] + 0.01 * torch.randn(N_LAYERS, D, generator=g)
    return PersonaVector(rows, {"persona": "evil", "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct"})


def _fields(reader: gguf.GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def llama_cpp_layer_tensors(path, n_layer: int, strength: float = 1.0) -> dict[int, np.ndarray]:
    """Python transcription of llama.cpp's path from file to graph, to pin the convention.

    common_control_vector_load_one: ``direction.N`` -> data[n_embd*(N-1) : n_embd*N] += strength * t
    llama_adapter_cvec::apply:      tensors[il] <- data[n_embd*(il-1) ...] for il in 1..n_layer-1
    model graph:                    l_out(il) = build_cvec(block_il(x), il) adds tensors[il]
    Returns {il: vector added to the output of 0-based block il}.
    """
    reader = gguf.GGUFReader(str(path))
    n_embd, data = -1, np.zeros(0, dtype=np.float32)
    for t in reader.tensors:
        prefix, _, idx = t.name.partition(".")
        assert prefix == "direction"
        layer_idx = int(idx)
        assert layer_idx > 0, "llama.cpp rejects direction.0"
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert len(t.shape) == 1
        n_embd = int(t.n_elements)
        if data.size < n_embd * layer_idx:
            data = np.concatenate([data, np.zeros(n_embd * layer_idx - data.size, dtype=np.float32)])
        data[n_embd * (layer_idx - 1): n_embd * layer_idx] += np.asarray(t.data, dtype=np.float32) * strength
    out = {}
    for il in range(1, n_layer):
        off = n_embd * (il - 1)
        if off + n_embd <= data.size:
            out[il] = data[off: off + n_embd]
    return out


def test_layer_mapping_metadata_dtype(tmp_path, vector):
    path = export_gguf(vector, tmp_path / "evil.gguf", alpha=1.0, layers=[1, 3, 5])
    reader = gguf.GGUFReader(str(path))
    fields = _fields(reader)
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert fields["controlvector.layer_count"] == 3
    md = json.loads(fields["persona_lens.metadata"])
    assert md["gguf_alpha"] == 1.0 and md["gguf_layers"] == [1, 3, 5] and md["n_layers"] == N_LAYERS
    names = [t.name for t in reader.tensors]
    assert names == ["direction.1", "direction.3", "direction.5"]
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert t.data.dtype == np.float32 and list(t.shape) == [D]
        l = int(t.name.split(".")[1])
        # direction.N holds our row N (layer N = blocks.N.hook_resid_post), not N-1 or N+1.
        np.testing.assert_array_equal(t.data, vector.vectors[l].numpy())


def test_llama_cpp_reader_adds_our_row_l_to_block_l_output(tmp_path, vector):
    alpha = 2.5
    vector.vectors[0] = 0
    path = export_gguf(vector, tmp_path / "evil.gguf", alpha=alpha)
    added = llama_cpp_layer_tensors(path, n_layer=N_LAYERS)
    assert sorted(added) == list(range(1, N_LAYERS))
    for il, vec in added.items():
        np.testing.assert_allclose(vec, alpha * vector.vectors[il].numpy(), rtol=1e-6)
    # --control-vector-scaled FILE S multiplies at load time: alpha=1 file scaled by S == alpha=S file.
    path1 = export_gguf(vector, tmp_path / "unit.gguf", alpha=1.0)
    scaled = llama_cpp_layer_tensors(path1, n_layer=N_LAYERS, strength=alpha)
    for il in added:
        np.testing.assert_allclose(scaled[il], added[il], rtol=1e-6)


def test_default_layers_skip_layer_zero(tmp_path, vector):
    with pytest.warns(UserWarning, match="layer 0"):
        path = export_gguf(vector, tmp_path / "all.gguf")
    names = [t.name for t in gguf.GGUFReader(str(path)).tensors]
    assert names == [f"direction.{l}" for l in range(1, N_LAYERS)]
    with pytest.raises(LayerOutOfRangeError, match="layer 0"):
        export_gguf(vector, tmp_path / "zero.gguf", layers=[0])
    with pytest.raises(LayerOutOfRangeError):
        export_gguf(vector, tmp_path / "big.gguf", layers=[N_LAYERS])


def test_round_trip(tmp_path, vector):
    vector.vectors[0] = 0  # layer 0 cannot travel through GGUF
    path = export_gguf(vector, tmp_path / "evil.gguf")
    back = load_gguf_control_vector(path)
    assert back.n_layers == N_LAYERS and back.d_model == D
    torch.testing.assert_close(back.vectors, vector.vectors, rtol=0, atol=0)
    assert back.name == "evil" and back.model_id == vector.model_id and back.metadata["gguf_alpha"] == 1.0
    # load_vector dispatches on the suffix; PersonaVector.load (safetensors, .pt) points to it.
    torch.testing.assert_close(load_vector(path).vectors, vector.vectors)
    with pytest.raises(VectorFileError, match="load_vector"):
        PersonaVector.load(path)
    # alpha is baked in: the file holds alpha * v.
    scaled = load_gguf_control_vector(export_gguf(vector, tmp_path / "x2.gguf", alpha=-2.0, layers=[4]))
    torch.testing.assert_close(scaled.vectors[4], -2.0 * vector.vectors[4])
    assert scaled.vectors[[0, 1, 2, 3, 5]].abs().sum() == 0


def test_missing_layer_is_never_exported(tmp_path, vector):
    """A vector imported from a Persona Vectors .pt lacks its last pre-norm layer: GGUF export
    leaves it out by default and refuses it by name."""
    vector.vectors[0] = 0
    pt = PersonaVector(vector.vectors, vector.metadata, embed_diff=torch.zeros(D),
                       final_norm_diff=torch.ones(D)).to_pt(tmp_path / "evil.pt")
    imported = PersonaVector.from_pt(pt)
    path = export_gguf(imported, tmp_path / "evil.gguf")
    assert [t.name for t in gguf.GGUFReader(str(path)).tensors] == [f"direction.{l}" for l in range(1, N_LAYERS - 1)]
    back = load_gguf_control_vector(path)
    assert back.missing_layers == [N_LAYERS - 1]
    torch.testing.assert_close(back.vectors[: N_LAYERS - 1], vector.vectors[: N_LAYERS - 1], rtol=0, atol=0)
    with pytest.raises(MissingLayerError):
        export_gguf(imported, tmp_path / "last.gguf", layers=[N_LAYERS - 1])


def test_foreign_file_repeng_style(tmp_path):
    """A file as repeng's export_gguf writes it: no persona_lens metadata, model_type hint."""
    path = tmp_path / "repeng.gguf"
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 2)
    dirs = {2: np.full(D, 2.0, dtype=np.float32), 3: np.full(D, 3.0, dtype=np.float32)}
    for layer, d in dirs.items():
        writer.add_tensor(f"direction.{layer}", d)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    v = load_gguf_control_vector(path)
    assert v.n_layers == 4 and v.metadata["model_hint"] == "llama"
    assert torch.equal(v.vectors[2], torch.full((D,), 2.0)) and v.vectors[:2].abs().sum() == 0
    assert load_gguf_control_vector(path, n_layers=30).n_layers == 30


def test_rejects_non_control_vectors(tmp_path):
    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(VectorFileError, match="not a control vector"):
        load_gguf_control_vector(path)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not gguf")
    with pytest.raises(VectorFileError):
        load_gguf_control_vector(bad)


def test_cli_export_import(tmp_path, vector, capsys):
    src = vector.save(tmp_path / "evil.safetensors")
    out = tmp_path / "evil.gguf"
    assert main(["export", str(src), "--format", "gguf", "--out", str(out), "--layer", "2", "--alpha", "3"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layers"] == [2] and info["alpha"] == 3.0
    reader = gguf.GGUFReader(str(out))
    assert [t.name for t in reader.tensors] == ["direction.2"]
    np.testing.assert_allclose(reader.tensors[0].data, 3 * vector.vectors[2].numpy(), rtol=1e-6)

    back = tmp_path / "back.safetensors"
    assert main(["import", str(out), "--out", str(back)]) == 0
    capsys.readouterr()
    v = PersonaVector.load(back)
    torch.testing.assert_close(v.vectors[2], 3 * vector.vectors[2])
    assert v.n_layers == N_LAYERS

    pt = tmp_path / "evil.pt"
    # no embedding / final-norm rows in this vector: the .pt export refuses to make them up
    assert main(["export", str(src), "--format", "pt", "--out", str(pt)]) == 1
    assert not pt.exists()
    assert main(["export", str(src), "--format", "pt", "--out", str(pt), "--missing-rows", "zeros"]) == 0
    zeros = torch.load(pt)
    assert not zeros[0].any() and not zeros[N_LAYERS].any()
    torch.testing.assert_close(zeros[1:N_LAYERS], vector.vectors[:N_LAYERS - 1])
    pt.unlink()
    edged = PersonaVector(vector.vectors, vector.metadata, embed_diff=torch.ones(D), final_norm_diff=-torch.ones(D))
    src = edged.save(tmp_path / "edged.safetensors")
    assert main(["export", str(src), "--format", "pt", "--out", str(pt)]) == 0
    assert torch.load(pt).shape == (N_LAYERS + 1, D)
    assert main(["import", str(pt), "--out", str(tmp_path / "pt.safetensors")]) == 0
    imported = PersonaVector.load(tmp_path / "pt.safetensors")
    torch.testing.assert_close(imported.vectors[:-1], vector.vectors[:-1])
    assert imported.missing_layers == [N_LAYERS - 1] and torch.equal(imported.final_norm_diff, -torch.ones(D))
    assert main(["export", str(src), "--format", "gguf", "--out", str(tmp_path / "z.gguf"), "--layer", "0"]) == 1


def test_llama_cpp_itself_adds_direction_l_to_block_l(tmp_path):
    """With llama.cpp's ``llama-eval-callback`` available (``$LLAMA_EVAL_CALLBACK`` or on PATH),
    run ``scripts/verify_gguf_llamacpp.py`` on the embedded SmolLM2 GGUF: layer L's vector must
    appear in llama.cpp's ``l_out-L`` and nowhere before it. Skipped without the binary."""
    import os
    import shutil
    import sys
    from pathlib import Path

    binary = os.environ.get("LLAMA_EVAL_CALLBACK") or shutil.which("llama-eval-callback")
    if not binary:
        pytest.skip("llama.cpp's llama-eval-callback is not available (set LLAMA_EVAL_CALLBACK)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import verify_gguf_llamacpp as v

    report = v.verify(binary, v.embedded_smollm2_gguf(), [1, 10, 29])
    assert len(report) == 3
