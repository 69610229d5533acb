"""Pretrained weights by name ("pretrained", open_clip tags, hf-hub ids) through a Hugging Face cache the tests
build by hand in tmp_path, with HF_HUB_OFFLINE=1 and every socket connection refused: nothing touches the network.
The tests of an unreachable hub unset HF_HUB_OFFLINE and allow connections to one local port only.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from parlab.errors import ConfigError, ParlabError
from parlab.files import file_sha256
from parlab.methods.promptpar.config import PromptPARConfig
from parlab.methods.promptpar.training import base_weights_record, check_base_weights
from parlab.models import (
    BackboneError,
    backbone_weights_record,
    build_model,
    clip_weights_record,
    create_backbone,
    create_clip,
)
from parlab.models.clip import CONFIG_DIR
from parlab.training.checkpoint import CheckpointError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REAL_CONNECT = socket.socket.connect  # before the hub fixture refuses every connection
REAL_CREATE_CONNECTION = socket.create_connection
TAG_REPO = "timm/test_resnet.r160_in1k"  # timm's hf_hub_id for test_resnet's pretrained tag r160_in1k


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache under tmp_path, offline; ``hub(repo_id, {filename: bytes})`` adds an entry."""
    import huggingface_hub.constants as constants
    import torch.hub

    home = tmp_path / "hf"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for var, value in (("HF_HOME", home), ("HF_HUB_CACHE", cache), ("HUGGINGFACE_HUB_CACHE", cache)):
        monkeypatch.setenv(var, str(value))
        monkeypatch.setattr(constants, var, str(value))  # huggingface_hub read the variables when imported
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch"))

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)

    def put(repo_id: str, files: dict[str, bytes]) -> Path:
        """huggingface_hub's layout: blobs/<hash>, refs/main -> commit, snapshots/<commit>/<file> -> blob."""
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        snapshot = repo / "snapshots" / COMMIT
        snapshot.mkdir(parents=True, exist_ok=True)
        (repo / "blobs").mkdir(exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(COMMIT)
        for name, data in files.items():
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = snapshot / name
            link.unlink(missing_ok=True)
            try:
                link.symlink_to(Path("..") / ".." / "blobs" / blob.name)
            except OSError:  # no symlinks here: huggingface_hub then stores plain copies too
                link.write_bytes(data)
        return snapshot

    put.cache = cache
    return put


def _timm_repo(tmp_path: Path, seed: int) -> dict[str, bytes]:
    """config.json + model.safetensors of a random 1000-class test_resnet, written by timm's own exporter."""
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=1000)
    out = tmp_path / f"export{seed}"
    timm.models.save_for_hf(model, out, safe_serialization=True)
    return {name: (out / name).read_bytes() for name in ("config.json", "model.safetensors")}


def _tensors(data: bytes) -> dict[str, torch.Tensor]:
    return safetensors.torch.load(data)


def test_hf_hub_id_loads_exactly_the_cached_tensors_and_records_their_file(hub, tmp_path):
    files = _timm_repo(tmp_path, seed=1)
    snapshot = hub("parlab-test/tiny-resnet", files)
    saved = _tensors(files["model.safetensors"])
    model = build_model("test_resnet", 3, weights="hf-hub:parlab-test/tiny-resnet")
    state = model.backbone.state_dict()
    assert torch.equal(state["conv1.0.weight"], saved["conv1.0.weight"])
    assert all(torch.equal(state[k], saved[k]) for k in state)  # every backbone tensor, not just the first
    assert not any(k.startswith("fc.") for k in state)  # the classifier went (num_classes=0)
    assert model(torch.randn(2, 3, 64, 32)).shape == (2, 3)

    record = backbone_weights_record("test_resnet", "hf-hub:parlab-test/tiny-resnet")
    cached = snapshot / "model.safetensors"
    assert record == {"id": "hf-hub:parlab-test/tiny-resnet", "path": str(cached),
                      "sha256": hashlib.sha256(files["model.safetensors"]).hexdigest()}


