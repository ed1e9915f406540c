"""Evaluation faults that used to end in a wrong or lost result with exit status 0 (docs/reliability.md)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from synthetic_dicom import write_scans
from fake_runs import make_checkpoint

from covidnet.core.errors import EvalError
from covidnet.apps.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("pydicom")
# two patients per diagnosis: a two-fold patient split of it is possible (covidnet.data.multisource)
TWO_EACH = {"COVID-19 subjects": ["p1", "p2"], "Cap subjects": ["c1", "c2"], "Normal subjects": ["n1", "n2"]}


@pytest.fixture(scope="module")
def md(tmp_path_factory) -> Path:
    """A COVID-CT-MD look-alike (conf/eval/covid_ct_md.yaml's folder names) below an eval_data folder."""
    return write_scans(tmp_path_factory.mktemp("sets") / "covid-ct-md-sample", TWO_EACH)


def run_evaluate(out: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=["n_boot=100", "progress=false", f"out_dir={out}", *overrides])
    return evaluate(cfg)


def md_overrides(md: Path) -> list[str]:
    return ["eval=[covid_ct_md]", f"eval.covid_ct_md.root={md}", "eval.covid_ct_md.read.slice_labels=null"]


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_training_source_is_scored_on_its_held_out_patients_only(tmp_path, md):
    """Trained with data.sources=[covid_ct,covid_ct_md] (fold 0 of 2): the fold-1 patients were training data and
    are left out of covid_ct_md, and metrics.json says which; a model trained on COVID-CT alone is scored on all."""
    both = make_checkpoint(tmp_path / "both.ckpt", sources=["covid_ct", "covid_ct_md"], fold=0, n_folds=2)
    run_evaluate(tmp_path / "out", f"ckpt={both}", *md_overrides(md))
    out = next((tmp_path / "out").glob("*/covid_ct_md"))
    metrics = json.loads((out / "metrics.json").read_text())
    patients = {r["patient"] for r in rows_of(out / "predictions.csv")}
    excluded = metrics["training_patients_excluded"]
    assert excluded["source"] == "covid_ct_md" and (excluded["fold"], excluded["n_folds"]) == (0, 2)
    assert len(patients) == 3 == metrics["n_patients"] and not patients & set(excluded["patients"])
    assert {p.split("/")[1] for p in patients} == {"p1", "c1", "n1"}  # fold 0: the first patient of each diagnosis
    assert any("left out" in n for n in metrics["notes"])
    alone = make_checkpoint(tmp_path / "alone.ckpt")
    run_evaluate(tmp_path / "out2", f"ckpt={alone}", *md_overrides(md))
    metrics = json.loads(next((tmp_path / "out2").glob("*/covid_ct_md/metrics.json")).read_text())
    assert metrics["n_patients"] == 6 and metrics["training_patients_excluded"] is None


def test_metrics_json_records_the_resolved_set_definition(tmp_path, md):
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    run_evaluate(tmp_path / "out", f"ckpt={ckpt}", *md_overrides(md), "eval.covid_ct_md.read.window.level=-500")
    metrics = json.loads(next((tmp_path / "out").glob("*/covid_ct_md/metrics.json")).read_text())
    definition = metrics["set_definition"]
    assert definition["kind"] == "dicom" and definition["root"] == str(md.resolve())
    assert definition["read"]["window"] == {"width": 1500, "level": -500} and definition["read"]["slices"] == "all"
    assert definition["patient_topk"] == 5


def test_the_report_never_pools_different_copies_of_a_set(tmp_path, md):
    """Two runs of one group evaluated on covid_ct_md from two copies (one lacks a slice): two tables, one run
    each, each saying what it holds; never one mean over both."""
    import shutil

    from fake_runs import make_run

    from covidnet.trained.external_summary import external_lines

    small = tmp_path / "small"
    shutil.copytree(md, small)
    next(small.rglob("*.dcm")).unlink()
    for seed, root in ((0, md), (1, small)):
        run = make_run(tmp_path / "sweep" / f"seed={seed}", seed=seed)
        run_evaluate(tmp_path / f"out{seed}", f"ckpt=['{run}']", "into_runs=true", *[o.replace(str(md), str(root)) for o in md_overrides(md)])
    lines = external_lines({"init=scratch": [tmp_path / "sweep" / "seed=0", tmp_path / "sweep" / "seed=1"]}, None, n_boot=100)
    headings = [line for line in lines if line.startswith("### covid_ct_md")]
    assert len(headings) == 2, lines
    assert "version 1 of 2" in headings[0] and "version 2 of 2" in headings[1]
    assert [line.split("|")[2].strip() for line in lines if line.startswith("| init=scratch |")] == ["1", "1"]


@pytest.mark.parametrize("cut", ["mid_line", "whole_rows"])
def test_the_report_refuses_a_truncated_predictions_file(tmp_path, cut):
    """predictions_test.csv cut short (mid-line, or after whole rows where metrics.json counts the predictions):
    the job is reported unreadable with the reason, never pooled as complete."""
    from covidnet.report.sweep import read_job
    from covidnet.rundirs.runs import RunDir

    job = tmp_path / "sweep" / "seed=0"
    rd = RunDir(job)
    rd.write_metrics({"best_checkpoint": "epoch=001.ckpt", "test": {"test/auroc": 0.5}, "n_test_predictions": 4})
    rd.write_predictions(["a.png", "b.png", "c.png", "d.png"], [1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1])
    assert read_job(job, tmp_path / "sweep", {}).status == "complete"
    text = rd.predictions_path.read_text()
    rd.predictions_path.write_text(text[: text.index("c.png") + 8] if cut == "mid_line" else text[: text.index("c.png")])
    run = read_job(job, tmp_path / "sweep", {})
    assert run.status == "unreadable" and "truncated" in run.message
    with pytest.raises(ValueError, match="truncated"):
        rd.read_predictions()


def test_every_file_of_a_set_is_read_or_named(tmp_path):
    """A dangling symlink, a DICOM copy of a slice under another name, a folder nested in a patient folder: each is
    named with its fix, never silently dropped or counted twice; files that are not read are listed in a note."""
    import shutil

    from PIL import Image

    from covidnet.images.sources import read_source
    from covidnet.images.sources.base import SourceError

    folder = tmp_path / "folder"
    for cls in ("COVID", "Normal"):
        (folder / cls).mkdir(parents=True)
        Image.new("L", (32, 32), 80).save(folder / cls / "a.png")
    (folder / "COVID" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(SourceError, match=r"gone.png: a symbolic link to a missing file"):
        read_source("image_folder", folder, classes={"COVID": 1, "Normal": 0})

    classes = {"COVID-19 subjects": 1, "Cap subjects": 0, "Normal subjects": 0}
    scans = write_scans(tmp_path / "scans", TWO_EACH)
    records, _ = read_source("dicom", scans, classes=classes)
    copy = scans / "COVID-19 subjects" / "p1"
    shutil.copy(copy / "000.dcm", copy / "000_copy.dcm")
    with pytest.raises(SourceError, match=r"000_copy.dcm: the same slice as .*000.dcm .*counted twice"):
        read_source("dicom", scans, classes=classes)
    (copy / "000_copy.dcm").unlink()
    (copy / "series2").mkdir()
    shutil.copy(copy / "001.dcm", copy / "series2" / "001.dcm")
    with pytest.raises(SourceError, match=r"p1: folder\(s\) inside a patient folder \(series2\)"):
        read_source("dicom", scans, classes=classes)
    shutil.rmtree(copy / "series2")
    shutil.copy(copy / "001.dcm", copy / "README")
    again, notes = read_source("dicom", scans, classes=classes)
    assert len(again) == len(records)
    assert any("p1: 1 file(s) not read" in n and "\"++eval.<set>.read.extensions=['.dcm','']\"" in n for n in notes)


# --- nothing lost ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def semiseg(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("semiseg")
    (root / "images").mkdir()
    for n in range(4):
        Image.new("L", (40, 40), 40 * n).save(root / "images" / f"{n}.png")
    return root


def test_a_second_evaluation_into_the_same_out_dir_keeps_the_first_summary_rows(tmp_path, md, semiseg):
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "out"
    first = run_evaluate(out, f"ckpt={ckpt}", *md_overrides(md))["rows"]
    second = run_evaluate(out, f"ckpt={ckpt}", "eval=[semiseg]", f"eval.semiseg.root={semiseg}")["rows"]
    summary = rows_of(out / "summary.csv")
    assert [r["set"] for r in summary] == [r["set"] for r in first + second]
    assert {r["set"] for r in summary} == {"covid_ct_md", "semiseg"}
    assert not list(out.glob("INCOMPLETE*")) and not list(out.rglob("INCOMPLETE"))  # both finished: no mark left


def test_a_result_directory_another_evaluation_is_writing_is_refused(tmp_path, md):
    """Two evaluations into one out_dir: the one that finds the other's mark locked (its process alive) is refused
    before any prediction; a mark whose process is gone (a killed evaluation) is taken over."""
    import subprocess
    import sys

    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    target = tmp_path / "out" / "scratch-resnet18" / "covid_ct_md"
    holds = f"from covidnet.rundirs.eval_lock import claim; claim([__import__('pathlib').Path({str(target)!r})], 'other'); print('held', flush=True); input()"
    other = subprocess.Popen([sys.executable, "-c", holds], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        assert json.loads((target / "INCOMPLETE").read_text())["pid"] == other.pid
        with pytest.raises(EvalError, match=rf"being written by another evaluation \(process {other.pid}"):
            run_evaluate(tmp_path / "out", f"ckpt={ckpt}", *md_overrides(md))
        assert not (target / "metrics.json").exists()
    finally:
        other.kill()
        other.wait()
    run_evaluate(tmp_path / "out", f"ckpt={ckpt}", *md_overrides(md))  # its process is gone: taken over
    assert (target / "metrics.json").is_file() and not (target / "INCOMPLETE").exists()


def test_an_evaluation_on_another_node_is_refused_though_its_process_id_means_nothing_here(tmp_path):
    """On a shared filesystem the writer may run on another node: its process id is no process here, yet its lock on
    the mark says it is alive, so the directory is refused, naming that process and node; once the lock is freed
    the mark is taken over."""
    import subprocess
    import sys

    from covidnet.rundirs.eval_lock import INCOMPLETE, claim, release

    target = tmp_path / "out" / "m" / "s"
    target.mkdir(parents=True)
    holds = (f"from covidnet.rundirs.eval_lock import lock_mark; from pathlib import Path; "
             f"lock_mark(Path({str(target / INCOMPLETE)!r}), {{'pid': 4194305, 'host': 'node-b'}}); print('held', flush=True); input()")
    other = subprocess.Popen([sys.executable, "-c", holds], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(EvalError, match=r"being written by another evaluation \(process 4194305 on node-b;"):
            claim([target], "this one")
    finally:
        other.kill()
        other.wait()
    (mark,) = claim([target], "this one")  # its lock is free: taken over
    assert json.loads(mark.read_text())["what"] == "this one"
    release(mark)
    assert not mark.exists()


KILL_AFTER_FIRST_PAIR = """
import os, signal, sys
sys.path.insert(0, {root!r})
import covidnet.apps.evaluate as ev
import covidnet.rundirs.run_files as run_files
from hydra import compose, initialize_config_dir
write, done = run_files.write_json, []
def die_at_second_metrics(path, data):
    if str(path).endswith("metrics.json"):
        done.append(path)
    if len(done) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    write(path, data)
run_files.write_json = die_at_second_metrics
with initialize_config_dir(config_dir={conf!r}, version_base="1.3"):
    cfg = compose("evaluate", overrides={overrides!r})
ev.evaluate(cfg)
"""


def test_an_evaluation_killed_midway_is_marked_incomplete(tmp_path, md, semiseg):
    """SIGKILLed after its first (model, set) pair: that pair's files are whole, the other pair's directory and the
    out_dir carry an INCOMPLETE mark naming what is missing; the next evaluation takes the dead one's marks over."""
    import subprocess
    import sys

    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "out"
    overrides = ["n_boot=100", "progress=false", f"out_dir={out}", f"ckpt={ckpt}", "eval=[covid_ct_md,semiseg]",
                 f"eval.covid_ct_md.root={md}", "eval.covid_ct_md.read.slice_labels=null", f"eval.semiseg.root={semiseg}"]
    script = KILL_AFTER_FIRST_PAIR.format(root=str(ROOT), conf=str(ROOT / "conf"), overrides=overrides)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    done, missing = out / "scratch-resnet18" / "covid_ct_md", out / "scratch-resnet18" / "semiseg"
    assert (done / "metrics.json").is_file() and not (done / "INCOMPLETE").exists()
    assert (missing / "INCOMPLETE").is_file() and not (missing / "metrics.json").exists()
    whole = list(out.glob("INCOMPLETE.*.json"))
    assert len(whole) == 1 and "scratch-resnet18/semiseg" in json.loads(whole[0].read_text())["pairs"]
    assert not (out / "summary.csv").exists()
    run_evaluate(tmp_path / "out", f"ckpt={ckpt}", "eval=[semiseg]", f"eval.semiseg.root={semiseg}")  # completes what is missing
    assert (missing / "metrics.json").is_file() and not (missing / "INCOMPLETE").exists()
    assert not list(out.glob("INCOMPLETE.*.json"))  # the killed call's pairs are all written now


# --- checked before work, with the message that helps -------------------------------------------------------------
def test_an_unreadable_eval_image_fails_training_before_it_starts(synthetic_root, tmp_path):
    from train_configs import tiny_cfg

    from covidnet.apps.train import train

    data = tmp_path / "sets"
    (data / "covid-semiseg" / "images").mkdir(parents=True)
    from PIL import Image

    Image.new("L", (40, 40), 90).save(data / "covid-semiseg" / "images" / "1.png")
    (data / "covid-semiseg" / "images" / "2.png").write_bytes(b"not an image")
    with pytest.raises(EvalError, match=r"(?s)semiseg: 1 image\(s\) cannot be read.*2.png"):
        train(tiny_cfg(synthetic_root, tmp_path / "run", "eval_sets=[semiseg]", f"eval_data={data}"))
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # refused before any training


@pytest.mark.parametrize("sources,fold,match", [
    (["covid_ct", "covid_ct_md"], 2, r"data.fold=2 must be in 0..1"),
    (["covid_ct", "semiseg"], 0, r"semiseg \(semiseg\) cannot be split by patient"),
    (["covid_ct", "nope"], 0, r"Unknown eval set 'nope'"),
])
def test_bad_training_sources_are_refused_before_any_image_is_read(tmp_path, sources, fold, match):
    """The data module refuses them when it is built: before COVID-CT is decoded (here it does not even exist)."""
    from covidnet.data.datamodule import CovidCTDataModule
    from covidnet.images.sources.base import SourceError

    with pytest.raises(SourceError, match=match):
        CovidCTDataModule(root=str(tmp_path / "no-data"), sources=sources, fold=fold, sets_root=str(tmp_path))


def test_device_and_out_dir_are_checked_before_any_prediction(tmp_path, md):
    import torch

    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    if not torch.cuda.is_available():
        with pytest.raises(EvalError, match=r"device=cuda, but torch finds no CUDA GPU here.*device=cpu"):
            run_evaluate(tmp_path / "out", f"ckpt={ckpt}", "device=cuda", *md_overrides(md))
    (tmp_path / "file").write_text("")
    with pytest.raises(EvalError, match=r"output directory .* cannot be written: .* is a file, not a folder\. Pass another out_dir"):
        run_evaluate(tmp_path / "file" / "out", f"ckpt={ckpt}", *md_overrides(md))


def test_evaluate_names_its_own_way_to_score_an_unfinished_run(tmp_path, md, capsys):
    from fake_runs import make_run

    make_run(tmp_path / "sweep" / "a")
    (tmp_path / "sweep" / "b" / "checkpoints").mkdir(parents=True)  # started, never finished
    run_evaluate(tmp_path / "out", f"ckpt={tmp_path / 'sweep'}", *md_overrides(md))
    said = capsys.readouterr().out
    assert "evaluate: skipped 1 run(s)" in said and "include_unfinished" not in said
    assert "ckpt=['<run dir>/checkpoints/last.ckpt']" in said


def test_dicom_faults_get_their_own_message(tmp_path):
    """A truncated file, a colour DICOM, an absurd stored size, a slice-label CSV with a non-integer: each named
    for what it is, before any image is decoded, never a traceback or another fault's message."""
    import pydicom

    from covidnet.images.sources import read_source
    from covidnet.images.sources.base import SourceError

    classes = {"COVID": 1, "Normal": 0}
    root = write_scans(tmp_path / "scans", {"COVID": ["p1"], "Normal": ["n1"]})
    first = sorted((root / "COVID" / "p1").glob("*.dcm"))[0]
    data = first.read_bytes()

    def fails(match, **read):
        with pytest.raises(SourceError, match=match):
            read_source("dicom", root, classes=classes, **read)

    first.write_bytes(data[:600])
    fails(r"no pixel data \(CT Image Storage without its pixels\): the file is truncated \(600 bytes\)")
    first.write_bytes(data[:-100])
    fails(r"its pixel data holds \d+ of the 4608 bytes .* truncated")
    first.write_bytes(data)
    ds = pydicom.dcmread(first)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
    ds.save_as(first)
    fails(r"a colour image \(RGB, 3 samples per pixel\), not a CT slice")
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 60000, 60000
    ds.save_as(first)
    fails(r"a stored image of 60000x60000 pixels is not a CT slice")
    first.write_bytes(data)
    (root / "labels.csv").write_text(f"file,slice_label\n{first.relative_to(root).as_posix()},yes\n")
    fails(r"labels.csv, line 2: slice_label='yes' .* is not 0 or 1", slice_labels="labels.csv")


def test_an_image_folder_is_evaluated_from_the_command_line(tmp_path):
    """eval=folder with root= and classes= filled in; without them, the message names what to pass."""
    from PIL import Image

    folder = tmp_path / "mine"
    for cls, grey in (("COVID", 200), ("Normal", 60)):
        (folder / cls).mkdir(parents=True)
        for k in range(2):
            Image.new("L", (40, 40), grey + k).save(folder / cls / f"{k}.png")
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    with pytest.raises(EvalError, match=r"eval set folder: not set: read.classes, root\. Pass eval.folder.read.classes=\.\.\. eval.folder.root="):
        run_evaluate(tmp_path / "out", f"ckpt={ckpt}", "eval=folder")
    run_evaluate(tmp_path / "out", f"ckpt={ckpt}", "eval=folder", f"eval.folder.root={folder}", "eval.folder.read.classes={COVID: 1, Normal: 0}")
    metrics = json.loads(next((tmp_path / "out").glob("*/folder/metrics.json")).read_text())
    assert metrics["n_images"] == 4 and metrics["n_covid"] == 2


@pytest.mark.parametrize("wrapped", [False, True])
def test_an_expected_error_in_a_multirun_job_is_raised_alone(monkeypatch, wrapped):
    """In a multirun the job must still fail (Hydra records it), but with the expected error alone: no wrapper
    chain and no library frames for Hydra to print at the end of the sweep."""
    import traceback

    from covidnet.apps import cli as entry
    from covidnet.images.sources.base import SourceError

    monkeypatch.setattr(entry, "_in_multirun", lambda: True)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("COVIDNET_DEBUG", raising=False)

    def deep():
        try:
            raise SourceError("data.fold=2 must be in 0..1 (data.n_folds=2).")
        except SourceError as err:
            if wrapped:  # as Hydra's instantiate wraps what a constructor raised
                raise RuntimeError("Error in call to target 'covidnet.data.datamodule.CovidCTDataModule'") from err
            raise

    with pytest.raises(SourceError) as caught:
        with entry.user_errors():
            deep()
    printed = "".join(traceback.format_exception(caught.value))
    assert str(caught.value) == "data.fold=2 must be in 0..1 (data.n_folds=2)."
    assert "RuntimeError" not in printed and "in deep" not in printed and "direct cause" not in printed
    assert len(traceback.extract_tb(caught.value.__traceback__)) <= 3, printed  # this test, contextlib, entry.user_errors
