"""Model folders: model.json + weights.safetensors; lookup by path or bundled name."""

from __future__ import annotations

import json

import pytest
import torch

from delineo.errors import InputError
from delineo.models.networks import NetworkSpec, build_network
from delineo.models.registry import MODEL_JSON, WEIGHTS, available_models, load_model, resolve_model, save_model

META = {
    "name": "tiny",
    "structures": ["a", "b"],
    "preprocess": {"intensity": {"kind": "window", "low": 0, "high": 255}},
    "inference": {"patch_size": None, "threshold": 0.5},
    "postprocess": {"keep_largest": {"a": 1}},
}


@pytest.fixture
def network():
    torch.manual_seed(0)
    net = build_network(NetworkSpec(spatial_dims=2, out_channels=2, channels=[4, 8, 16], residual=True, squeeze_excitation=True))
    # instance norm has no running stats; perturb the weights away from their init for a real check
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return net.eval()


def test_save_load_round_trip(tmp_path, network):
    folder = save_model(tmp_path / "m", network, META)
    assert (folder / MODEL_JSON).is_file() and (folder / WEIGHTS).is_file()
    assert not (folder / (WEIGHTS + ".tmp")).exists()
    meta = json.loads((folder / MODEL_JSON).read_text())
    assert meta["network"] == network.spec.to_dict()
    assert "network" not in META  # the caller's dict is not modified
    bundle = load_model(folder)
    assert bundle.path == folder
    assert bundle.name == "tiny"
    assert bundle.structures == ["a", "b"]
    assert bundle.spec == network.spec
    assert bundle.preprocess == META["preprocess"]
    assert bundle.inference == META["inference"]
    assert bundle.postprocess == META["postprocess"]
    assert not bundle.network.training
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(bundle.network(x), network(x), rtol=0, atol=0)


def test_name_falls_back_to_folder(tmp_path, network):
    folder = save_model(tmp_path / "my-model", network, {"structures": ["a", "b"]})
    bundle = load_model(folder)
    assert bundle.name == "my-model"
    assert bundle.preprocess == {} and bundle.inference == {} and bundle.postprocess == {}


def test_resolve_by_path_and_bundled_name(tmp_path, network, monkeypatch):
    folder = save_model(tmp_path / "zoo" / "tiny-model", network, META)
    assert resolve_model(folder) == folder
    assert resolve_model(str(folder)) == folder
    monkeypatch.setenv("DELINEO_MODELS", str(tmp_path / "zoo"))
    monkeypatch.chdir(tmp_path)  # a relative "tiny-model" must not resolve against the cwd
    assert resolve_model("tiny-model") == tmp_path / "zoo" / "tiny-model"
    assert available_models() == ["tiny-model"]
    bundle = load_model("tiny-model")
    assert bundle.path == tmp_path / "zoo" / "tiny-model"
    (tmp_path / "zoo" / "not-a-model").mkdir()
    assert available_models() == ["tiny-model"]


def test_available_models_when_folder_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("DELINEO_MODELS", str(tmp_path / "none"))
    assert available_models() == []


def test_unknown_name(tmp_path, monkeypatch, network):
    save_model(tmp_path / "zoo" / "tiny-model", network, META)
    monkeypatch.setenv("DELINEO_MODELS", str(tmp_path / "zoo"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="no bundled model") as exc:
        load_model("no-such-model")
    assert str(exc.value.path) == "no-such-model"
    assert "tiny-model" in str(exc.value)  # lists what is bundled


def test_missing_weights(tmp_path, network):
    folder = save_model(tmp_path / "m", network, META)
    (folder / WEIGHTS).unlink()
    with pytest.raises(InputError, match="missing") as exc:
        load_model(folder)
    assert exc.value.path == folder / WEIGHTS


def test_bad_json(tmp_path, network):
    folder = save_model(tmp_path / "m", network, META)
    (folder / MODEL_JSON).write_text('{"structures": [')
    with pytest.raises(InputError, match="not valid JSON") as exc:
        load_model(folder)
    assert exc.value.path == folder / MODEL_JSON


def test_missing_required_key(tmp_path, network):
    folder = save_model(tmp_path / "m", network, META)
    meta = json.loads((folder / MODEL_JSON).read_text())
    del meta["structures"]
    (folder / MODEL_JSON).write_text(json.dumps(meta))
    with pytest.raises(InputError, match="structures") as exc:
        load_model(folder)
    assert exc.value.path == folder / MODEL_JSON


def test_weights_that_do_not_fit(tmp_path, network):
    folder = save_model(tmp_path / "m", network, META)
    meta = json.loads((folder / MODEL_JSON).read_text())
    meta["network"]["channels"] = [4, 8, 32]
    (folder / MODEL_JSON).write_text(json.dumps(meta))
    with pytest.raises(InputError, match="do not fit") as exc:
        load_model(folder)
    assert exc.value.path == folder / WEIGHTS
    (folder / WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(InputError) as exc:
        load_model(folder)
    assert exc.value.path == folder / WEIGHTS


def test_unknown_network_key_in_model_json(tmp_path, network):
    folder = save_model(tmp_path / "m", network, META)
    meta = json.loads((folder / MODEL_JSON).read_text())
    meta["network"]["depth"] = 5
    (folder / MODEL_JSON).write_text(json.dumps(meta))
    with pytest.raises(InputError) as exc:
        load_model(folder)
    assert exc.value.path == folder / MODEL_JSON
