"""The fine-tuning subprocess: JSON events, registration, SIGTERM, clear errors.

A tiny U-Net (input 64) is fine-tuned on one exported phantom case, so each
subprocess run takes a few seconds on a 2-core CPU.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_covid_seg.io.dataset_export import export_case  # noqa: E402
from napari_covid_seg.io.phantom import make_phantom  # noqa: E402
from napari_covid_seg.models.store import ModelStore  # noqa: E402
from napari_covid_seg.training import worker  # noqa: E402

TINY_UNET = {"encoder_channels": [8, 16, 16, 32, 32], "decoder_channels": [32, 16, 16, 8, 8]}


def make_tiny_base(folder: Path, name: str = "tiny-base", seed: int = 0) -> Path:
    """A freshly initialised tiny U-Net saved as a model version (input size 64)."""
    from napari_covid_seg.inference.preprocess import default_preprocessing
    from napari_covid_seg.models import build_model
    from napari_covid_seg.models.checkpoint import save_model_version

    torch.manual_seed(seed)
    model = build_model("unet", **TINY_UNET)
    pre = default_preprocessing()
    pre["input_size"] = 64
    return save_model_version(
        folder,
        model,
        preprocessing=pre,
        provenance={"note": "test"},
        metrics={"val_dice": 0.5},
        name=name,
    )


def make_phantom_dataset(folder: Path, seed: int = 0, n_slices: int = 12) -> Path:
    """One exported phantom case (nnU-Net v2 raw) with every slice marked reviewed."""
    image, truth = make_phantom(shape=(n_slices, 64, 64), spacing=(2.5, 5.0, 5.0), seed=seed)
    export_case(
        folder, image, truth.data, case_id=f"phantom{seed}", reviewed_slices=range(n_slices)
    )
    return folder


def worker_cmd(*args: str) -> list[str]:
    """The worker's command line; fp32 (bf16 autocast is slower for a model this small)."""
    return [sys.executable, "-m", "napari_covid_seg.training.worker", "--amp", "off", *args]


def parse_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def user_versions() -> list:
    return [i for i in ModelStore().list() if not i.bundled]


@pytest.fixture
def base_and_data(tmp_path):
    return make_tiny_base(tmp_path / "base"), make_phantom_dataset(tmp_path / "data")


def test_worker_emits_json_lines_and_registers_child(base_and_data, tmp_path):
    base, data = base_and_data
    proc = subprocess.run(
        worker_cmd(
            "--base",
            str(base),
            "--data",
            str(data),
            "--epochs",
            "2",
            "--lr",
            "3e-3",
            "--device",
            "cpu",
            "--name",
            "tiny-ft",
            "--seed",
            "1",
            "--min-samples-per-epoch",
            "16",
        ),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = parse_lines(proc.stdout)  # every stdout line is one JSON object
    kinds = [e["event"] for e in events]
    assert kinds[0] == "loading" and kinds[1] == "start" and kinds[-1] == "done"
    # 12 slices -> ~10 training slices, resampled to 8 passes (at most 64) per epoch: 8 batches
    assert events[1]["samples_per_epoch"] == 64 and events[1]["lr"] == 3e-3
    assert {e["batches"] for e in events if e["event"] == "batch"} == {8}
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert e["epochs"] == 2 and math.isfinite(e["train_loss"]) and 0 <= e["val_dice"] <= 1
        assert e["seconds_left"] >= 0 and math.isfinite(e["val_loss"])
    assert epochs[-1]["seconds_left"] == 0
    done = events[-1]
    assert done["name"] == "tiny-ft" and done["parent"] == "tiny-base"
    assert done["stopped"] == "completed" and done["epochs_run"] == 2
    # registered in the per-test store (NAPARI_COVID_SEG_HOME), with the base as parent
    [info] = user_versions()
    assert info.name == "tiny-ft" and info.parent == "tiny-base"
    assert Path(done["path"]) == info.path
    assert info.metrics["val_dice"] == pytest.approx(done["metrics"]["val_dice"])
    # old vs new on the same validation slices, by the same code
    cmp = done["comparison"]
    assert cmp["n_slices"] == done["split"]["n_val"] >= 1
    assert cmp["old_dice"] == done["base_metrics"]["dice"]
    assert cmp["new_dice"] == pytest.approx(done["metrics"]["val_dice"], abs=0.02)
    assert all(v.startswith("phantom0:z=") for v in cmp["val_ids"])
    assert done["base_recorded_metrics"]["val_dice"] == 0.5
    # the run folder keeps the record but not duplicate weights
    run_dir = Path(done["run_dir"])
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "result.json").is_file()
    assert not (run_dir / "best").exists() and not (run_dir / "last").exists()
    assert run_dir.parent == Path(os.environ["NAPARI_COVID_SEG_HOME"]) / "runs"


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        worker_cmd(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
    )


