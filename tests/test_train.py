"""Autoencoder training: model and loss registries, the checkpoint format (local and S3), and
Ray Train runs on tiny generated digits (loss goes down, resume, early stop, user classes)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from icas_ray.errors import ConfigError, ModelLoadError

# Small enough for a 2-core machine: 32 px inputs, a few channels.
TINY = {"channels": "4,8", "embed_dim": "8"}


class TinyUserAE(nn.Module):
    """A user's model (given as test_train:TinyUserAE): forward and embed, nothing else."""

    def __init__(self, image_size: int, width: int = 4) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU())
        self.dec = nn.Sequential(nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1),
                                 nn.Sigmoid())

    def forward(self, x: Any) -> Any:
        return self.dec(self.enc(x))

    def embed(self, x: Any) -> Any:
        return self.enc(x).mean(dim=(2, 3))


class Worsening(nn.Module):
    """Its output drifts further below 0 with every call, so every epoch's MSE is higher than
    the one before: the best epoch is the first, whatever the optimizer does."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: Any) -> Any:
        self.calls += 1
        return torch.zeros_like(x) - 0.01 * self.calls + 0 * self.w

    def embed(self, x: Any) -> Any:
        return x.mean(dim=(2, 3))


class NoEmbed(nn.Module):
    def forward(self, x: Any) -> Any:
        return x


def tiny_features() -> Any:
    """A tiny feature network for the perceptual loss (given as test_train:tiny_features)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))


def _path(name: str) -> str:
    return f"{__name__}:{name}"


def _worker_path(name: str) -> str:
    """The import path of a class of this file as Ray workers see it: Ray puts the driver's
    working directory on their sys.path, so from the repository root ``tests`` is a
    namespace package there."""
    if not os.path.isfile(os.path.join(os.getcwd(), "tests", "test_train.py")):
        pytest.skip("run from the repository root: Ray workers import tests.test_train")
    return f"tests.test_train:{name}"


def _one_line(text: str) -> None:
    assert "\n" not in text.strip(), text


# -- models --------------------------------------------------------------------------------
def test_model_registry_names_and_errors():
    from icas_ray.train.models import (
        REGISTRY,
        SmallParams,
        build_model,
        check_image_size,
        model_names,
        register,
    )

    assert model_names() == sorted(REGISTRY) == ["conv_large", "conv_small"]
    with pytest.raises(ValueError, match="already registered"):
        register("conv_small", params=SmallParams, sizes="", accepts=bool, default_size=1)(
            lambda s, p: nn.Identity())
    with pytest.raises(ConfigError, match=r"unknown model 'vgg': must be one of conv_large, "
                                          r"conv_small, or a class given as package.module:Class"):
        build_model("vgg", 64)
    with pytest.raises(ConfigError, match="--image-size 100 does not fit model conv_small: "
                                          "expected 32, 64 or 128 px"):
        check_image_size("conv_small", 100)
    with pytest.raises(ConfigError, match="--image-size 128 does not fit model conv_large"):
        build_model("conv_large", 128)
    with pytest.raises(ConfigError, match="unknown parameter.*depth.*valid parameters are "
                                          "channels, embed_dim"):
        build_model("conv_small", 32, depth=3)
    with pytest.raises(ConfigError, match="embed_dim='many' is not an integer"):
        build_model("conv_small", 32, embed_dim="many")


