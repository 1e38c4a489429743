"""Atomic writes, the JSON reader, JSONL with a torn last line, resumable optimiser state without pickle."""

import json
import os
from pathlib import Path

import pytest
import torch

from policytrim.errors import InputError
from policytrim.io import append_jsonl, atomic_directory, atomic_write_json, read_json, read_jsonl
from policytrim.train.checkpoint import optimizer_from_files, optimizer_to_files


def test_atomic_write_json_replaces_whole_file(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"x": 1})
    atomic_write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp files left behind


def test_atomic_directory_is_all_or_nothing(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "w").write_text("1")
    assert (target / "w").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "w").write_text("2")
            raise RuntimeError("crash while writing")
    assert (target / "w").read_text() == "1"  # the old checkpoint is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with pytest.raises(FileExistsError):
        with atomic_directory(target):
            pass


def test_atomic_directory_merges_into_an_existing_one_pinning_file_last(tmp_path, monkeypatch):
    target = tmp_path / "run"
    target.mkdir()
    (target / "other.txt").write_text("kept")
    (target / "weights").write_text("old")
    with atomic_directory(target, merge=True, last=("config",)) as tmp:
        (tmp / "config").write_text("new config")
        (tmp / "weights").write_text("new")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x").write_text("1")
    files = {p.name: p.read_text() for p in target.iterdir() if p.is_file()}
    assert files == {"other.txt": "kept", "weights": "new", "config": "new config"}
    assert (target / "sub" / "x").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["run"]

    moved = []  # the order entries are moved in: the pinning file last
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (moved.append(Path(b).name), real_replace(a, b)))
    with atomic_directory(target, merge=True, last=("config",)) as tmp:
        for name in ("config", "weights", "a_first_by_name"):
            (tmp / name).write_text(name)
    assert moved == ["a_first_by_name", "weights", "config"]
    monkeypatch.undo()

    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        with atomic_directory(tmp_path / "file", merge=True):
            pass


def test_read_json_says_what_is_wrong_in_one_error(tmp_path):
    path = tmp_path / "meta.json"
    assert read_json(path, missing_ok=True) is None
    with pytest.raises(InputError, match="meta.json is missing"):
        read_json(path)
    path.write_text('{"a": [1, 2]}')
    assert read_json(path) == {"a": [1, 2]}
    cases = {
        '{"a": ': r"^the file is not valid JSON \(Expecting value: line 1 column 7 \(char 6\)\): corrupt$",
        "[" * 100_000: r"^the file is not valid JSON \(nested too deeply\): corrupt$",
        "[1, 2]": r"^the file must hold a JSON object, got list$",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(InputError, match=message):
            read_json(path, name="the file", corrupt=": corrupt")
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(InputError, match=r"not valid JSON \(not UTF-8 text\)"):
        read_json(path)
    assert read_json(tmp_path / "x.json", kind=None, missing_ok=True) is None
    (tmp_path / "list.json").write_text("[1]")
    assert read_json(tmp_path / "list.json", kind=list) == [1]
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(InputError, match="is not a file"):
        read_json(tmp_path / "dir.json", missing_ok=True)


def test_jsonl_ignores_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"epoch": 1})
    append_jsonl(path, {"epoch": 2})
    with open(path, "a") as f:
        f.write('{"epoch": 3, "succ')  # a write cut off by kill -9
    assert [r["epoch"] for r in read_jsonl(path)] == [1, 2]


def test_optimizer_state_round_trip_without_pickle():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.99))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
    tensors, meta = optimizer_to_files(opt)
    meta = json.loads(json.dumps(meta))  # must be plain JSON
    clone = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    clone.load_state_dict(model.state_dict())
    opt2 = torch.optim.Adam(clone.parameters(), lr=5.0)
    optimizer_from_files(opt2, tensors, meta)
    assert opt2.param_groups[0]["lr"] == 1e-3 and opt2.param_groups[0]["betas"] == (0.8, 0.99)
    x = torch.randn(5, 3)
    for m, o in ((model, opt), (clone, opt2)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(p, q)