def _read_until(proc: subprocess.Popen, kind: str) -> list[dict]:
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == kind:
            return events
    raise AssertionError(f"no {kind!r} event; stderr: {proc.stderr.read()[-2000:]}")


def test_sigterm_mid_run_keeps_best_version(base_and_data):
    base, data = base_and_data
    proc = _start(
        [
            "--base",
            str(base),
            "--data",
            str(data),
            "--epochs",
            "200",
            "--lr",
            "3e-3",
            "--device",
            "cpu",
            "--patience",
            "200",
        ]
    )
    try:
        events = _read_until(proc, "epoch")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    events += parse_lines(out)
    assert proc.returncode == 0, err[-3000:]
    done = events[-1]
    assert done["event"] == "done" and done["stopped"] == "cancelled"
    assert 1 <= done["epochs_run"] < 200
    # the partial epoch was discarded: every epoch event is a whole epoch
    assert len([e for e in events if e["event"] == "epoch"]) == done["epochs_run"]
    [info] = user_versions()
    assert info.name == "tiny-base-ft" and info.parent == "tiny-base"
    assert info.metrics["best_epoch"] <= done["epochs_run"]


def test_stop_before_first_epoch_is_a_clean_cancel(base_and_data):
    base, data = base_and_data
    proc = _start(
        [
            "--base",
            str(base),
            "--data",
            str(data),
            "--epochs",
            "5",
            "--device",
            "cpu",
            "--stdin-control",
        ]
    )
    try:
        events = _read_until(proc, "loading")  # before any data is loaded or trained
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    events += parse_lines(out)
    assert proc.returncode == worker.EXIT_USER_ERROR, err[-2000:]
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "CancelledError"
    assert "no model was saved" in events[-1]["message"]
    assert not [e for e in events if e["event"] == "epoch"]
    assert user_versions() == []


