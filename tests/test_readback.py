"""Files read back: checkpoints, predictions, run and sweep directories, evaluation areas (docs/reliability.md,
"Files read back"). Each test was written to fail before the fix it names."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from covidnet.trained.checkpoint import CheckpointError, load_checkpoint, read_checkpoint


# --- checkpoints -------------------------------------------------------------------------------------------------
class CallsOsSystem:
    """Unpickling this calls os.system (what a malicious checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_whose_pickle_calls_os_system_holds_pickled_objects(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"hyper_parameters": {"arch": "resnet18", "init": "scratch"}, "state_dict": {}, "x": CallsOsSystem(marker)},
               tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(tmp_path / "evil.ckpt")
    assert "holds pickled Python objects" in str(err.value) and "system" in str(err.value)
    assert "truncated or corrupt" not in str(err.value)
    assert not marker.exists()


def test_an_efficientnet_checkpoint_without_timm_names_the_extra(tmp_path, monkeypatch):
    torch.save({"hyper_parameters": {"arch": "efficientnet_lite0", "init": "scratch"}, "state_dict": {}}, tmp_path / "lite.ckpt")
    monkeypatch.setitem(sys.modules, "timm", None)  # as on an install without the lite extra
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "lite.ckpt")
    assert 'pip install -e ".[lite]"' in str(err.value)
    assert "describe a covidnet model" not in str(err.value)


# --- resume ------------------------------------------------------------------------------------------------------
def compose_train(overrides: list[str]):
    """The train config as train() checks a resume with it (the architecture's normalisation filled in)."""
    from hydra import compose, initialize_config_dir

    from covidnet.models.inits import apply_arch_defaults

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        return apply_arch_defaults(compose("train", overrides=overrides))


def test_a_resume_before_the_first_checkpoint_is_compared_with_the_runs_config(tmp_path):
    from omegaconf import OmegaConf

    from covidnet.core.errors import ConfigError
    from covidnet.trained.resume import check_resume

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_train(["data.batch_size=32"]), run / ".hydra" / "config.yaml")  # killed before any checkpoint
    resume = ["ckpt_path=last", f"callbacks.model_checkpoint.dirpath={run / 'checkpoints'}"]
    with pytest.raises(ConfigError, match=r"before its first checkpoint.*\n  data.batch_size: 32 in the run, 16 now"):
        check_resume(compose_train(["data.batch_size=16", *resume]), run)
    same = check_resume(compose_train(["data.batch_size=32", *resume]), run)
    assert same is not None and same.checkpoint is None  # the same settings: Lightning starts over, as before


# --- predictions read back ---------------------------------------------------------------------------------------
BAD_VALUES = [("prob_covid", "nan"), ("prob_covid", "inf"), ("prob_covid", "1.5"), ("prob_covid", "-0.1"), ("label", "2")]


def job(path: Path, seed: int, probs=(0.9, 0.8, 0.3, 0.1)):
    """A finished job directory as train.py leaves it (no training): overrides, metrics.json, predictions_test.csv."""
    from omegaconf import OmegaConf

    from covidnet.rundirs.runs import RunDir

    rd = RunDir(path)
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create([f"seed={seed}"]), path / ".hydra" / "overrides.yaml")
    rd.write_metrics({"seed": seed, "best_checkpoint": "epoch=001.ckpt", "best_epoch": 1, "fit_seconds": 1.0, "n_test_predictions": len(probs)})
    rd.write_predictions([f"img{i}.png" for i in range(len(probs))], [1, 1, 0, 0][: len(probs)], list(probs))
    return rd


def replace_cell(path: Path, line: int, column: str, value: str) -> None:
    """Set one cell of a CSV (``line`` 1-based, the header is line 1) as an editor or a bad copy would."""
    lines = path.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    cells = lines[line - 1].rstrip("\n").split(",")
    cells[header.index(column)] = value
    lines[line - 1] = ",".join(cells) + "\n"
    path.write_text("".join(lines))