@pytest.mark.parametrize("name, size, params, dim", [
    ("conv_small", 32, TINY, 8),
    ("conv_small", 128, {"channels": "2,2,2", "embed_dim": "5"}, 5),
    ("conv_large", 256, {"base_channels": "2", "max_channels": "4", "embed_dim": "6"}, 6),
], ids=["small32", "small128", "large256"])
def test_models_reconstruct_in_range_and_embed(name, size, params, dim):
    from icas_ray.train.models import build_model, model_spec

    model = build_model(name, size, **params)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        out, emb = model(x), model.embed(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert emb.shape == (2, dim) and emb.dtype == torch.float32
    assert model_spec(model)["image_size"] == size


def test_conv_large_stops_at_its_bottleneck():
    from icas_ray.train.models import build_model

    model = build_model("conv_large", 512, base_channels=2, max_channels=4, bottleneck=16)
    convs = [m for m in model.encoder if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(convs) == 5  # 512 / 2**5 = 16
    assert [c.out_channels for c in convs] == [2, 4, 4, 4, 4]


def test_user_model_class_by_import_path():
    from icas_ray.train.models import build_model, model_spec

    model = build_model(_path("TinyUserAE"), 32, width="3")
    assert model.embed(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    assert model_spec(model) == {"model": _path("TinyUserAE"), "params": {"width": 3},
                                 "image_size": 32}
    with pytest.raises(ConfigError, match="unknown parameter.*depth.*valid parameters are width"):
        build_model(_path("TinyUserAE"), 32, depth=2)
    with pytest.raises(ConfigError, match="has no embed"):
        build_model(_path("NoEmbed"), 32)
    with pytest.raises(ConfigError, match="is not a torch.nn.Module subclass"):
        build_model(_path("tiny_features"), 32)
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        build_model("no_such_module:Model", 32)


# -- losses --------------------------------------------------------------------------------
def test_pixel_losses():
    from icas_ray.train.losses import build_loss, loss_names

    assert loss_names() == ["mae", "mse", "perceptual"]
    a, b = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    assert float(build_loss("mse")(a, b)) == pytest.approx(0.25)
    assert float(build_loss("mae")(a, b)) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="unknown loss 'ssim': must be one of mae, mse, "
                                          "perceptual"):
        build_loss("ssim")


def test_perceptual_loss_is_the_mean_absolute_feature_difference_through_a_frozen_net():
    from icas_ray.train.losses import build_loss

    loss = build_loss("perceptual", {"network": _path("tiny_features")})
    net = tiny_features()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    y = torch.rand(2, 3, 16, 16)
    value = loss(x, y)
    with torch.no_grad():
        diff = net(x) - net(y)
    assert value.item() == pytest.approx(float(diff.abs().mean()), rel=1e-5)
    # The original's plain mean can be negative; ours never is.
    y2 = torch.full((2, 3, 16, 16), 1.0)
    with torch.no_grad():
        plain = float((net(x) - net(y2)).mean())
    with torch.no_grad():
        assert float(loss(x, y2)) >= abs(plain) and float(loss(x, y2)) > 0
    value.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    loss.train()
    assert not loss.network.training
    assert all(not p.requires_grad for p in loss.network.parameters())


def test_perceptual_vgg19_needs_weights_and_reads_them_from_a_file(tmp_path):
    from icas_ray.train._perceptual import _vgg19_features
    from icas_ray.train.losses import build_loss

    with pytest.raises(ConfigError) as e:
        build_loss("perceptual")
    _one_line(str(e.value))
    assert "--perceptual-weights" in str(e.value) and "--perceptual-random-init" in str(e.value)
    assert "nothing is downloaded" in str(e.value)
    with pytest.raises(ConfigError, match="exclude each other"):
        build_loss("perceptual", {"weights": "w.pth", "random_init": True})
    # A whole-vgg19 style file (keys "features.N..."), cut to the first 2 modules.
    torch.manual_seed(1)
    ref = _vgg19_features(2)
    weights = str(tmp_path / "vgg19.pth")
    torch.save({f"features.{k}": v for k, v in ref.state_dict().items()}, weights)
    loss = build_loss("perceptual", {"weights": weights, "layers": 2})
    got = loss.network[1]
    assert torch.equal(got[0].weight, ref[0].weight)
    assert float(loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))) > 0
    with pytest.raises(ModelLoadError, match="do not fit the network: missing 2.weight"):
        build_loss("perceptual", {"weights": weights, "layers": 3})
    (tmp_path / "junk.pth").write_bytes(b"not torch")
    with pytest.raises(ModelLoadError, match="corrupt or not a torch state_dict"):
        build_loss("perceptual", {"weights": str(tmp_path / "junk.pth")})
    assert build_loss("perceptual", {"random_init": "true", "layers": "2"}) is not None


# -- checkpoints ---------------------------------------------------------------------------
def _tiny_model() -> Any:
    from icas_ray.train.models import build_model

    torch.manual_seed(0)
    return build_model("conv_small", 32, **TINY)


def test_checkpoint_round_trip_and_errors(tmp_path):
    from icas_ray.train.checkpoint import load_model, save_checkpoint

    model = _tiny_model()
    uri = str(tmp_path / "ck" / "best.pt")
    save_checkpoint(uri, model, epoch=3, loss=0.25, extra={"losses": [0.5, 0.3, 0.25]})
    loaded, meta = load_model(uri)
    assert not loaded.training
    assert meta["image_size"] == 32 and meta["epoch"] == 3 and meta["loss"] == 0.25
    assert meta["model"] == "conv_small" and meta["extra"]["losses"] == [0.5, 0.3, 0.25]
    x = torch.rand(3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x)) and torch.equal(model.embed(x), loaded.embed(x))
    for bad, match in [(str(tmp_path / "missing.pt"), "does not exist"),
                       (str(tmp_path / "junk.pt"), "corrupt or not an icas-ray checkpoint"),
                       (str(tmp_path / "other.pt"), "not an icas-ray autoencoder checkpoint")]:
        if bad.endswith("junk.pt"):
            with open(bad, "wb") as f:
                f.write(b"\x00garbage")
        if bad.endswith("other.pt"):
            torch.save({"weights": torch.zeros(1)}, bad)
        with pytest.raises(ModelLoadError, match=match) as e:
            load_model(bad)
        _one_line(str(e.value))