def test_bad_dataset_gives_error_event_and_exit_1(base_and_data, tmp_path):
    base, _ = base_and_data
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        worker_cmd("--base", str(base), "--data", str(empty), "--device", "cpu"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    [loading, error] = parse_lines(proc.stdout)
    assert loading["event"] == "loading" and error["event"] == "error"
    assert error["kind"] == "DatasetError" and "is not a dataset" in error["message"]
    assert "Traceback" not in proc.stderr
    assert user_versions() == []


def _run_inproc(argv: list[str]) -> tuple[int, list[dict]]:
    events: list[dict] = []
    args = worker.build_parser().parse_args(argv)
    code = worker.run(args, events.append, worker.StopFlag())
    json.dumps(events, allow_nan=False)
    return code, events


def test_user_errors_are_one_clear_message(base_and_data, tmp_path):
    from napari_covid_seg.io import read_volume, write_mask

    base, data = base_and_data
    # a label whose shape differs from its image
    bad = make_phantom_dataset(tmp_path / "bad", seed=3)
    img = read_volume(bad / "imagesTr" / "phantom3_0000.nii.gz")
    lab = bad / "labelsTr" / "phantom3.nii.gz"
    lab.unlink()
    small, _ = make_phantom(shape=(12, 32, 32), seed=3)
    write_mask(lab, np.zeros(small.data.shape, np.uint8), like=small)
    assert img.data.shape != small.data.shape
    code, events = _run_inproc(["--base", str(base), "--data", str(bad), "--device", "cpu"])
    assert code == 1 and events[-1]["kind"] == "DatasetError"
    assert "differs from label shape" in events[-1]["message"]
    # an unknown base model
    code, events = _run_inproc(["--base", "no-such-model", "--data", str(data)])
    assert code == 1 and events == [events[-1]] and events[-1]["kind"] == "ModelLoadError"
    assert "Unknown model 'no-such-model'" in events[-1]["message"]
    # a bad option
    code, events = _run_inproc(["--base", str(base), "--data", str(data), "--epochs", "0"])
    assert code == 1 and "--epochs must be at least 1" in events[-1]["message"]
    # a GPU that is not there
    if not torch.cuda.is_available():
        code, events = _run_inproc(["--base", str(base), "--data", str(data), "--device", "cuda"])
        assert code == 1 and events[-1]["kind"] == "DeviceError"
    assert user_versions() == []


def test_event_translation_and_json_safety():
    ev = worker.translate_event(
        {
            "event": "epoch",
            "epoch": 3,
            "n_epochs": 9,
            "train_loss": 0.5,
            "val_dice": float("nan"),
            "val_loss": None,
            "seconds_left": 12.0,
            "best_epoch": 2,
            "best_val_dice": 0.7,
            "improved": False,
        }
    )
    assert ev["epochs"] == 9 and ev["epoch"] == 3
    assert worker.translate_event({"event": "end"}) is None
    lines: list[str] = []

    class Sink:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    worker.EventWriter(Sink())({**ev, "x": np.float32(0.25), "p": Path("/a")})
    [line] = lines
    back = json.loads(line)
    assert back["val_dice"] is None and back["x"] == 0.25 and back["p"] == "/a"
    assert line.endswith("\n") and line.count("\n") == 1
    assert worker._is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert worker._is_out_of_memory(MemoryError())
    assert not worker._is_out_of_memory(RuntimeError("shape mismatch"))


def test_slice_counts_and_samples_per_epoch(tmp_path):
    data = make_phantom_dataset(tmp_path / "d", n_slices=12)
    image, truth = make_phantom(shape=(7, 32, 32), seed=5)
    export_case(data, image, truth.data, case_id="whole")  # no reviewed list: all 7 slices
    counts = worker.count_slices(data)
    assert counts == {
        "layout": "nnunet_v2",
        "n_cases": 2,
        "n_slices": 19,
        "n_reviewed_cases": 1,
        "problem": "",
    }
    assert "not a dataset" in worker.count_slices(tmp_path)["problem"]
    assert worker.count_slices(tmp_path / "nope")["problem"] == "folder does not exist"
    # 19 slices, 20 % validation -> ~15 training slices
    kw = {"val_fraction": 0.2, "replay_fraction": 0.3, "has_replay": False}
    assert worker.samples_per_epoch([data], 16, **kw) == 16
    assert worker.samples_per_epoch([data], 15, **kw) is None
    assert worker.samples_per_epoch([data], 0, **kw) is None
    # replay adds 0.3 / 0.7 * 15 = 6 slices: 21 >= 16, one pass is enough
    assert worker.samples_per_epoch([data], 16, **{**kw, "has_replay": True}) is None
    # a few slices are resampled to several passes per epoch, at most 64 samples
    assert worker.samples_per_epoch([data], 16, **kw, passes=4) == 60
    assert worker.samples_per_epoch([data], 16, **kw, passes=5) == 64


def test_unexpected_errors_exit_2_with_traceback_and_oom_is_a_user_error(
    base_and_data, monkeypatch, capsys
):
    from napari_covid_seg.training import finetune as finetune_module

    base, data = base_and_data
    argv = ["--base", str(base), "--data", str(data), "--device", "cpu"]

    def boom(*args, **kwargs):
        raise KeyError("something internal")

    monkeypatch.setattr(finetune_module, "finetune", boom)
    code, events = _run_inproc(argv)
    assert code == worker.EXIT_UNEXPECTED == 2
    assert events[-1]["kind"] == "KeyError" and "failed unexpectedly" in events[-1]["message"]
    err = capsys.readouterr().err
    assert "Traceback" in err and "something internal" in err

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(finetune_module, "finetune", oom)
    code, events = _run_inproc(argv)
    assert code == 1 and events[-1]["kind"] == "OutOfMemoryError"
    assert "--batch-size" in events[-1]["message"] and "previous model" in events[-1]["message"]
    assert "Traceback" not in capsys.readouterr().err