@pytest.mark.parametrize(("column", "value"), BAD_VALUES)
def test_a_jobs_predictions_with_a_value_no_writer_writes_are_refused_with_file_and_line(tmp_path, column, value):
    from covidnet.core.errors import ResultFileError

    rd = job(tmp_path / "run", 0)
    replace_cell(rd.predictions_path, 3, column, value)
    with pytest.raises(ResultFileError, match=rf"predictions_test.csv, line 3: {column}="):
        rd.read_prediction_rows()


@pytest.mark.parametrize(("column", "value"), BAD_VALUES)
def test_an_eval_areas_predictions_with_a_value_no_writer_writes_are_refused(tmp_path, column, value):
    from covidnet.core.errors import ResultFileError
    from covidnet.rundirs.run_files import read_eval, write_eval
    from covidnet.images.sources.base import Record

    records = [Record(f"{i}.png", Path(f"{i}.png"), y, "COVID" if y else "NonCOVID") for i, y in enumerate([1, 0, 1])]
    out = write_eval(tmp_path / "eval" / "s", records, [0.7, 0.2, 0.6], {"n_images": 3})
    replace_cell(out / "predictions.csv", 2, column, value)
    with pytest.raises(ResultFileError, match=rf"predictions.csv, line 2: {column}="):
        read_eval(out)


def test_rows_cut_at_a_line_end_or_added_twice_are_named_for_what_they_are(tmp_path):
    from covidnet.core.errors import ResultFileError
    from covidnet.rundirs.run_files import read_eval, write_eval
    from covidnet.images.sources.base import Record

    rd = job(tmp_path / "run", 0)
    text = rd.predictions_path.read_text()
    lines = text.splitlines(keepends=True)
    rd.predictions_path.write_text(text + lines[2])  # a duplicated extra row
    with pytest.raises(ResultFileError, match=r"Line 6 is duplicated: img1.png \(label 1\) already on line 3") as err:
        rd.read_prediction_rows()
    assert "truncated" not in str(err.value)
    records = [Record(f"{i}.png", Path(f"{i}.png"), 1, "COVID") for i in range(3)]
    out = write_eval(tmp_path / "eval" / "s", records, [0.7, 0.2, 0.6], {"n_images": 3})
    eval_lines = (out / "predictions.csv").read_text().splitlines(keepends=True)
    (out / "predictions.csv").write_text("".join(eval_lines[:-1]))  # cut at a line end: 2 of 3 rows
    with pytest.raises(ResultFileError, match=r"truncated .* It holds 2 rows; its metrics.json \(n_images\) says it wrote 3"):
        read_eval(out)
    (out / "predictions.csv").write_text("".join(eval_lines) + "".join(eval_lines[1:2]))
    with pytest.raises(ResultFileError, match="duplicated"):
        read_eval(out)


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    job(root / "seed=0", 0)
    job(root / "seed=1", 1, (0.7, 0.6, 0.4, 0.2))
    return root


