"""The recipe's levers (model options and the EMA callback), experiment=lite224, and the field study's choices."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from covidnet.trained.checkpoint import load_checkpoint
from covidnet.models.model import CovidClassifier
from covidnet.rundirs.runs import RunDir
from covidnet.models.training_recipe import NOT_SELECTABLE, selection_score, with_warmup
from covidnet.apps.train import train
from train_configs import compose_cfg, tiny_cfg

ROOT = Path(__file__).resolve().parents[1]


def small_model(**kw) -> CovidClassifier:
    torch.manual_seed(0)
    return CovidClassifier(arch="resnet18", init="scratch", **kw)


def test_label_smoothing_moves_training_targets_only():
    model = small_model(label_smoothing=0.2)
    y = torch.tensor([0.0, 1.0])
    assert torch.allclose(model.smoothed(y), torch.tensor([0.1, 0.9]))
    assert torch.equal(small_model().smoothed(y), y)
    with pytest.raises(ValueError, match="label_smoothing"):
        small_model(label_smoothing=1.0)


def test_warmup_rises_linearly_then_hands_over_to_the_scheduler():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = with_warmup(opt, lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10), 2)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01)
    assert 0.01 < lrs[1] < 1.0
    assert lrs[2] == pytest.approx(1.0)  # the cosine's epoch 0: the peak
    assert lrs[3] < lrs[2] and lrs[4] < lrs[3]


def test_flip_tta_averages_an_image_and_its_mirror_in_eval_only():
    model = small_model(tta_flip=True).eval()
    x = torch.rand(2, 3, 32, 32)
    both = (model(x) + model(torch.flip(x, dims=(-1,)))) / 2
    assert torch.allclose(model.logits(x), both, atol=1e-6)
    assert not torch.allclose(model.logits(x), model(x), atol=1e-6)
    plain = small_model().eval()
    assert torch.equal(plain.logits(x), plain(x))
    model.train()
    torch.manual_seed(1)
    a = model.logits(x)
    torch.manual_seed(1)
    assert torch.allclose(a, model(x))


def test_selection_score_refuses_warmup_epochs_and_epochs_without_a_usable_threshold():
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.tensor([0.2, 0.6, 0.4, 0.9])  # half of each class right at 0.5, AUROC 0.75
    assert selection_score(good, labels, epoch=3, select_from_epoch=3).item() == pytest.approx(0.75)
    assert selection_score(good, labels, epoch=2, select_from_epoch=3).item() == NOT_SELECTABLE
    all_non_covid = torch.tensor([0.1, 0.2, 0.3, 0.4])  # AUROC 1.0, but every image called non-COVID at 0.5
    assert selection_score(all_non_covid, labels, epoch=5, select_from_epoch=0).item() == NOT_SELECTABLE
    all_covid = torch.tensor([0.6, 0.7, 0.8, 0.9])
    assert selection_score(all_covid, labels, epoch=5, select_from_epoch=0).item() == NOT_SELECTABLE
    # nearly one class: 117 of 118 called COVID, specificity 0 (what the first rule let through), AUROC 0.77
    labels = torch.tensor([0] * 58 + [1] * 60)
    probs = torch.cat([torch.linspace(0.51, 0.80, 58), torch.tensor([0.4]), torch.linspace(0.6, 0.99, 59)])
    assert selection_score(probs, labels, epoch=8, select_from_epoch=3).item() == NOT_SELECTABLE
    assert selection_score(probs - 0.2, labels, epoch=8, select_from_epoch=3).item() > 0  # a usable threshold


def test_lite224_sets_each_arms_chosen_values_and_the_selection_rule():
    arms = yaml.safe_load((ROOT / "conf" / "experiment" / "lite224.yaml").read_text())["arms"]
    for init in ("scratch", "imagenet"):
        cfg = compose_cfg(["experiment=lite224", f"init={init}"])
        assert cfg.model.optimizer.lr == pytest.approx(float(arms[init]["lr"]))
        assert cfg.model.backbone_lr_scale == pytest.approx(float(arms[init]["backbone_lr_scale"]))
        assert cfg.model.arch == "efficientnet_lite0" and cfg.data.image_size == 224
        assert cfg.callbacks.model_checkpoint.monitor == "val/select"
        assert cfg.model.select_from_epoch > cfg.model.warmup_epochs
        assert cfg.model.label_smoothing == pytest.approx(float(arms[init]["label_smoothing"]))
        assert (cfg.callbacks.ema is None) == (arms[init]["ema"] is None)
        assert cfg.callbacks.ema is None or cfg.callbacks.ema._target_ == "covidnet.callbacks.EMA"


def test_ema_checkpoints_hold_the_average_and_the_test_uses_it(synthetic_root, tmp_path):
    """Validation selects the averaged weights; the test split must be scored on the same weights (Lightning's own
    callback would restore the raw weights of the best epoch for trainer.test)."""
    out = tmp_path / "run"
    cfg = tiny_cfg(synthetic_root, out, "trainer.max_epochs=3", "callbacks.ema={_target_:covidnet.callbacks.EMA,decay:0.5}",
                   "callbacks.model_checkpoint.monitor=val/select", "model.tta_flip=true")
    metrics = train(cfg)
    ckpt = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    assert "current_model_state" in ckpt  # EMA was on: the raw weights kept beside the average
    raw, avg = ckpt["current_model_state"], ckpt["state_dict"]
    assert any(not torch.equal(raw[k], avg[k]) for k in avg if avg[k].is_floating_point())
    model, _ = load_checkpoint(metrics["best_checkpoint"])
    with open(out / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    from covidnet.data.datamodule import CovidCTDataModule
    from covidnet.models.predict import predict_probs

    dm = CovidCTDataModule(root=str(synthetic_root), image_size=32, batch_size=8, normalization="imagenet")
    dm.setup("test")
    probs, _ = predict_probs(model, dm.test_dataloader())
    assert [float(r["prob_covid"]) for r in rows] == pytest.approx(probs.tolist(), abs=2e-2)  # bf16 run vs fp32 here
    assert metrics["test"]["test/auroc"] is not None


# --- the field study's choices (scripts/studies/field_study.py), without training -----------------------------
@pytest.fixture
def study(monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts" / "studies"))
    import field_study

    return field_study


def fake_trainer(study, scores):
    """A stand-in for train(): writes a finished job whose best val/select is ``scores(init, overrides)``."""
    counter = {"n": 0}

    def fake(args, sweep: Path, overrides: list[str]) -> None:
        counter["n"] += 1
        job = sweep / f"job{counter['n']}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
        values = dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith("hydra."))
        (job / "metrics.json").write_text(json.dumps({"best_val_score": scores(values["init"], values)}))

    return fake, counter


def test_field_study_widens_an_edge_choice_and_picks_levers_on_validation(study, monkeypatch, tmp_path):
    def scores(init, v):
        lr = float(v["model.optimizer.lr"])
        base = {"scratch": 1 - abs(lr - 1e-1), "imagenet": 1 - abs(lr - 1e-3)}[init]  # scratch peaks beyond its grid
        return base - (0.01 if v.get("callbacks.ema") == "null" else 0) + (0.02 if v.get("model.label_smoothing") == "0" else 0)

    fake, counter = fake_trainer(study, scores)
    monkeypatch.setattr(study, "train", fake)
    args = type("A", (), {"data_root": "d", "eval_data": "e", "override": []})()
    selection = study.select(args, tmp_path)
    assert selection["imagenet"]["lr"] == "1e-3" and selection["imagenet"]["inside_grid"]
    # widened twice, x3 rounded to one significant figure: 3e-2 -> 9e-2 -> 3e-1; 9e-2 now lies inside
    assert [float(g["lr"]) for g in selection["scratch"]["grid"]] == pytest.approx([3e-3, 1e-2, 3e-2, 9e-2, 3e-1])
    assert float(selection["scratch"]["lr"]) == pytest.approx(9e-2) and selection["scratch"]["inside_grid"]
    assert selection["imagenet"]["recipe"] == "no_label_smoothing"
    assert selection["scratch"]["chosen"] == {"model.optimizer.lr": selection["scratch"]["lr"], "model.label_smoothing": "0"}
    n = counter["n"]
    assert study.select(args, tmp_path) == selection and counter["n"] == n  # resumed: nothing trained again


@pytest.mark.parametrize("ema", ["on", "off"])
def test_an_arms_weight_average_reaches_the_trainer(synthetic_root, tmp_path, ema):
    """experiment=lite224 sets callbacks.ema from the arm of model.init: switched on or off under arms.<init>, the
    checkpoint holds the average beside the raw weights, or the raw weights alone."""
    arm = ["arms.scratch.ema={_target_:covidnet.callbacks.EMA,decay:0.5}" if ema == "on" else "arms.scratch.ema=null"]
    cfg = tiny_cfg(synthetic_root, tmp_path / "run", "experiment=lite224", "init=scratch", "trainer.max_epochs=1",
                   "model.warmup_epochs=0", "model.select_from_epoch=0", "eval_sets=[]", "++callbacks.cam=null", *arm)
    metrics = train(cfg)
    ckpt = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    assert ("current_model_state" in ckpt) == (ema == "on")


def test_lite224_holds_the_field_studys_chosen_values():
    """experiment=lite224 trains what the full-budget study chose on validation (docs/results/field/selection.json),
    each arm its own learning rate and levers; an arm the study has not chosen yet is marked so in the config."""
    selection = json.loads((ROOT / "docs" / "results" / "field" / "selection.json").read_text())
    text = (ROOT / "conf" / "experiment" / "lite224.yaml").read_text()
    for init in ("scratch", "imagenet"):
        if "chosen" not in selection.get(init, {}):
            assert f"{init}: NOT CHOSEN YET" in text
            continue
        cfg = compose_cfg(["experiment=lite224", f"init={init}"])
        want = {"callbacks.ema": "on", "model.label_smoothing": "0.1", **selection[init]["chosen"]}
        assert cfg.model.optimizer.lr == pytest.approx(float(want["model.optimizer.lr"]))
        assert cfg.model.label_smoothing == pytest.approx(float(want["model.label_smoothing"]))
        assert (cfg.callbacks.ema is None) == (want["callbacks.ema"] == "null")
        assert f"{init}: NOT CHOSEN YET" not in text


def test_lite_holds_the_committed_studys_chosen_values():
    """experiment=lite reproduces the committed 128 px report: its per-arm values are the study's choice on validation."""
    chosen = json.loads((ROOT / "docs" / "results" / "lite" / "selection.json").read_text())
    for init in ("scratch", "imagenet"):
        cfg = compose_cfg(["experiment=lite", f"init={init}"])
        want = chosen[init]["chosen"]
        assert cfg.model.optimizer.lr == pytest.approx(float(want["model.optimizer.lr"]))
        assert cfg.model.backbone_lr_scale == pytest.approx(float(want.get("model.backbone_lr_scale", 1.0)))