def test_checkpoint_on_s3(s3_server, s3_bucket):
    from icas_ray.train.checkpoint import load_model, save_checkpoint

    storage = s3_server.storage()
    model = _tiny_model().eval()
    uri = f"s3://{s3_bucket}/models/best.pt"
    save_checkpoint(uri, model, epoch=1, loss=0.1, storage=storage)
    loaded, _ = load_model(uri, storage=storage, device="cpu")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.embed(x), loaded.embed(x))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(f"s3://{s3_bucket}/models/none.pt", storage=storage)


# -- configuration and the CLI (no Ray) ----------------------------------------------------
def test_train_config_validation():
    from icas_ray.train.trainer import TrainConfig

    assert TrainConfig().size == 64 and TrainConfig(model="conv_large").size == 256
    assert TrainConfig(epochs="3", gpu="false").epochs == 3
    for kwargs, match in [
        ({"epochs": 0}, "epochs 0 is invalid"),
        ({"lr": 0}, "lr 0.0 is invalid"),
        ({"gamma": 2}, "gamma 2.0 is out of range"),
        ({"image_size": 48}, "--image-size 48 does not fit model conv_small"),
        ({"perceptual_random_init": True}, "are for --loss perceptual, not --loss mse"),
        ({"loss": "perceptual"}, "--loss perceptual needs VGG19 weights"),
        ({"model": _path("TinyUserAE")}, "needs --image-size"),
        ({"loss_params": {"layers": 2}}, "unknown parameter.*layers.*for loss mse"),
    ]:
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**kwargs)


def _main(argv: list[str], capsys: Any) -> tuple[int, str, str]:
    from icas_ray.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_errors_are_one_line_before_ray_starts(tmp_path, capsys, monkeypatch):
    import icas_ray.runtime

    def no_ray(*a: Any, **k: Any) -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(icas_ray.runtime, "init_ray", no_ray)
    folder = tmp_path / "in"
    folder.mkdir()
    store = str(tmp_path / "store")
    for argv, match in [
        (["--loss", "perceptual"], ("Error: --loss perceptual needs VGG19 weights: pass "
                                    "--perceptual-weights FILE_OR_URI")),
        (["--loss", "perceptual", "--perceptual-weights", str(tmp_path / "nope.pth")],
         "Error: --perceptual-weights .*nope.pth' does not exist"),
        (["--image-size", "100"], "Error: --image-size 100 does not fit model conv_small"),
        (["--model", "nosuch"], "Error: unknown model 'nosuch'"),
        (["--param", "embed_dim=x"], ("Error: model conv_small parameter embed_dim='x' is "
                                      "not an integer")),
        ([], "Error: no images under"),
    ]:
        code, out, err = _main(["train", str(folder), "--storage", store, *argv], capsys)
        assert code == 1, (argv, out, err)
        _one_line(err)
        import re

        assert re.match(match, err.strip()), (argv, err)
    assert not os.path.exists(store)