def report(*args: str) -> tuple[int, str]:
    """``python -m covidnet.report`` in a subprocess (what a user runs): its exit status and stderr."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "covidnet.report", "--n-boot", "100", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=600)
    return done.returncode, done.stderr


def test_a_reports_predictions_are_checked_when_it_is_rebuilt(sweep):
    from covidnet.report import write_report

    write_report(sweep, n_boot=100)
    bundle = sweep / "predictions.csv"
    good = bundle.read_text()
    cases = {
        "nan": (lambda: replace_cell(bundle, 2, "seed=0", "nan"), r"predictions.csv, line 2: seed=0='nan' is not a probability"),
        "label": (lambda: replace_cell(bundle, 3, "label", "7"), r"predictions.csv, line 3: label='7' is not 0 or 1"),
        "cut mid-line": (lambda: bundle.write_text(good[:-4]), r"truncated .* ends in the middle of a line"),
        "cut at a line end": (lambda: bundle.write_text("".join(good.splitlines(keepends=True)[:-1])), r"truncated .* holds 3 rows; jobs.json"),
        "duplicated": (lambda: bundle.write_text(good + good.splitlines(keepends=True)[1]), r"Line 6 is duplicated: test/img0.png"),
    }
    for name, (damage, message) in cases.items():
        bundle.write_text(good)
        damage()
        status, err = report("--from-predictions", str(sweep))
        assert status == 2 and "Traceback" not in err, (name, err)
        assert len(err.strip().splitlines()) == 1, (name, err)
        assert __import__("re").search(message, err), (name, err)
    jobs = sweep / "jobs.json"
    bundle.write_text(good)
    jobs.write_text(jobs.read_text()[:200])
    status, err = report("--from-predictions", str(sweep))
    assert status == 2 and "Traceback" not in err and "jobs.json is not valid JSON" in err, err


def test_a_truncated_eval_area_in_a_report_is_one_line_not_a_traceback(sweep):
    from covidnet.rundirs.run_files import write_eval
    from covidnet.rundirs.runs import RunDir
    from covidnet.images.sources.base import Record

    records = [Record(f"{i}.png", Path(f"{i}.png"), i % 2, "COVID") for i in range(4)]
    out = write_eval(RunDir(sweep / "seed=0").eval_dir("md"), records, [0.7, 0.2, 0.6, 0.4], {"n_images": 4})
    text = (out / "predictions.csv").read_text()
    (out / "predictions.csv").write_text(text[:-5])
    status, err = report(str(sweep))
    assert status == 2 and "Traceback" not in err, err
    assert "seed=0" in err and "eval/md/predictions.csv is truncated" in err, err


# --- one process per run directory -------------------------------------------------------------------------------
HOLD = ("import sys, time\nfrom covidnet.rundirs.run_lock import acquire\nacquire(sys.argv[1], sys.argv[2])\n"
        "print('held', flush=True)\ntime.sleep(300)\n")


@pytest.fixture
def holder():
    """Start a process that owns a directory as a running train.py does; yields a function (dir, what) -> process."""
    import subprocess

    started = []

    def start(directory: Path, what: str = "run directory"):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory), what], stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[1])
        assert proc.stdout.readline().strip() == "held"
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def train_py(*args: str):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "LOCAL_RANK", "NODE_RANK", "RANK")}
    return subprocess.run([sys.executable, "train.py", *args], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_second_train_py_into_a_run_directory_is_refused_naming_the_owner(tmp_path, holder):
    run = tmp_path / "run"
    first = holder(run)
    second = train_py(f"hydra.run.dir={run}", f"data.root={tmp_path / 'no-data'}", "seed=1")
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert f"is in use by process {first.pid} on " in second.stderr and "hydra.run.dir=" in second.stderr, second.stderr
    assert not (run / ".hydra").exists()  # refused before Hydra wrote its record: nothing of seed=1 is filed there
    first.kill()
    first.wait()  # the owner died (killed, as a run to be resumed): the directory is free again
    again = train_py(f"hydra.run.dir={run}", f"data.root={tmp_path / 'no-data'}", "seed=1")
    assert "is in use by" not in again.stderr and "Seed set to 1" in again.stderr, again.stderr[-2000:]  # it went on to work


def test_a_second_sweep_into_a_sweep_directory_is_refused(tmp_path, holder):
    sweep = tmp_path / "sweep"
    first = holder(sweep, "sweep directory")
    second = train_py("-m", f"hydra.sweep.dir={sweep}", f"data.root={tmp_path / 'no-data'}", "seed=0,1")
    assert second.returncode == 2 and f"is in use by process {first.pid}" in second.stderr, second.stderr[-2000:]
    assert "hydra.sweep.dir=" in second.stderr and not (sweep / "multirun.yaml").exists()


def test_a_job_directory_owned_by_another_process_is_refused_in_process(tmp_path, holder, monkeypatch):
    from covidnet.rundirs import run_lock
    from covidnet.rundirs.runs import RunDirError
    from covidnet.apps.train import train

    run = tmp_path / "job"
    first = holder(run)
    cfg = compose_train([f"data.root={tmp_path / 'no-data'}", f"paths.output_dir={run}"])
    with pytest.raises(RunDirError, match=f"in use by process {first.pid}"):
        train(cfg)  # a multirun job (its lock is taken in train) is refused before any data is read
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP rank Lightning started into the run it belongs to: not refused
    assert run_lock.acquire(run) is False
    monkeypatch.delenv("LOCAL_RANK")
    assert run_lock.acquire(tmp_path / "mine") and run_lock.acquire(tmp_path / "mine")  # re-entrant in one process
    run_lock.release(tmp_path / "mine")
    run_lock.release(tmp_path / "mine")


# --- every launch into one sweep directory is kept ----------------------------------------------------------------
def test_a_second_launch_into_a_sweep_directory_keeps_the_first_launchs_record(tmp_path):
    sweep = tmp_path / "sweep"
    common = [f"hydra.sweep.dir={sweep}", f"data.root={tmp_path / 'no-data'}", "data.download=false"]
    first = train_py("-m", *common, "seed=0,1")  # its jobs fail fast (no data): what matters is the record of the launch
    second = train_py("-m", *common, "seed=2")
    assert "is in use by" not in first.stderr + second.stderr, second.stderr[-2000:]
    kept = list((sweep / "launches").glob("multirun-*.yaml"))
    assert len(kept) == 1 and "seed: 0,1" in kept[0].read_text() + "seed: 0,1", kept
    assert "- seed=2" in (sweep / "multirun.yaml").read_text()
    from covidnet.report import load_sweep

    loaded = load_sweep(sweep)
    assert len(loaded.commands) == 2 and "seed=0,1" in loaded.commands[0] and "seed=2" in loaded.commands[1], loaded.commands
    assert sorted(r.seed for r in loaded.runs) == ["0", "1", "2"]  # the jobs of both launches
    text = (sweep / "report.md").read_text()
    assert "2 launches into this directory" in text and loaded.commands[0] in text and loaded.commands[1] in text


# --- interrupted evaluations: listed by the report, finished by the same command -------------------------------------
INTERRUPT_AT_THIRD_RESULT = """
import sys
import covidnet.rundirs.run_files as run_files
from covidnet.apps.evaluate import main
write, done = run_files.write_json, []
def interrupt_at_third_metrics(path, data):
    if str(path).endswith("metrics.json"):
        done.append(path)
        if len(done) == 3:
            raise KeyboardInterrupt  # what Ctrl-C raises, at a known place
    write(path, data)
