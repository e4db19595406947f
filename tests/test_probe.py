"""The evaluation stage: probe, kNN, PPCA closed form, and the probe/report/compare path on real digits shards."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from data_pipeline.split import stratified_split
from eval.baselines import PCA, PPCA
from eval.knn import knn_top1
from eval.probe import linear_probe


def _blobs(n=300, d=20, classes=5, sep=4.0, seed=0):
    """Train and test sets of the same Gaussian blobs (centres fixed by ``classes``; samples by ``seed``)."""
    centres = np.random.default_rng(classes).normal(size=(classes, d)) * sep
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_probe_separates_separable_data_and_is_deterministic():
    x, y = _blobs()
    xt, yt = _blobs(seed=1)
    a = linear_probe(x, y, xt, yt, seed=3)
    b = linear_probe(x, y, xt, yt, seed=3)
    assert a.top1 > 0.97 and a.top5 >= a.top1
    assert a == b


def test_probe_is_at_chance_on_shuffled_labels():
    x, y = _blobs(n=600, classes=10)
    xt, yt = _blobs(n=600, classes=10, seed=1)
    rng = np.random.default_rng(0)
    res = linear_probe(x, rng.permutation(y), xt, yt)
    assert res.top1 < 0.2  # chance is 0.1


def test_stratified_split_keeps_class_proportions():
    y = np.repeat(np.arange(4), [10, 20, 30, 40])
    tr, va = stratified_split(y, 0.2, 0)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 100
    assert [int((y[va] == c).sum()) for c in range(4)] == [2, 4, 6, 8]


def test_knn_against_hand_computed_example():
    train = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
    y_train = np.array([0, 0, 1, 2])
    test = np.array([[1, 0.05], [0.1, 1], [-1, 0.1]], dtype=np.float32)
    assert knn_top1(train, y_train, test, np.array([0, 1, 2]), k=1) == 1.0
    # k=4: class 0 has two close neighbours, weights exp(cos/0.1) decide for the second test point anyway
    assert knn_top1(train, y_train, test[1:2], np.array([1]), k=4) == 1.0


def test_ppca_closed_form():
    from sklearn.decomposition import PCA as SkPCA
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12)) + 3.0
    m = 4
    model = PPCA.fit(x, m)
    cov = np.cov(x.T, bias=True)
    eig = np.sort(np.linalg.eigvalsh(cov))[::-1]
    assert model.noise_variance == pytest.approx(eig[m:].mean(), rel=1e-10)
    assert model.noise_variance == pytest.approx(SkPCA(m).fit(x).noise_variance_, rel=1e-2)  # sklearn: n−1 normalisation
    # model covariance W Wᵀ + σ²I reproduces the top-M eigenvalues exactly
    c_model = model.weight @ model.weight.T + model.noise_variance * np.eye(12)
    assert np.allclose(np.sort(np.linalg.eigvalsh(c_model))[::-1][:m], eig[:m])
    # posterior mean formula, directly in float64
    w, s2 = model.weight, model.noise_variance
    direct = np.linalg.inv(w.T @ w + s2 * np.eye(m)) @ w.T @ (x[:5] - x.mean(0)).T
    assert np.allclose(model.posterior_mean(x[:5]), direct.T)
    assert np.allclose(np.abs(PCA.fit(x, m).transform(x[:5])), np.abs(SkPCA(m).fit(x).transform(x[:5])))


def test_pixel_probe_on_real_digits(digits_shards):
    from eval.run_probe import probe_run
    res = probe_run(None, str(digits_shards["train"]), str(digits_shards["holdout"]), baselines=("pixels", "ppca"),
                    image_size=16)
    assert res["baselines"]["pixels"]["top1"] > 0.9 and res["baselines"]["ppca"]["top1"] > 0.9
    assert res["baselines"]["pixels"]["n_test"] + res["baselines"]["pixels"]["n_train"] == 1797


def test_probe_report_compare_on_a_real_run(tmp_path, digits_shards, capsys):
    """A few training steps in one process, then the same probe/report path the pretraining job takes."""
    from cluster.run_config import load_run_config
    from cluster.run_dir import prepare_run_dir
    from eval.compare import run_row, table
    from eval.report import write_report
    from eval.run_probe import probe_run
    from pretrain.trainer import run_single_process

    cfg = load_run_config(None, ["model.encoder=bb_convnet_tiny", "data.image_size=16", "batch_size=64", "steps=4",
                                 "log_every=1", "cluster.workers=1", f"data.train={digits_shards['train']}",
                                 f"cluster.storage_path={tmp_path}", "name=tiny"])
    run_dir = prepare_run_dir(cfg).local
    _, hooks = run_single_process(cfg, run_dir)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for m in hooks.logs:
            f.write(json.dumps(m) + "\n")
    (run_dir / "train_summary.json").write_text(json.dumps({"wall_time_s": 3.0, "final": hooks.logs[-1]}))
    res = probe_run(run_dir, str(digits_shards["train"]), str(digits_shards["holdout"]), run_dir=run_dir,
                    baselines=("random-init",))
    assert res["method"]["dim"] == 64 and 0.1 < res["method"]["top1"] <= 1.0
    report = write_report(run_dir).read_text()
    assert "loss_curve.png" in report and "random-init" in report and (run_dir / "loss_curve.png").exists()
    row = run_row(run_dir)
    assert row["steps"] == 4 and row["probe_top1"] == res["method"]["top1"]
    assert "tiny" in table([row])
    with pytest.raises(ValueError, match="not a bigbatch run directory"):
        run_row(tmp_path)
    assert torch.isfinite(torch.tensor(res["method"]["knn_top1"]))
    # the same through the CLI: `bigbatch probe RUN … --json` and `bigbatch compare RUN --json`
    from cluster.cli import main

    capsys.readouterr()
    assert main(["probe", str(run_dir), "--train", str(digits_shards["train"]), "--test",
                 str(digits_shards["holdout"]), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli["checkpoint"] == res["checkpoint"] and cli["method"]["top1"] == res["method"]["top1"]
    assert main(["compare", str(run_dir), str(run_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [row, row] and row["method"] == "simclr" and row["loss"] == "ranking"
    png = tmp_path / "runs.png"
    assert main(["compare", str(run_dir), "--key", "optim.lr_at_256", "--plot", str(png), "--x", "batch",
                 "--by", "model.encoder", "--json"]) == 0
    keyed = json.loads(capsys.readouterr().out)[0]
    assert keyed["optim.lr_at_256"] is None and keyed["model.encoder"] == "bb_convnet_tiny" and keyed["batch"] == 64
    assert png.stat().st_size > 5000
    assert main(["compare", str(run_dir), "--key", "optim.lrr"]) == 2
    assert "optim.lrr: not a config key" in capsys.readouterr().err
    binary = tmp_path / "tiny-binary"  # the same run as if trained with the binary loss (the loss study's mix)
    shutil.copytree(run_dir, binary)
    stored = yaml.safe_load((binary / "config.yaml").read_text())
    stored["loss"] = {"name": "binary", "num_negatives": 8}
    (binary / "config.yaml").write_text(yaml.safe_dump(stored))
    assert main(["compare", str(run_dir), str(binary), "--key", "loss.num_negatives", "--json"]) == 0
    assert [r["loss.num_negatives"] for r in json.loads(capsys.readouterr().out)] == [None, 8]  # ranking has none
    assert main(["compare", str(run_dir), "--key", "loss.num_negatives"]) == 2  # in none of the runs: a mistake
    assert "loss.num_negatives: not a config key of any of these runs" in capsys.readouterr().err
    both = tmp_path / "both.png"  # a line per (loss, optimiser): the keys of --by are read from each run's config
    assert main(["compare", str(run_dir), str(binary), "--plot", str(both), "--by", "loss,optim.name", "--json"]) == 0
    assert [(r["loss"], r["optim.name"]) for r in json.loads(capsys.readouterr().out)] == [("ranking", "lars"),
                                                                                            ("binary", "lars")]
    assert both.stat().st_size > 5000


def test_compare_plot_draws_a_line_per_group(tmp_path):
    import matplotlib.image

    from eval.compare_plot import plot_runs, series

    rows = [{"loss": loss, "batch": b, "probe_top1": top1, "knn_top1": top1 - 0.05}
            for loss, base in (("ranking", 0.6), ("binary", 0.5)) for b, top1 in ((256, base), (1024, base + 0.02),
                                                                                  (4096, base - 0.03))]
    rows.append({"loss": "spectral", "batch": 256, "probe_top1": None, "knn_top1": None})  # failed: left out
    assert series(rows[::-1], "batch", "loss", "probe_top1") == {  # sorted by x, the failed run left out
        "binary": [(256, 0.5), (1024, 0.52), (4096, 0.47)], "ranking": [(256, 0.6), (1024, 0.62), (4096, 0.57)]}
    for r in rows:
        r["optim.name"] = "adamw" if r["loss"] == "binary" and r["batch"] > 256 else "lars"
    assert series(rows, "batch", "loss,optim.name", "probe_top1") == {  # a line per combination of several keys
        "ranking / lars": [(256, 0.6), (1024, 0.62), (4096, 0.57)], "binary / lars": [(256, 0.5)],
        "binary / adamw": [(1024, 0.52), (4096, 0.47)]}
    path = plot_runs(rows, "batch", "loss", tmp_path / "p.png", title="t")
    assert matplotlib.image.imread(path).shape[1] == int(9 * 110)


def test_knn_temperature_changes_the_vote():
    """One class-0 neighbour at cosine 1 against three class-1 neighbours at cosine 0.8 (k = 4):
    T = 0.1 weighs e^10 ≈ 22026 against 3·e^8 ≈ 8943 (class 0 wins), T = 1 weighs e ≈ 2.72 against 3·e^0.8 ≈ 6.68
    (class 1 wins)."""
    s = 0.8
    other = np.sqrt(1 - s**2)
    train = np.array([[1, 0, 0], [s, other, 0], [s, 0, other], [s, -other, 0]], dtype=np.float32)
    y_train = np.array([0, 1, 1, 1])
    test, y_test = np.array([[1, 0, 0]], dtype=np.float32), np.array([0])
    assert np.exp(1 / 0.1) > 3 * np.exp(s / 0.1) and np.exp(1 / 1.0) < 3 * np.exp(s / 1.0)
    assert knn_top1(train, y_train, test, y_test, k=4, temperature=0.1) == 1.0
    assert knn_top1(train, y_train, test, y_test, k=4, temperature=1.0) == 0.0