# -- Ray Train runs ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits64(tmp_path_factory: pytest.TempPathFactory) -> str:
    """64 generated digits plus one broken file."""
    from icas_ray.datasets import make_dataset

    out = str(tmp_path_factory.mktemp("digits64"))
    make_dataset("digits", out, count=64, seed=3)
    with open(os.path.join(out, "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really")
    return out


def _config(storage_uri: str, **kw: Any) -> Any:
    from icas_ray.train.trainer import TrainConfig

    base: dict[str, Any] = {"model": "conv_small", "model_params": dict(TINY), "image_size": 32,
                            "epochs": 2, "lr": 0.01, "batch_size": 8, "storage_uri": storage_uri}
    return TrainConfig(**{**base, **kw})


class _Progress:
    def __init__(self) -> None:
        self.notes: list[tuple[int, str]] = []

    def start(self, phase: str, total: int | None = None) -> None:
        pass

    def advance(self, phase: str, done: int, total: int | None = None, note: str = "") -> None:
        self.notes.append((done, note))

    def finish(self, phase: str, message: str) -> None:
        pass


@pytest.mark.usefixtures("ray_session")
def test_two_epochs_lower_the_loss_then_a_rerun_resumes(digits64, tmp_path, capsys):
    from icas_ray.train.checkpoint import load_model, read_checkpoint
    from icas_ray.train.trainer import train

    store = str(tmp_path / "store")
    progress = _Progress()
    r = train(digits64, _config(store), progress=progress)
    assert (r.epochs, r.start_epoch, r.resumed, r.stopped_early) == (2, 1, False, False)
    assert r.images == 64 and r.unreadable == 1
    assert len(r.losses) == 2 and r.losses[1] < r.losses[0]
    assert r.checkpoint == os.path.join(store, "best.pt") and r.best_epoch == 2
    assert [d for d, _ in progress.notes] == [1, 2]
    assert all("images/s" in n and "loss" in n for _, n in progress.notes)
    best, meta = load_model(r.checkpoint)
    last, _ = load_model(r.last_checkpoint)
    assert meta["image_size"] == 32 and meta["epoch"] == 2
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(best(x), last(x)) and best.embed(x).shape == (4, 8)

    # The CLI with the same storage continues at epoch 3 and prints the checkpoint.
    argv = ["train", digits64, "--storage", store, "--epochs", "3", "--image-size", "32",
            "--lr", "0.01", "--batch-size", "8", "--param", "channels=4,8",
            "--param", "embed_dim=8"]
    code, out, err = _main(argv, capsys)
    assert code == 0, err
    assert "epoch 3 of 3 (resumed)" in out and f"checkpoint: {store}/best.pt" in out
    state = read_checkpoint(os.path.join(store, "last.pt"))
    assert state["epoch"] == 3 and state["extra"]["losses"][:2] == list(r.losses)
    assert len(state["extra"]["losses"]) == 3
    # Complete: a third run trains nothing; another model in this storage is refused.
    code, out, _ = _main(argv, capsys)
    assert code == 0 and "nothing left to train (3 epochs done)" in out
    code, _, err = _main([*argv, "--param", "embed_dim=4"], capsys)
    assert code == 1 and "holds a run of model conv_small" in err


@pytest.mark.usefixtures("ray_session")
def test_relative_storage_and_input_are_the_callers(digits64, tmp_path, monkeypatch):
    """``icas train ./images --storage ./model`` (the README's example): the checkpoints land
    under the caller's working directory, not the Ray worker's."""
    from icas_ray.train.trainer import train

    shutil.copytree(digits64, tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    r = train("./images", _config("./model", epochs=1))
    assert (tmp_path / "model" / "best.pt").is_file() and (tmp_path / "model" / "last.pt").is_file()
    assert r.checkpoint == str(tmp_path / "model" / "best.pt")


@pytest.mark.usefixtures("ray_session")
def test_s3_input_and_storage_user_model_and_perceptual_loss(digits64, s3_server, s3_bucket):
    from icas_ray.train.checkpoint import load_model
    from icas_ray.train.trainer import train

    storage = s3_server.storage()
    names = sorted(n for n in os.listdir(digits64) if n.endswith(".png"))[:16]
    for n in names:
        with open(os.path.join(digits64, n), "rb") as f:
            storage.write_bytes(f"s3://{s3_bucket}/in/{n}", f.read())
    store = f"s3://{s3_bucket}/models/ae"
    config = _config(store, model=_worker_path("TinyUserAE"), model_params={"width": "3"},
                     loss="perceptual", loss_params={"network": _worker_path("tiny_features")},
                     epochs=1)
    r = train(f"s3://{s3_bucket}/in", config, storage=storage)
    assert r.checkpoint == f"{store}/best.pt" and r.epochs == 1 and r.images == len(names)
    assert r.losses[0] > 0
    model, meta = load_model(r.checkpoint, storage=storage)
    assert meta["model"] == _worker_path("TinyUserAE") and meta["params"] == {"width": 3}
    last, _ = load_model(r.last_checkpoint, storage=storage)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert model.embed(x).shape == (2, 3) and torch.equal(model.embed(x), last.embed(x))


@pytest.mark.usefixtures("ray_session")
def test_early_stop_after_patience_epochs_without_a_lower_loss(digits64, tmp_path):
    from icas_ray.train.trainer import train

    config = _config(str(tmp_path / "store"), model=_worker_path("Worsening"), model_params={},
                     epochs=10, patience=2)
    r = train(digits64, config)
    assert r.stopped_early and r.epochs == 3 and r.best_epoch == 1
    assert list(r.losses) == sorted(r.losses) and len(set(r.losses)) == 3
    assert np.isclose(r.best_loss, r.losses[0])
