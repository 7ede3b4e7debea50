"""The one settings guard (`diff2in1.run_settings`): recorded settings, compared with paths resolved."""

from __future__ import annotations

import json

import pytest

from diff2in1.errors import InputError
from diff2in1.run_settings import (
    TRAINING_FREE,
    changed_settings,
    check_recorded,
    check_settings,
    read_settings,
    record_settings,
)


def test_paths_compare_resolved_and_free_settings_may_change(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    recorded = {"data": "./data/", "lr": 0.001, "epochs": 2, "create": {"steps": 50, "out": "a"}}
    same = {"data": str(tmp_path / "data"), "lr": 0.001, "epochs": 9, "create": {"steps": 50, "out": "b"}}
    assert changed_settings(recorded, same, free=TRAINING_FREE) == []  # epochs and any section's out
    other = {**same, "lr": 0.01, "create": {"steps": 12, "out": "b"}}
    assert changed_settings(recorded, other, free=TRAINING_FREE) == ["lr", "create.steps"]
    assert changed_settings(recorded, other, only=["data", "create.steps"]) == ["create.steps"]
    assert changed_settings({"x": 1}, {"x": 1, "new": None}) == []  # a setting missing reads as None
    assert changed_settings({"x": 1}, {"x": 1, "new": 3}) == ["new"]


def test_refusal_is_one_line_naming_each_setting():
    with pytest.raises(InputError) as e:
        check_settings(
            {"seed": 1, "fp": "a"},
            {"seed": 2, "fp": "b"},
            "out: made with other settings",
            "use another --out",
            labels={"fp": "head weights"},
        )
    assert str(e.value) == (
        "out: made with other settings (seed: 1 -> 2, head weights: 'a' -> 'b'); use another --out"
    )
    check_settings({"seed": 1}, {"seed": 1}, "never")  # the same settings: nothing raised


def test_record_and_read_json_and_yaml(tmp_path):
    assert read_settings(tmp_path / "none.json") is None
    record_settings(tmp_path / "s.json", {"a": [1, 2], "b": "x"})
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": [1, 2], "b": "x"}  # the format on disk
    assert read_settings(tmp_path / "s.json") == {"a": [1, 2], "b": "x"}
    record_settings(tmp_path / "c.yaml", {"a": (1, 2)}, header="# made by a test\n")
    assert (tmp_path / "c.yaml").read_text().startswith("# made by a test\n")
    assert changed_settings(read_settings(tmp_path / "c.yaml"), {"a": (1, 2)}) == []  # tuple = list
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match=r"bad.json: unreadable .*; use another --out"):
        read_settings(tmp_path / "bad.json", hint="use another --out")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(InputError, match="list.yaml: a config file must be a mapping"):  # the config reader's
        read_settings(tmp_path / "list.yaml")


def test_check_recorded_compares_an_existing_record_only(tmp_path):
    path = tmp_path / "create_config.json"
    assert not check_recorded(path, {"seed": 1}, "refused")  # nothing recorded yet
    path.write_text(json.dumps({"seed": 1, "batch_size": 4}, indent=1))  # as create-data writes it
    assert check_recorded(path, {"seed": 1, "batch_size": 8}, "refused", only=["seed"])
    with pytest.raises(InputError, match=r"^refused \(seed: 1 -> 2\); hint$"):
        check_recorded(path, {"seed": 2}, "refused", "hint", only=["seed"])


def test_a_record_made_before_a_setting_existed_counts_it_as_its_default(tmp_path):
    from dataclasses import dataclass

    import yaml

    from diff2in1.training.run_folder import RunDir

    @dataclass
    class Cfg:
        data: str = "d"
        backbone: str = "b"
        out: str = str(tmp_path / "run")
        seed: int = 0
        lr: float = 0.1
        weighting: str = "research"  # a setting newer than the record below

    run = RunDir(tmp_path / "run")
    (run.state_dir).mkdir(parents=True)
    (run.state_dir / "state.json").write_text("{}")
    old = {"data": "d", "backbone": "b", "out": str(tmp_path / "run"), "seed": 0, "lr": 0.1}
    run.config_path.write_text(yaml.safe_dump(old))  # written before `weighting` existed
    run.check(Cfg(), resume=True)  # at its default: the old run resumes
    with pytest.raises(InputError, match=r"weighting: None -> 'other'"):
        run.check(Cfg(weighting="other"), resume=True)
