"""Cohort inference: shards cover every input once, interrupted runs resume, reports merge."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from napari_covid_seg import cli  # noqa: E402
from napari_covid_seg._commands import segment as segment_cmd  # noqa: E402
from napari_covid_seg.inference import cohort  # noqa: E402
from napari_covid_seg.io import write_volume  # noqa: E402
from napari_covid_seg.io.phantom import make_phantom  # noqa: E402
from napari_covid_seg.models import build_model  # noqa: E402
from napari_covid_seg.models.checkpoint import save_model_version  # noqa: E402

PP = {"input_size": 32, "window": [-1350.0, 150.0], "n_channels": 3, "threshold": 0.5}
N_CASES = 5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("unet", encoder_channels=(4, 8, 8, 8, 8), decoder_channels=(8, 8, 8, 8, 8))
    folder = tmp_path_factory.mktemp("models") / "tiny"
    return save_model_version(folder, model, preprocessing=PP, name="tiny", version="v1")


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    """Five small synthetic CTs, named out of order."""
    d = tmp_path_factory.mktemp("cohort")
    for k in range(N_CASES):
        img, _ = make_phantom(shape=(4, 48, 48), seed=k)
        write_volume(d / f"case{(k * 3) % N_CASES}.nii.gz", img.data, like=img)
    return d


def segment(*args) -> int:
    return cli.main(["segment", *map(str, args), "-q", "--device", "cpu"])


def masks(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*_lesions.nii.gz"))


def cases_of(report: Path) -> dict[str, dict]:
    return {r["case"]: r for r in json.loads(report.read_text())["cases"]}


ALL = [f"case{k}" for k in range(N_CASES)]


def test_two_shards_cover_every_file_exactly_once_and_merge(
    cohort_dir, model_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    for i in (1, 0):
        assert segment(cohort_dir, "-o", out, "--model", model_dir, "--shard", f"{i}/2") == 0
    err = capsys.readouterr().err
    assert "shard 0/2 (--shard): 3 of 5 input(s)" in err and "shard 1/2 (--shard): 2 of 5" in err
    s0 = cases_of(out / "segment_report.shard-0-of-2.json")
    s1 = cases_of(out / "segment_report.shard-1-of-2.json")
    assert set(s0) | set(s1) == set(ALL) and not set(s0) & set(s1)
    assert sorted(s0) == ["case0", "case2", "case4"]  # every 2nd of the sorted inputs
    assert masks(out) == [f"{c}_lesions.nii.gz" for c in ALL]
    row = s0["case2"]
    assert row["status"] == "ok" and row["model"] == "tiny" and row["model_version"] == "v1"
    assert len(row["model_sha256"]) == 64 and row["shard"] == "0/2"
    assert row["lesion_ml"] is not None and row["lung_mask_status"] in ("ok", "skipped", "off")
    assert isinstance(row["n_lesions"], int) and isinstance(row["slices"], int)
    assert row["inference_s"] >= 0 and row["read_s"] >= 0 and row["total_s"] > 0
    csv_lines = (out / "segment_report.shard-1-of-2.csv").read_text().splitlines()
    assert csv_lines[0].startswith("case,input,status,error,lesion_ml") and len(csv_lines) == 3
    # the merged report lists every case
    assert cli.main(["report", str(out)]) == 0
    assert capsys.readouterr().out.startswith("5 case(s): 5 segmented, 0 with earlier outputs")
    merged = json.loads((out / "cohort_report.json").read_text())
    assert [r["case"] for r in merged["cases"]] == ALL
    assert merged["shards_seen"] == ["0/2", "1/2"] and merged["shards_missing"] == []
    assert len((out / "cohort_report.csv").read_text().splitlines()) == N_CASES + 1


def test_missing_shard_is_reported(cohort_dir, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert segment(cohort_dir, "-o", out, "--model", model_dir, "--shard", "2/3") == 0
    assert cli.main(["report", str(out)]) == 1
    captured = capsys.readouterr()
    assert "no report from shard(s) 0/3, 1/3" in captured.out
    assert "no report from shard 0/3" in captured.err
    assert cli.main(["report", str(tmp_path / "empty_does_not_exist")]) == 1
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty")]) == 1
    assert "no segment report" in capsys.readouterr().err


def test_shard_from_slurm_and_torchrun_environment(
    cohort_dir, model_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    out = tmp_path / "out"
    assert segment(cohort_dir, "-o", out, "--model", model_dir) == 0
    assert "shard 1/2 (SLURM_ARRAY_TASK_ID)" in capsys.readouterr().err
    assert masks(out) == ["case1_lesions.nii.gz", "case3_lesions.nii.gz"]
    # an explicit --shard wins over the environment
    assert segment(cohort_dir, "-o", out, "--model", model_dir, "--shard", "0/1") == 0
    assert masks(out) == [f"{c}_lesions.nii.gz" for c in ALL]

    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert cohort.shard_from_env(env) == cohort.Shard(3, 4, "torchrun RANK/WORLD_SIZE")
    assert cohort.shard_from_env({}) == cohort.Shard()
    with pytest.raises(ValueError, match="contiguous"):
        cohort.shard_from_env({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "2"})
    from napari_covid_seg.inference import device as devices

    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    assert cohort.torchrun_device("auto", env) == "cuda:1"
    assert cohort.torchrun_device("cpu", env) == "cpu"
    assert cohort.torchrun_device("auto", {}) == "auto"
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    assert cohort.torchrun_device("auto", env) == "auto"


def test_parse_shard_and_bad_values(tmp_path):
    assert cohort.parse_shard("1/4") == cohort.Shard(1, 4, "--shard")
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError):
            cohort.parse_shard(bad)
    with pytest.raises(SystemExit):
        segment("--sample", "-o", tmp_path, "--shard", "2/2")


def test_interrupted_run_resumes(cohort_dir, model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    done: list[int] = []
    original = segment_cmd._segment_one

    def interrupt_third(name, volume, predictor, args):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(1)
        return original(name, volume, predictor, args)

    monkeypatch.setattr(segment_cmd, "_segment_one", interrupt_third)
    assert segment(cohort_dir, "-o", out, "--model", model_dir) == 130
    first = masks(out)
    assert len(first) == 2 and len(cases_of(out / "segment_report.json")) == 2
    mtimes = {p: (out / p).stat().st_mtime_ns for p in first}
    monkeypatch.setattr(segment_cmd, "_segment_one", original)
    capsys.readouterr()
    assert segment(cohort_dir, "-o", out, "--model", model_dir) == 0
    assert "2 input(s) already segmented" in capsys.readouterr().err
    assert masks(out) == [f"{c}_lesions.nii.gz" for c in ALL]
    assert all((out / p).stat().st_mtime_ns == t for p, t in mtimes.items())  # not redone
    rows = cases_of(out / "segment_report.json")
    assert sorted(rows) == ALL and {r["status"] for r in rows.values()} == {"ok"}
    assert all(rows[p.split("_")[0]]["lesion_ml"] is not None for p in first)  # kept numbers
    # without any earlier report the mask on disk gives the lesion volume
    for f in out.glob("segment_report*"):
        f.unlink()
    assert segment(cohort_dir, "-o", out, "--model", model_dir) == 0
    rows = cases_of(out / "segment_report.json")
    assert {r["status"] for r in rows.values()} == {"exists"}
    assert all(r["lesion_ml"] is not None for r in rows.values())
    # --overwrite redoes them
    assert segment(cohort_dir, "-o", out, "--model", model_dir, "--overwrite") == 0
    assert {r["status"] for r in cases_of(out / "segment_report.json").values()} == {"ok"}


def test_bad_file_is_reported_and_the_run_continues(cohort_dir, model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("case0.nii.gz", "case1.nii.gz"):
        (folder / name).write_bytes((cohort_dir / name).read_bytes())
    (folder / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    (folder / "empty.nii").write_bytes(b"")
    out = tmp_path / "out"
    assert segment(folder, "-o", out, "--model", model_dir) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "bad.nii.gz" in err and "2 of 4 input(s) failed" in err
    assert masks(out) == ["case0_lesions.nii.gz", "case1_lesions.nii.gz"]
    rows = cases_of(out / "segment_report.json")
    assert {k: r["status"] for k, r in rows.items()} == {
        "bad": "error",
        "case0": "ok",
        "case1": "ok",
        "empty": "error",
    }
    assert rows["bad"]["error"] and rows["bad"]["lesion_ml"] is None
    assert cli.main(["report", str(out)]) == 1
    captured = capsys.readouterr()
    assert "2 failed" in captured.out and "failed: bad:" in captured.err


def test_an_unexpected_error_in_one_case_does_not_end_the_run(
    cohort_dir, model_dir, tmp_path, monkeypatch, capsys
):
    original = segment_cmd._segment_one

    def flaky(name, volume, predictor, args):
        if name == "case1":
            raise RuntimeError("something odd")
        return original(name, volume, predictor, args)

    monkeypatch.setattr(segment_cmd, "_segment_one", flaky)
    out = tmp_path / "out"
    assert segment(cohort_dir, "-o", out, "--model", model_dir, "--no-prefetch") == 1
    assert "error: " in capsys.readouterr().err
    rows = cases_of(out / "segment_report.json")
    assert rows["case1"]["error"] == "RuntimeError: something odd"
    assert sum(r["status"] == "ok" for r in rows.values()) == N_CASES - 1


def test_same_output_name_twice_is_an_error_not_an_overwrite(
    cohort_dir, model_dir, tmp_path, capsys
):
    (tmp_path / "x").mkdir()
    other = tmp_path / "x" / "case0.nii"
    other.write_bytes(b"never read")
    out = tmp_path / "out"
    assert segment(cohort_dir / "case0.nii.gz", other, "-o", out, "--model", model_dir) == 1
    assert "same output name 'case0'" in capsys.readouterr().err
    rows = cases_of(out / "segment_report.json")
    assert rows["case0"]["status"] == "ok" and rows["case0"]["input"].endswith("case0.nii.gz")
    assert rows[str(other)]["status"] == "error"


def test_prefetcher_reads_the_next_item_while_the_current_one_runs():
    started: dict[int, float] = {}
    threads: set[str] = set()
    loading_next = threading.Event()

    def load(k: int) -> int:
        started[k] = time.perf_counter()
        threads.add(threading.current_thread().name)
        if k == 1:
            loading_next.set()
        if k == 2:
            raise ValueError("unreadable")
        return k * 10

    got = []
    for loaded in cohort.Prefetcher([0, 1, 2, 3], load):
        if loaded.item == 0:
            # item 1 is read while item 0 is being processed
            assert loading_next.wait(10)
        got.append((loaded.item, loaded.value, type(loaded.error).__name__))
    assert got == [
        (0, 0, "NoneType"),
        (1, 10, "NoneType"),
        (2, None, "ValueError"),
        (3, 30, "NoneType"),
    ]
    assert all(name.startswith("cohort-read") for name in threads)
    plain = [(x.item, x.value) for x in cohort.Prefetcher([0, 1], load, enabled=False)]
    assert plain == [(0, 0), (1, 10)]
    assert list(cohort.Prefetcher([], load)) == []