def test_the_recipe_model_gives_the_same_probabilities_on_every_path(synthetic_root, tmp_path):
    """A checkpoint trained with the recipe (flip TTA, weight average, val/select) scored by training's test loop
    (predictions_test.csv), training's eval_sets, evaluate.py and visualize.py: the same P(COVID) per test image,
    and it is the flip average of the averaged weights (not the raw weights, not one view)."""
    from hydra import compose, initialize_config_dir

    from covidnet.apps.evaluate import evaluate
    from covidnet.trained.visualization import visualize

    run = tmp_path / "run"
    metrics = train(tiny_cfg(synthetic_root, run, "trainer.max_epochs=2", "trainer.precision=32-true", "model.tta_flip=true",
                             "callbacks.ema={_target_:covidnet.callbacks.EMA,decay:0.5}", "model.label_smoothing=0.1",
                             "callbacks.model_checkpoint.monitor=val/select", "eval_sets=[covid_ct_test]", f"eval_data={synthetic_root.parent}"))

    def probs_of(path: Path, key: str, column: str = "prob_covid") -> dict[str, float]:
        with open(path, newline="") as f:
            return {Path(r[key]).name: float(r[column]) for r in csv.DictReader(f)}

    own = probs_of(run / "predictions_test.csv", "file")
    assert probs_of(run / "eval" / "covid_ct_test" / "predictions.csv", "path") == pytest.approx(own, abs=1e-6)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt={run}", "eval=[covid_ct_test]", f"eval.covid_ct_test.root={synthetic_root}",
                                             f"out_dir={tmp_path / 'out'}", "n_boot=200", "progress=false"])
        vis = compose("visualize", overrides=[f"ckpt=['{metrics['best_checkpoint']}']", f"data.root={synthetic_root}", "n_per_class=2",
                                              "methods=[gradcam]", f"out_dir={tmp_path / 'vis'}", "layer=layer2"])
    evaluate(cfg)
    assert probs_of(next((tmp_path / "out").glob("*/covid_ct_test")) / "predictions.csv", "path") == pytest.approx(own, abs=1e-6)
    visualize(vis)
    shown = probs_of(tmp_path / "vis" / "images.csv", "file", next(c for c in csv.DictReader(open(tmp_path / "vis" / "images.csv")).fieldnames
                                                                    if c.endswith(":prob_covid")))
    assert shown and all(own[name] == pytest.approx(p, abs=1e-5) for name, p in shown.items())
    # what those numbers are: the flip average of the checkpoint's (averaged) weights
    from covidnet.data.datamodule import CovidCTDataModule

    model, _ = load_checkpoint(metrics["best_checkpoint"])
    dm = CovidCTDataModule(root=str(synthetic_root), image_size=32, batch_size=8, normalization="imagenet")
    dm.setup("test")
    x, _ = next(iter(dm.test_dataloader()))
    model.eval()
    with torch.no_grad():
        single = torch.sigmoid(model(x))
        both = torch.sigmoid((model(x) + model(torch.flip(x, dims=(-1,)))) / 2)
    first = [own[n] for n in dm.split_names("test")[: len(x)]]
    assert first == pytest.approx(both.tolist(), abs=1e-5)
    assert first != pytest.approx(single.tolist(), abs=1e-5)