def test_hf_hub_vit_gets_the_runs_image_size_with_resized_position_embeddings(hub, tmp_path):
    torch.manual_seed(7)
    vit = timm.create_model("test_vit", num_classes=1000)  # 160x160 input, 8x8 patches
    timm.models.save_for_hf(vit, tmp_path / "vit", safe_serialization=True)
    hub("parlab-test/tiny-vit", {name: (tmp_path / "vit" / name).read_bytes()
                                 for name in ("config.json", "model.safetensors")})
    net = create_backbone("test_vit", weights="hf-hub:parlab-test/tiny-vit", image_size=(64, 32))
    assert net.pos_embed.shape[1] != vit.pos_embed.shape[1]  # a 4x2 grid (+ class token), not the saved one
    assert torch.equal(net.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
    assert net(torch.randn(1, 3, 64, 32)).shape == (1, net.num_features)


def test_pretrained_tag_loads_timms_hub_file_from_the_cache(hub, tmp_path):
    files = _timm_repo(tmp_path, seed=2)
    # timm reads only the weights for a tag, model.safetensors before pytorch_model.bin: the record must name the
    # file it read, not the other one (here with other tensors).
    other = tmp_path / "other.bin"
    torch.save(_tensors(_timm_repo(tmp_path, seed=8)["model.safetensors"]), other)
    hub(TAG_REPO, {"model.safetensors": files["model.safetensors"], "pytorch_model.bin": other.read_bytes()})
    saved = _tensors(files["model.safetensors"])
    tagged = create_backbone("test_resnet.r160_in1k", weights="pretrained")
    default = create_backbone("test_resnet", weights="pretrained")  # no tag: timm's default tag
    for net in (tagged, default):
        assert torch.equal(net.state_dict()["layer1.0.conv1.weight"], saved["layer1.0.conv1.weight"])
    scratch = create_backbone("test_resnet")  # the default stays random weights: nothing is looked up
    assert not torch.equal(scratch.state_dict()["layer1.0.conv1.weight"], saved["layer1.0.conv1.weight"])

    record = backbone_weights_record("test_resnet.r160_in1k", "pretrained")
    assert record["id"] == "pretrained"
    assert record["source"] == f"hf-hub:{TAG_REPO}"
    assert record["sha256"] == hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert Path(record["path"]).is_relative_to(hub.cache)
    assert backbone_weights_record("test_resnet", "") is None


def test_weights_neither_cached_nor_reachable_are_one_line_with_the_download_hint(hub):
    for backbone, weights, repo in (("test_resnet", "hf-hub:parlab-test/absent", "parlab-test/absent"),
                                    ("test_resnet.r160_in1k", "pretrained", TAG_REPO)):
        for call in (create_backbone, backbone_weights_record):
            with pytest.raises(BackboneError) as err:
                call(backbone, weights)
            message = str(err.value)
            assert "\n" not in message
            assert weights in message and repo in message
            assert f"huggingface-cli download {repo}" in message and f"hf download {repo}" in message
            assert str(hub.cache) in message and "HF_HOME" in message
            assert isinstance(err.value, ParlabError)


def test_hub_weights_of_another_architecture_or_an_unknown_tag_are_refused(hub, tmp_path):
    hub("parlab-test/tiny-resnet", _timm_repo(tmp_path, seed=3))
    with pytest.raises(BackboneError, match="'test_resnet', not of backbone 'test_convnext'"):
        create_backbone("test_convnext", weights="hf-hub:parlab-test/tiny-resnet")
    with pytest.raises(BackboneError, match=r"test_resnet\.bogus.*r160_in1k"):
        create_backbone("test_resnet.bogus", weights="pretrained")
    with pytest.raises(BackboneError, match="hf-hub:ORG/NAME"):
        create_backbone("test_resnet", weights="hf-hub:no-slash")


# --- CLIP (PromptPAR's base) ---------------------------------------------------------------------------------------

def _tiny_clip_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random")
        clip = create_clip("parlab-clip-tiny", None)
    return {k: v.detach().clone().contiguous() for k, v in clip.state_dict().items()}


def _clip_config(**changes) -> bytes:
    model_cfg = json.loads((CONFIG_DIR / "parlab-clip-tiny.json").read_text()) | changes
    return json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}).encode()


def test_clip_hf_hub_id_loads_the_cached_open_clip_files(hub):
    state = _tiny_clip_state(seed=4)
    weights = safetensors.torch.save(state)
    snapshot = hub("parlab-test/clip-tiny", {"open_clip_config.json": _clip_config(),
                                             "open_clip_model.safetensors": weights})
    clip = create_clip("parlab-clip-tiny", "hf-hub:parlab-test/clip-tiny")
    loaded = clip.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    record = clip_weights_record("parlab-clip-tiny", "hf-hub:parlab-test/clip-tiny")
    assert record == {"id": "hf-hub:parlab-test/clip-tiny", "path": str(snapshot / "open_clip_model.safetensors"),
                      "sha256": hashlib.sha256(weights).hexdigest()}

    hub("parlab-test/clip-wide", {"open_clip_config.json": _clip_config(embed_dim=256),
                                  "open_clip_model.safetensors": weights})
    with pytest.raises(ConfigError, match="embed_dim: 256 there, 128 in parlab-clip-tiny"):
        create_clip("parlab-clip-tiny", "hf-hub:parlab-test/clip-wide")


