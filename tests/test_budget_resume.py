"""``budget_curve(checkpoint=...)``: an interrupted curve resumes where it stopped, with the same result."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from _eval_helpers import tiny_budget

import c2lst.tl._predict
from c2lst.tl._budget_resume import FINGERPRINT_FILE, RUNS_FILE, RunLog

FIT = c2lst.tl._predict.fit_predictor  # the real one, before any test replaces it


class Interrupted(RuntimeError):
    pass


def _interrupt_after(monkeypatch, n_fits: int) -> list[int]:
    """Make the ``n_fits + 1``-th predictor fit raise, as a killed process would stop; returns the fit counter."""
    calls = [0]

    def fit(*args, **kwargs):
        calls[0] += 1
        if calls[0] > n_fits:
            raise Interrupted
        return FIT(*args, **kwargs)

    monkeypatch.setattr(c2lst.tl._predict, "fit_predictor", fit)
    return calls


def _lines(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / RUNS_FILE).read_text().splitlines()]


@pytest.mark.slow
def test_budget_curve_resumes_an_interrupted_curve_with_the_same_result(sim_sdata, tiny_central, tmp_path,
                                                                        monkeypatch):
    central, _ = tiny_central
    reference = tiny_budget(sim_sdata, central, n_repeats=2)  # per repeat 0.5: real, real+synthetic; 1.0: real
    ckpt = tmp_path / "curve"
    _interrupt_after(monkeypatch, 4)  # repeat 0 (3 fits) and the first fit of repeat 1's 0.5 run
    with pytest.raises(Interrupted):
        tiny_budget(sim_sdata, central, checkpoint=ckpt, n_repeats=2)
    assert [(run["repeat"], run["fraction"]) for run in _lines(ckpt)] == [(0, 0.5), (0, 1.0)]
    json.loads((ckpt / FINGERPRINT_FILE).read_text())  # the fingerprint is plain JSON

    calls = _interrupt_after(monkeypatch, 10_000)
    resumed = tiny_budget(sim_sdata, central, checkpoint=ckpt, n_repeats=2)
    assert calls[0] == 3  # repeat 1 only: the two finished runs were read back, not fitted again
    pd.testing.assert_frame_equal(resumed, reference)
    assert len(_lines(ckpt)) == 4

    # a finished curve is read back whole; a larger n_repeats runs only the new repeat
    pd.testing.assert_frame_equal(tiny_budget(sim_sdata, central, checkpoint=ckpt, n_repeats=2), reference)
    assert calls[0] == 3
    three = tiny_budget(sim_sdata, central, checkpoint=ckpt, n_repeats=3)
    assert calls[0] == 6
    pd.testing.assert_frame_equal(three[three["repeat"] < 2].reset_index(drop=True), reference)


@pytest.mark.slow
def test_budget_checkpoint_redoes_a_run_whose_write_was_cut_and_refuses_an_edited_log(sim_sdata, tiny_central, tmp_path, monkeypatch):
    central, _ = tiny_central
    ckpt = tmp_path / "curve"
    kw = {"n_repeats": 1, "fractions": (0.5, 1.0)}
    reference = tiny_budget(sim_sdata, central, checkpoint=ckpt, **kw)
    runs = ckpt / RUNS_FILE
    first, second = runs.read_text().splitlines()
    runs.write_text(first + "\n" + second[: len(second) // 2])  # killed in the middle of the last write
    calls = _interrupt_after(monkeypatch, 10_000)
    pd.testing.assert_frame_equal(tiny_budget(sim_sdata, central, checkpoint=ckpt, **kw), reference)
    assert calls[0] == 1  # only the cut run (1.0: real) was fitted again
    assert runs.read_text().splitlines() == [first, second]
    runs.write_text("garbage\n" + second + "\n")  # a finished line that is not a run: edited, not cut
    with pytest.raises(ValueError, match=r"line 1 of runs\.jsonl"):
        tiny_budget(sim_sdata, central, checkpoint=ckpt, **kw)


@pytest.mark.slow
def test_budget_checkpoint_refuses_another_configuration(sim_sdata, tiny_central, tmp_path):
    central, _ = tiny_central
    ckpt = tmp_path / "curve"
    tiny_budget(sim_sdata, central, checkpoint=ckpt, n_repeats=1)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    with pytest.raises(ValueError, match=r"differs in \['seed'\]"):
        tiny_budget(sim_sdata, central, checkpoint=ckpt, n_repeats=1, seed=3)
    with pytest.raises(ValueError, match=r"adapt_kwargs"):
        tiny_budget(sim_sdata, central, checkpoint=ckpt, n_repeats=1, adapt_kwargs={"n_steps": 3, "batch_size": 8})
    table = sim_sdata.tables["table"]
    table.obsm["c2lst_patch"] = table.obsm["c2lst_patch"].copy()
    table.obsm["c2lst_patch"][0] = 0  # another slide (or edited patches): its runs do not mix in
    with pytest.raises(ValueError, match=r"differs in \['slide'\]"):
        tiny_budget(sim_sdata, central, checkpoint=ckpt, n_repeats=1)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before  # nothing overwritten


def test_budget_checkpoint_bad_input(sim_sdata, tiny_central, tmp_path):
    central, _ = tiny_central
    a_file = tmp_path / "curve.csv"
    a_file.write_text("x\n")
    with pytest.raises(ValueError, match="is a file"):
        tiny_budget(sim_sdata, central, checkpoint=a_file)
    other = tmp_path / "results"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a budget_curve checkpoint"):
        tiny_budget(sim_sdata, central, checkpoint=other)
    with pytest.raises(TypeError, match="checkpoint"):
        tiny_budget(sim_sdata, central, checkpoint=3)
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="fractions"):  # bad input is refused before the folder is made
        tiny_budget(sim_sdata, central, checkpoint=fresh, fractions=(0.0, 1.0))
    assert not fresh.exists()
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    cut = tmp_path / "cut"  # killed between the fingerprint's temporary file and its rename: still ours
    cut.mkdir()
    (cut / FINGERPRINT_FILE).with_suffix(".tmp").write_text("{")
    assert RunLog.open(cut, {"seed": 0}).done == {}
    broken = tmp_path / "broken"
    broken.mkdir()
    for text in ("{not json", "[1, 2]"):
        (broken / FINGERPRINT_FILE).write_text(text)
        with pytest.raises(ValueError, match="unreadable"):
            tiny_budget(sim_sdata, central, checkpoint=broken)


def test_budget_checkpoint_two_writers_on_one_folder(tmp_path):
    """Two calls on one folder: the second append is refused before it writes, and appends are serialised."""
    folder = tmp_path / "shared"
    rows = [{"condition": "real", "pearson_r": 0.5}]
    first, second = RunLog.open(folder, {"seed": 0}), RunLog.open(folder, {"seed": 0})  # both before any run
    first.add(0, 0.5, rows)
    with pytest.raises(RuntimeError, match="another call appended"):
        second.add(0, 0.5, rows)  # the same run again: it would be logged twice
    assert len(_lines(folder)) == 1
    first.add(0, 1.0, rows)  # the first writer carries on
    assert RunLog.open(folder, {"seed": 0}).done.keys() == {(0, 0.5), (0, 1.0)}

    other = RunLog.open(tmp_path / "race", {"seed": 1})  # another configuration, opened while the folder was new
    RunLog.open(tmp_path / "race", {"seed": 0}).add(0, 0.5, rows)
    with pytest.raises(RuntimeError, match="another configuration"):
        other.add(0, 0.5, rows)
    assert json.loads((tmp_path / "race" / FINGERPRINT_FILE).read_text())["seed"] == 0
    assert len(_lines(tmp_path / "race")) == 1

    cut = tmp_path / "cut"  # killed after creating the log but before the fingerprint landed: still ours
    cut.mkdir()
    (cut / RUNS_FILE).touch()
    RunLog.open(cut, {"seed": 0}).add(0, 0.5, rows)
    assert len(_lines(cut)) == 1


def test_budget_checkpoint_append_waits_for_the_lock(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    import threading

    log = RunLog.open(tmp_path / "locked", {"seed": 0})
    (tmp_path / "locked").mkdir()
    with open(tmp_path / "locked" / RUNS_FILE, "ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # another process in the middle of its append
        writer = threading.Thread(target=log.add, args=(0, 0.5, [{"pearson_r": 0.5}]))
        writer.start()
        writer.join(timeout=0.5)
        assert writer.is_alive()  # blocked on the lock, not writing
        assert (tmp_path / "locked" / RUNS_FILE).stat().st_size == 0
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
        writer.join()
    assert len(_lines(tmp_path / "locked")) == 1
