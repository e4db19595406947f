"""Run configs: presets validate; unknown keys and bad values fail before anything starts, naming the key."""

import math
import subprocess
import sys

import pytest

from cluster.run_config import PRESET_DIR, ConfigError, dump_yaml, load_run_config
from pretrain.config import from_stored


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_preset_validates(preset):
    text = (PRESET_DIR / f"{preset}.yaml").read_text()
    cfg = load_run_config(preset, [] if "train: digits" in text else ["data.train=/data/shards"])
    assert cfg.batch_size % cfg.cluster.workers == 0


def test_default_is_the_default_preset():
    cfg = load_run_config(None)
    assert (cfg.method, cfg.loss.name, cfg.data.train, cfg.cluster.workers) == ("simclr", "ranking", "digits", 2)


def test_overrides_parse_as_yaml():
    cfg = load_run_config("spectral", ["batch_size=64", "loss.mu=0.5", "eval.baselines=[pixels, pca]", "name=x"])
    assert (cfg.batch_size, cfg.loss.mu, cfg.eval.baselines, cfg.name) == (64, 0.5, ["pixels", "pca"], "x")


@pytest.mark.parametrize("override, fragment", [
    ("loss.temprature=0.1", "loss.temprature: unknown key"),
    ("optim.name=sgd", "optim.name"),
    ("batch_size=-4", "batch_size"),
    ("batch_size=255", "divisible by cluster.workers"),
    ("loss", "expected KEY=VALUE"),
    ("batch_size.x=1", "is a value, not a section"),
    ("data.local_scale=[0.3, 0.1]", "data.local_scale: must be [low, high] with 0 < low <= high <= 1"),
    ("data.global_scale=[0, 1]", "data.global_scale: must be [low, high]"),
    ("data.local_views=-1", "data.local_views"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as exc:
        load_run_config(None, [override])
    assert fragment in str(exc.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="presets: .*cifar10-simclr"):
        load_run_config("no-such-preset")


def _cli_without_ray(args: list[str]) -> subprocess.CompletedProcess:
    """The CLI in a fresh process whose ray.init raises: prints main's exit code and whether ray was initialised."""
    code = ("import sys, ray\n"
            "def refuse(*a, **k):\n"
            "    raise SystemExit('ray.init was called')\n"
            "ray.init = refuse\n"
            "from cluster.cli import main\n"
            f"rc = main({args!r})\n"
            "print(rc, ray.is_initialized())\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_cli_fails_before_ray_starts(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: simclr\nmodel: {encoder: resnet18, widht: 3}\n")
    out = _cli_without_ray(["pretrain", str(bad)])
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr[-2000:]
    assert "model.widht: unknown key" in out.stderr and str(bad) in out.stderr
    out = _cli_without_ray(["pretrain", "data.train=digits", f"cluster.storage_path={tmp_path}",
                            "model.encoder=nosuchnet"])
    assert out.stdout.split() == ["2", "False"] and "unknown encoder 'nosuchnet'" in out.stderr, out.stderr[-2000:]
    out = _cli_without_ray(["pretrain", f"data.train={tmp_path / 'missing'}", f"cluster.storage_path={tmp_path}"])
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr[-2000:]
    assert str(tmp_path / "missing") in out.stderr


@pytest.mark.parametrize(("overrides", "fragment"), [
    (["loss.name=binary", "loss.temperature=0.1"], "loss.temperature: not used by loss.name=binary"),
    (["loss.name=ranking", "loss.num_negatives=4"], "loss.num_negatives: not used by loss.name=ranking"),
    (["loss.name=spectral", "loss.block_size=64"], "loss.block_size: not used by loss.name=spectral"),
    (["loss.name=ranking-blockwise", "loss.mu=2"], "loss.mu: not used by loss.name=ranking-blockwise"),
    (["loss.all_pairs=true"], "loss.all_pairs: not used by loss.name=ranking (a setting of binary)"),
    (["loss.name=binary", "loss.all_pairs=true", "loss.num_negatives=3"], "num_negatives is not used with all_pairs"),
    (["method=gan", "optim.lr=0.1"], "optim: not used by method=gan"),
    (["method=gan", "vae.beta=2"], "vae: not used by method=gan"),
    (["vae.beta=2"], "vae: not used by method=simclr"),
    (["method=vae", "gan.loss=wgan", "loss.name=spectral"], "loss, gan: not used by method=vae"),
    (["steps=10", "epochs=2"], "steps=10 and epochs=2.0: give one of them"),
    (["name=../escaped"], "run name '../escaped'"),
    (["name=/abs/run"], "run name '/abs/run'"),
    (["name=.."], "run name '..'"),
    (["name="], "run name ''"),
    (["model.encoder=resnet1"], "unknown encoder 'resnet1'; close matches: resnet18"),
    (["loss.name=bogus"], "loss.name: 'bogus' is not one of 'ranking', 'ranking-blockwise', 'binary', 'spectral'"),
])
def test_settings_that_do_nothing_are_errors(overrides, fragment):
    with pytest.raises(ConfigError) as exc:
        load_run_config(None, overrides)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_each_loss_and_method_gets_its_own_defaults():
    assert load_run_config(None, ["loss.name=binary"]).loss.model_dump() == \
        {"name": "binary", "num_negatives": 1, "all_pairs": False, "init_logit_scale": pytest.approx(math.log(10)),
         "init_bias": None}
    assert load_run_config(None, ["loss.name=binary", "loss.all_pairs=true"]).loss.num_negatives is None
    vae = load_run_config(None, ["method=vae"])  # the file's SimCLR loss section gives way to the new method
    assert (vae.loss, vae.gan, vae.optim.name, vae.vae.latent_dim) == (None, None, "adamw", 64)
    gan = load_run_config("gan-digits")
    assert (gan.loss, gan.optim, gan.vae, gan.gan.loss) == (None, None, None, "nonsaturating")
    assert load_run_config(None).optim.name == "lars"
    assert [load_run_config(p).variant for p in ("binary", "vae-digits", "wgan-digits")] == ["binary", "gaussian", "wgan"]


def test_an_override_of_steps_replaces_the_files_epochs():
    data = ["data.train=/data/c10"]
    assert (load_run_config("cifar10-simclr", data).epochs, load_run_config("cifar10-simclr", data).steps) == (100, None)
    cfg = load_run_config("cifar10-simclr", [*data, "steps=20"])
    assert (cfg.steps, cfg.epochs) == (20, None)
    cfg = load_run_config("default", ["epochs=2"])
    assert (cfg.steps, cfg.epochs) == (None, 2)


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_printed_config_loads_back_to_the_same_config(preset, tmp_path):
    cfg = load_run_config(preset, ["name=x", "data.train=/data/shards"])
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(dump_yaml(cfg))
    assert load_run_config(str(dumped)) == cfg


def test_a_config_stored_by_an_older_bigbatch_still_loads():
    """config.yaml / checkpoints written before per-loss and per-method sections: ignored keys are dropped."""
    old = {"method": "vae", "steps": 30, "epochs": 5.0, "loss": {"name": "ranking", "temperature": 0.2, "mu": 1.0,
           "block_size": 512, "num_negatives": 1, "all_pairs": False}, "optim": {"name": "lars", "lr": 0.01},
           "vae": {"latent_dim": 8, "optimizer": "adamw"}, "gan": {"loss": "wgan"}}
    cfg = from_stored(old)
    assert (cfg.steps, cfg.epochs, cfg.loss, cfg.gan, cfg.optim.name, cfg.optim.lr, cfg.vae.latent_dim) == \
        (30, None, None, None, "adamw", 0.01, 8)
    simclr = from_stored({"loss": {"name": "binary", "temperature": 0.5, "num_negatives": 4, "all_pairs": True,
                                   "mu": 1.0, "block_size": 512}, "vae": {"latent_dim": 64}})
    assert simclr.loss.model_dump() == {"name": "binary", "num_negatives": None, "all_pairs": True,
                                        "init_logit_scale": pytest.approx(math.log(10)), "init_bias": None}


def test_binary_loss_initial_scale_and_bias_reach_the_module():
    from pretrain.losses import build_loss

    loss = build_loss(load_run_config("binary", ["loss.num_negatives=8", "loss.init_bias=-1.5",
                                                 "loss.init_logit_scale=1.0"]).loss)
    assert (loss.bias.item(), loss.logit_scale.item()) == (-1.5, 1.0)
    default = build_loss(load_run_config("binary", ["loss.num_negatives=8"]).loss)
    assert default.bias.item() == pytest.approx(-math.log(8)) and default.logit_scale.item() == pytest.approx(math.log(10))


def test_multi_crop_keys():
    cfg = load_run_config(None, ["data.local_views=4", "data.local_size=16", "data.local_scale=[0.05, 0.14]",
                                 "data.global_scale=[0.14, 1]"])
    assert (cfg.data.local_views, cfg.data.local_size, cfg.data.local_scale, cfg.data.global_scale) == \
        (4, 16, (0.05, 0.14), (0.14, 1.0))
    assert load_run_config(None).data.local_views == 0                       # default: two views, as before
    with pytest.raises(ConfigError, match="multi-crop views are for method=simclr"):
        load_run_config("vae-digits", ["data.local_views=2"])


def test_view_size_sets_the_training_views_and_leaves_the_probe_size():
    from data_pipeline.stream import make_loader
    from pretrain.trainer import stream_spec

    cfg = load_run_config(None, ["data.image_size=32", "data.view_size=24", "batch_size=8", "data.loader_workers=0"])
    spec = stream_spec(cfg, world_size=1, num_views=2)
    assert (spec.image_size, cfg.data.image_size) == (24, 32)  # trained on 24-px views, probed and exported at 32
    batch = next(iter(make_loader(spec)))
    assert batch["views"].shape == (16, 3, 24, 24)
    with pytest.raises(ConfigError, match="data.view_size=24: a training view size apart from data.image_size"):
        load_run_config("vae-digits", ["data.view_size=24"])


def test_color_strength_reaches_every_view_recipe():
    import numpy as np

    from data_pipeline.views import draw_params
    from pretrain.trainer import stream_spec

    cfg = load_run_config(None, ["data.color_strength=0.5", "data.local_views=2"])
    spec = stream_spec(cfg, world_size=1, num_views=2)
    assert spec.recipe.strength == spec.local_recipe.strength == 0.5
    p = draw_params(np.arange(2000, dtype=np.uint64), np.array([[32, 32]] * 2000), spec.recipe, 2)
    assert p.factors[:, :3].min() >= 0.6 and p.factors[:, :3].max() <= 1.4 and np.abs(p.factors[:, 3]).max() <= 0.1
    assert p.factors[:, :3].min() < 0.62 and p.factors[:, :3].max() > 1.38  # the whole range is drawn
    assert load_run_config(None).data.color_strength == 1.0
    with pytest.raises(ConfigError, match="color_strength"):
        load_run_config(None, ["data.color_strength=2"])