def test_clip_tag_resolves_to_the_cached_file_and_promptpar_records_it(hub, tmp_path, monkeypatch):
    from open_clip import pretrained

    # parlab-clip-tiny has no open_clip tag: register one as open_clip lists its own ("openai" of ViT-L-14-quickgelu).
    monkeypatch.setitem(pretrained._PRETRAINED, "parlab-clip-tiny",
                        {"synth": {"hf_hub": "parlab-test/clip-tiny-tag/", "quick_gelu": True},
                         "gelu": {"hf_hub": "parlab-test/clip-tiny-tag/", "quick_gelu": False}})
    state = _tiny_clip_state(seed=5)
    buffer = tmp_path / "clip.bin"
    torch.save(state, buffer)
    snapshot = hub("parlab-test/clip-tiny-tag", {"open_clip_pytorch_model.bin": buffer.read_bytes()})
    cached = snapshot / "open_clip_pytorch_model.bin"

    clip = create_clip("parlab-clip-tiny", "synth")
    assert torch.equal(clip.state_dict()["visual.conv1.weight"], state["visual.conv1.weight"])
    with pytest.raises(ConfigError, match="without QuickGELU"):
        create_clip("parlab-clip-tiny", "gelu")

    config = PromptPARConfig(clip_model="parlab-clip-tiny", weights="synth")
    base = base_weights_record(config)
    assert base == {"id": "synth", "path": str(cached), "sha256": file_sha256(cached),
                    "source": "hf-hub:parlab-test/clip-tiny-tag"}
    # A checkpoint trained on "synth" loads while the same cached file is there, and is refused once it changed.
    checkpoint = {"base_weights": dict(base)}
    check_base_weights(checkpoint, base_weights_record(config), "best.pt")
    torch.save(_tiny_clip_state(seed=6), buffer)
    hub("parlab-test/clip-tiny-tag", {"open_clip_pytorch_model.bin": buffer.read_bytes()})
    with pytest.raises(CheckpointError, match="base CLIP weights"):
        check_base_weights(checkpoint, base_weights_record(config), "best.pt")


def test_clip_weights_not_cached_are_one_line_with_the_download_hint(hub):
    with pytest.raises(FileNotFoundError) as err:
        create_clip("parlab-clip-tiny", "hf-hub:parlab-test/absent-clip")
    message = str(err.value)
    assert isinstance(err.value, ParlabError) and "\n" not in message
    assert "huggingface-cli download parlab-test/absent-clip" in message and "HF_HUB_OFFLINE" in message
    with pytest.raises(FileNotFoundError, match=r"timm/vit_large_patch14_clip_224\.openai.*hf download") as err:
        base_weights_record(PromptPARConfig(clip_model="ViT-L-14-quickgelu", weights="openai"))
    assert "\n" not in str(err.value)


def test_the_papers_fusion_block_comes_through_timm_and_offline_is_one_line(hub):
    from parlab.methods.promptpar.model import FUSION_VIT, _vit_b16_fusion

    assert FUSION_VIT == "vit_base_patch16_224.orig_in21k_ft_in1k"  # the reference's jx_vit_base_p16_224
    with pytest.raises(BackboneError) as err:
        _vit_b16_fusion("pretrained")
    message = str(err.value)
    assert "\n" not in message and f"huggingface-cli download timm/{FUSION_VIT}" in message


# --- an unreachable hub ---------------------------------------------------------------------------------------------

@pytest.fixture(params=["refused", "silent"])
def unreachable(request, hub, monkeypatch):
    """The hub fixture's cache, online, with the endpoint a local port that refuses connections ("refused") or
    accepts them and never answers ("silent"); a connection anywhere else still fails the test."""
    import huggingface_hub.constants as constants

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if request.param == "silent":
        listener.listen(16)  # the kernel completes the connections; nobody reads them
    else:
        listener.close()

    def local_only(sock, address):
        if tuple(address[:2]) != ("127.0.0.1", port):
            raise AssertionError(f"a test tried to connect to {address}")
        return REAL_CONNECT(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    monkeypatch.setattr(socket, "create_connection", REAL_CREATE_CONNECTION)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    yield hub
    listener.close()


@pytest.mark.timeout(120)  # huggingface_hub's own retries would take minutes against the silent port
def test_an_unreachable_hub_is_one_line_within_seconds_not_after_retries(unreachable):
    import huggingface_hub.constants as constants

    for call, repo in ((lambda: create_backbone("test_resnet.r160_in1k", weights="pretrained"), TAG_REPO),
                       (lambda: create_backbone("test_resnet", weights="hf-hub:parlab-test/absent"),
                        "parlab-test/absent"),
                       (lambda: create_clip("parlab-clip-tiny", "hf-hub:parlab-test/absent-clip"),
                        "parlab-test/absent-clip")):
        start = time.perf_counter()
        with pytest.raises(ParlabError) as err:
            call()
        assert time.perf_counter() - start < 10
        message = str(err.value)
        assert "\n" not in message and f"{constants.ENDPOINT} did not answer within 3 s" in message
        assert f"hf download {repo}" in message
        assert constants.HF_HUB_OFFLINE is False  # cache-only for that call alone


def test_an_unreachable_hub_still_loads_a_cached_weight(unreachable, tmp_path):
    files = _timm_repo(tmp_path, seed=2)
    unreachable(TAG_REPO, {"model.safetensors": files["model.safetensors"]})
    net = create_backbone("test_resnet.r160_in1k", weights="pretrained")
    saved = _tensors(files["model.safetensors"])
    assert all(torch.equal(net.state_dict()[k], saved[k]) for k in net.state_dict())
