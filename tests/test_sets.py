"""covidnet.data.sets: the catalogue of named sets is read where covidnet.core.configs finds the configs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import covidnet.data.sets as sets
from covidnet.core.configs import config_dir
from covidnet.core.errors import EvalError


def test_the_catalogue_follows_config_dir_not_the_source_tree(tmp_path, monkeypatch):
    """An installed wheel has its configs in covidnet/conf, not in <checkout>/conf: the sets must be looked up in
    config_dir(), whatever it answers (a path computed from the module's location found the checkout's folder)."""
    conf = tmp_path / "installed" / "conf"
    (conf / "eval").mkdir(parents=True)
    shutil.copy(config_dir() / "eval" / "semiseg.yaml", conf / "eval" / "only_here.yaml")
    monkeypatch.setattr(sets, "config_dir", lambda: conf)
    assert sets.known_sets() == ["only_here"]
    assert sets.set_config("only_here", eval_data="/d").root == "/d/covid-semiseg"
    with pytest.raises(EvalError, match="Known sets: only_here"):
        sets.set_config("semiseg")  # in the checkout's conf/, not in the configs in use


def test_set_names_accept_a_list_or_a_comma_separated_string():
    assert sets.set_names("a, b,") == ["a", "b"] and sets.set_names(["a"]) == ["a"] and sets.set_names(None) == []


def test_held_out_scores_every_record_of_a_set_the_model_was_not_trained_on(tmp_path):
    s = sets.EvalSet("x", "folder", Path(tmp_path), [], [], 5)
    assert sets.held_out(s, {"sources": ["covid_ct"]}) == ([], None)
