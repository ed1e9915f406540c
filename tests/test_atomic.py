import subprocess
import sys

import pytest

from covidnet.core.atomic import atomic_path, partial_name, remove_stale, write_json


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"auroc": 0.5})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"auroc": 0.9')  # half written
            raise RuntimeError("killed")
    assert target.read_text().strip().endswith("}") and '"auroc": 0.5' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_stale_temporaries_of_dead_writers_go_and_live_ones_stay(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    target = tmp_path / "last.ckpt"
    partial_name(target, dead_pid).write_text("half")
    partial_name(target, 1).write_text("live")  # pid 1 always runs: its writer may still be at work
    (tmp_path / f".covid-ct.download-{dead_pid}-abc").mkdir()
    (tmp_path / ".covid-ct.download-notapid").mkdir()
    remove_stale(tmp_path, ".covid-ct.download-")
    with atomic_path(target, durable=True) as tmp:
        tmp.write_text("whole")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".covid-ct.download-notapid", ".last.ckpt.1.partial", "last.ckpt"] and target.read_text() == "whole"
