"""The command-line apps: one ``main`` per app behind both a checkout's script (train.py, evaluate.py,
visualize.py) and the installed console script (covidnet-train, ...), wired to Hydra by covidnet.apps.cli."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
APPS = ("train", "evaluate", "visualize")


def console_script(name: str):
    """What pyproject.toml's [project.scripts] entry ``name`` runs (``module:attribute``), imported."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"][name]
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def checkout_script(app: str):
    """The top-level ``<app>.py`` as a module (not run: its ``if __name__ == "__main__"`` stays off)."""
    spec = importlib.util.spec_from_file_location(f"{app}_script", ROOT / f"{app}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("app", APPS)
def test_console_script_and_checkout_script_run_the_same_main(app):
    assert checkout_script(app).main is console_script(f"covidnet-{app}")


def test_covidnet_train_returns_no_auroc_for_an_untested_run(monkeypatch, tmp_path):
    """metrics.json records ``"test": null`` when no best checkpoint was saved (fast_dev_run): the console
    script must end normally then, as train.py does (it failed with AttributeError on None.get)."""
    import covidnet.apps.train

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}"])
    main = console_script("covidnet-train")
    monkeypatch.setattr(covidnet.apps.train, "train", lambda cfg: {"test": None, "not_tested": "no best checkpoint"})
    assert main(cfg) is None
    monkeypatch.setattr(covidnet.apps.train, "train", lambda cfg: {"test": {"test/auroc": 0.75}})
    assert main(cfg) == 0.75


def run_script(app: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COVIDNET_LOGS": str(cwd / "logs")}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("COVIDNET_DEBUG", None)
    return subprocess.run([sys.executable, str(ROOT / f"{app}.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_evaluate_py_reads_eval_a_b_as_a_list_of_sets(tmp_path):
    done = run_script("evaluate", "--cfg", "job", "ckpt=x.ckpt", "eval=covid_ct_md,semiseg", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "covid_ct_md:" in done.stdout and "semiseg:" in done.stdout  # both sets composed, no sweep asked for


@pytest.mark.slow
def test_a_script_writes_hydra_outputs_under_its_task_name_and_shows_a_user_error_alone(tmp_path):
    done = run_script("visualize", f"ckpt={tmp_path / 'missing.ckpt'}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("Error: ") and "Traceback" not in done.stderr
    (record,) = (tmp_path / "logs" / "visualize" / "runs").glob("*/.hydra/config.yaml")
    assert "task_name: visualize" in record.read_text()


def test_resolvers_are_registered_by_the_apps_main_not_by_an_import():
    """Importing an app, the Hydra callbacks or the resume check registers no resolver (an import's side effect
    works only while that import happens to come first); ``register_resolvers`` does, and every app's ``main``
    calls it before Hydra reads conf/hydra (its output_subdir and sweep subdir use them)."""
    code = (
        "import inspect\n"
        "from omegaconf import OmegaConf\n"
        "import covidnet.apps.train, covidnet.apps.evaluate, covidnet.apps.visualize, covidnet.trained.resume, covidnet.apps.hydra_callbacks\n"
        "from covidnet.apps import cli; from covidnet.rundirs import hydra_resolvers\n"
        "names = list(hydra_resolvers.RESOLVERS)\n"
        "assert names == ['covidnet_record', 'covidnet_job_dir'], names\n"
        "assert not any(OmegaConf.has_resolver(n) for n in names), 'registered on import'\n"
        "assert 'register_resolvers()' in inspect.getsource(cli.hydra_app)\n"
        "hydra_resolvers.register_resolvers(); hydra_resolvers.register_resolvers()  # twice: no error\n"
        "assert all(OmegaConf.has_resolver(n) for n in names)\n"
        "cfg = OmegaConf.create({'o': 'data/source_aug=default,seed=1', 'd': '${covidnet_job_dir:${o}}'})\n"
        "assert cfg.d == 'data.source_aug=default,seed=1', cfg.d\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