run_files.write_json = interrupt_at_third_metrics
sys.argv = ["evaluate.py", *sys.argv[1:]]
main()
"""


def test_an_interrupted_evaluation_into_runs_is_listed_then_finished_by_the_same_command(tmp_path):
    import json
    import subprocess

    pytest.importorskip("pydicom")
    from fake_runs import make_run
    from synthetic_dicom import MD_FOLDERS, write_scans

    from covidnet.apps.evaluate import evaluate
    from covidnet.report import write_report
    from covidnet.rundirs.runs import RunDir

    scans = write_scans(tmp_path / "scans", MD_FOLDERS)
    (tmp_path / "semiseg" / "images").mkdir(parents=True)
    for n in range(4):
        __import__("PIL.Image").Image.new("L", (40, 40), 40 * n).save(tmp_path / "semiseg" / "images" / f"{n}.png")
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        run = make_run(sweep / f"seed={seed}", seed=seed)
        metrics = {**json.loads((run / "metrics.json").read_text()), "n_test_predictions": 4}
        RunDir(run).write_metrics(metrics)
        RunDir(run).write_predictions(["a.png", "b.png", "c.png", "d.png"], [1, 1, 0, 0], [0.9, 0.6, 0.4, 0.2])
    command = [f"ckpt={sweep}", "into_runs=true", "eval=[covid_ct_md,semiseg]", f"eval.covid_ct_md.root={scans}",
               f"eval.semiseg.root={tmp_path / 'semiseg'}", "eval.covid_ct_md.read.slice_labels=null", f"out_dir={tmp_path / 'out'}",
               "n_boot=100", "progress=false", f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_AT_THIRD_RESULT, *command], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if "Interrupted" in x]
    assert line.startswith("Interrupted: 1 of 4 evaluation(s) complete and kept; not finished: ") and "same command again" in line
    evals = {(s, n): sweep / f"seed={s}" / "eval" / n for s in (0, 1) for n in ("covid_ct_md", "semiseg")}
    assert [k for k, d in evals.items() if (d / "metrics.json").is_file()] == [(0, "covid_ct_md")]

    text = (write_report(sweep, n_boot=100)).read_text()
    assert "## Missing or incomplete evaluations on other sets" in text
    for seed, name in [(0, "semiseg"), (1, "covid_ct_md"), (1, "semiseg")]:
        assert f"| seed={seed} | {name} | incomplete" in text, text

    kept = (evals[(0, "covid_ct_md")] / "metrics.json").read_text()
    with __import__("hydra").initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = __import__("hydra").compose("evaluate", overrides=command[:-1])
    evaluate(cfg)  # the same command again: finishes what is missing, keeps what is complete
    assert all((d / "metrics.json").is_file() for d in evals.values())
    assert (evals[(0, "covid_ct_md")] / "metrics.json").read_text() == kept
    summary = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert len(summary) == len(set(summary)) and any("semiseg" in row for row in summary)
    assert not list((tmp_path / "out").glob("INCOMPLETE.*.json"))
    assert "Missing or incomplete evaluations" not in write_report(sweep, n_boot=100).read_text()


def test_a_training_stopped_after_writing_an_eval_set_resumes_and_keeps_it(synthetic_root, tmp_path):
    """Training's eval_sets keep a result the stopped run already wrote (the same checkpoint, set and computation)
    instead of refusing it after the whole resumed training: a stopped study resumes its job with ckpt_path=last."""
    import json

    from train_configs import tiny_cfg

    from covidnet.apps.train import train

    run = tmp_path / "run"
    sets = ["eval_sets=[covid_ct_test]", f"eval_data={synthetic_root.parent}"]
    train(tiny_cfg(synthetic_root, run, *sets))
    written = (run / "eval" / "covid_ct_test" / "metrics.json").read_text()
    (run / "metrics.json").unlink()  # stopped after the eval set was written, before the run's own metrics.json
    metrics = train(tiny_cfg(synthetic_root, run, *sets, "ckpt_path=last"))
    assert metrics["eval_sets"] and (run / "eval" / "covid_ct_test" / "metrics.json").read_text() == written
    assert json.loads(written)["bootstrap"] == {"n_boot": 2000, "seed": 0}


def test_an_evaluation_computed_otherwise_is_not_taken_for_the_same_one(tmp_path):
    """same_result compares how the numbers were computed, not only the checkpoint and the set."""
    import json

    from covidnet.rundirs.eval_lock import same_result

    d = tmp_path / "result"
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"checkpoint": "a.ckpt", "set_definition": {"kind": "folder"},
                                                "precision": {"precision": "bf16-mixed", "channels_last": True},
                                                "bootstrap": {"n_boot": 2000, "seed": 0}}))
    how = {"precision": "bf16-mixed", "channels_last": True, "bootstrap": {"n_boot": 2000, "seed": 0}}
    assert same_result(d, "a.ckpt", {"kind": "folder"}, how)
    assert not same_result(d, "a.ckpt", {"kind": "folder"}, {**how, "bootstrap": {"n_boot": 500, "seed": 0}})
    assert not same_result(d, "a.ckpt", {"kind": "folder"}, {**how, "precision": "32-true"})
    assert not same_result(d, "b.ckpt", {"kind": "folder"}, how)


def test_a_damaged_jobs_json_does_not_block_the_report_from_the_job_directories(sweep):
    """jobs.json is derived data: from the job directories the report rewrites it (only --from-predictions needs it)."""
    import json

    assert report(str(sweep))[0] == 0
    (sweep / "jobs.json").write_text((sweep / "jobs.json").read_text()[:50])
    code, err = report(str(sweep))
    assert code == 0, err
    assert json.loads((sweep / "jobs.json").read_text())["format"] == 1


def test_the_owner_record_goes_with_the_last_hold_of_the_lock(tmp_path):
    """A freed directory names no owner: a later refusal can never quote a process that has let go."""
    from covidnet.rundirs import run_lock

    d = tmp_path / "mine"
    assert run_lock.acquire(d) and run_lock.acquire(d)
    run_lock.release(d)
    assert (d / run_lock.OWNER_FILE).is_file()  # still held once
    run_lock.release(d)
    assert not (d / run_lock.OWNER_FILE).exists()
