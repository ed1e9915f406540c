import pytest

from covidnet.atomic import atomic_path, write_json


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"auroc": 0.5})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"auroc": 0.9')  # half written
            raise RuntimeError("killed")
    assert target.read_text().strip().endswith("}") and '"auroc": 0.5' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