def test_the_weight_average_comes_after_the_cam_callback():
    """Lightning runs callbacks in list order: EMA swaps the raw weights back at validation epoch end, so the CAM
    callback, which draws then, must come before it to draw the validated (averaged) model."""
    cfg = compose_cfg(["callbacks.ema={_target_:covidnet.callbacks.EMA,decay:0.98}"])
    names = list(cfg.callbacks)  # covidnet.apps.train.instantiate_all builds them in this order
    assert cfg.callbacks.cam is not None and names.index("cam") < names.index("ema")


def test_a_selection_rule_that_leaves_no_epoch_is_refused_before_training(synthetic_root, tmp_path):
    from covidnet.core.errors import ConfigError

    with pytest.raises(ConfigError, match="model.select_from_epoch=3 with trainer.max_epochs=2"):
        train(tiny_cfg(synthetic_root, tmp_path / "run", "trainer.max_epochs=2", "model.select_from_epoch=3"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_where_no_epoch_met_the_rule_says_so(synthetic_root, tmp_path, monkeypatch):
    import covidnet.models.model

    monkeypatch.setattr(covidnet.models.model, "selection_score", lambda *a: torch.tensor(NOT_SELECTABLE))
    metrics = train(tiny_cfg(synthetic_root, tmp_path / "run", "callbacks.model_checkpoint.monitor=val/select"))
    assert metrics["best_val_score"] == NOT_SELECTABLE and "chosen by no rule" in metrics["not_selectable"]


def test_the_report_never_averages_a_score_no_epoch_earned(tmp_path):
    """A run where no epoch met the selection rule (best val/select -1) has no best score in the report, and says why."""
    import math

    from covidnet.report import main
    from fake_runs import fake_job, read_rows

    labels = [0, 1] * 10
    for seed, extra in ((0, {"best_val_score": 0.8}), (1, {"best_val_score": NOT_SELECTABLE, "not_selectable": "no epoch met the rule"})):
        fake_job(tmp_path / f"init=scratch,seed={seed}", ["init=scratch", f"seed={seed}"], labels, [0.3, 0.7] * 10,
                 {"init": "scratch", "seed": seed, **extra})
    assert main([str(tmp_path), "--n-boot", "100"]) == 0
    (row,) = read_rows(tmp_path / "summary.csv")
    assert float(row["best_val_score_mean"]) == pytest.approx(0.8) and math.isnan(float(row["best_val_score_std"]))
    runs = {r["job"]: r for r in read_rows(tmp_path / "runs.csv")}
    assert "no epoch met the rule" in runs["init=scratch,seed=1"]["message"] and runs["init=scratch,seed=1"]["best_val_score"] == ""


def test_field_study_resumes_on_another_machine_from_its_published_runs(study, monkeypatch, tmp_path):
    """--publish keeps each finished job without its checkpoints and the sweep's launch records; --restore on a fresh
    machine brings them back, so the choices made there are not trained again, and a restored seed-0 run (no
    checkpoint) is retrained for the final set rather than copied without weights."""
    fake, counter = fake_trainer(study, lambda init, v: {"scratch": 0.7, "imagenet": 0.9}[init] - abs(float(v["model.optimizer.lr"]) - 1e-2))
    monkeypatch.setattr(study, "train", fake)
    args = type("A", (), {"data_root": "d", "eval_data": "e", "override": []})()
    first = tmp_path / "machine1" / "runs"
    selection = study.select(args, first)
    n = counter["n"]
    for sweep in study.finished_sweeps(first):
        (sweep / "multirun.yaml").write_text("hydra: {overrides: {task: [init=x]}}\n")
        for job in sweep.iterdir():
            if (job / "metrics.json").is_file():
                (job / "checkpoints").mkdir()
                (job / "checkpoints" / "best.ckpt").write_bytes(b"weights")
                metrics = json.loads((job / "metrics.json").read_text())
                (job / "metrics.json").write_text(json.dumps({**metrics, "best_checkpoint": "best.ckpt"}))
        (sweep / "job-unfinished" / ".hydra").mkdir(parents=True)  # interrupted: no metrics.json
        study.archive(sweep, tmp_path / "published" / sweep.name / study.RUNS, tmp_path / "machine1")
    assert not list((tmp_path / "published").rglob("checkpoints")) and not list((tmp_path / "published").rglob("job-unfinished"))

    second = tmp_path / "machine2" / "runs"
    (second / "grid_scratch").mkdir(parents=True)
    (second / "grid_scratch" / "multirun.yaml").write_text("this machine's own launch\n")
    restored = study.restore(tmp_path / "published", second)
    assert len(restored) == n and (second / "grid_scratch" / "multirun.yaml").read_text() == "this machine's own launch\n"
    kept = list((second / "grid_scratch" / "launches").glob("multirun-*.yaml"))
    assert [p.read_text() for p in kept] == ["hydra: {overrides: {task: [init=x]}}\n"]
    assert kept[0].stat().st_mtime < (second / "grid_scratch" / "multirun.yaml").stat().st_mtime
    assert study.select(args, second) == selection and counter["n"] == n  # nothing chosen twice
    assert study.restore(tmp_path / "published", second) == []  # nothing overwritten, nothing twice
    assert len(list((second / "grid_scratch" / "launches").glob("*.yaml"))) == 1

    # the machine that published resumes from its own runs: its launches are not recorded a second time
    launches_before = {p: sorted(x.name for x in (p / "launches").glob("*.yaml")) for p in study.finished_sweeps(first)}
    study.restore(tmp_path / "published", first)
    assert {p: sorted(x.name for x in (p / "launches").glob("*.yaml")) for p in study.finished_sweeps(first)} == launches_before
    assert all(RunDir(p).read_metrics()["best_checkpoint"] == "best.ckpt" and RunDir(p).best_checkpoint() is None for p in restored)

    monkeypatch.setattr(study, "job_cams", lambda args, out, run: None)
    study.train_seeds(args, second, selection)
    final_jobs = [json.loads((p / "metrics.json").read_text()) for p in (second / "final").iterdir() if (p / "metrics.json").is_file()]
    assert len(final_jobs) == 2 * len(study.SEEDS) and counter["n"] == n + 2 * len(study.SEEDS)  # seed 0 retrained too
