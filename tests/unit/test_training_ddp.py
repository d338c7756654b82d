"""DDP that cannot hang: equal steps on every rank, two real processes (gloo on CPU)."""

from __future__ import annotations

import json
import math
import multiprocessing as mp

import pytest

torch = pytest.importorskip("torch")

from napari_covid_seg.training import ddp  # noqa: E402

#: A hang (a rank left waiting in a collective) must fail the test, not block CI.
LAUNCH_TIMEOUT_S = 240


@pytest.mark.parametrize("world", [2, 3, 4])
def test_every_rank_gets_the_same_number_of_steps(world):
    for batch in (2, 4, 8):
        for n in range(1, 60):
            shards = [ddp.shard(list(range(n)), r, world) for r in range(world)]
            steps = {len(ddp.split_batches(s, batch)) for s in shards}
            assert steps == {ddp.n_batches(math.ceil(n / world), batch)}, (n, batch, world)
            assert {len(s) for s in shards} == {math.ceil(n / world)}
            assert set().union(*shards) == set(range(n))  # padding repeats, never drops


def test_shard_keeps_the_container_type():
    np = pytest.importorskip("numpy")
    order = torch.arange(5)
    assert ddp.shard(order, 1, 2).tolist() == [1, 3, 0]
    assert ddp.shard(np.arange(5), 0, 2).tolist() == [0, 2, 4]
    assert ddp.shard([7], 1, 3) == [7]  # fewer samples than ranks: wrap around
    assert ddp.shard(order, 0, 1) is order


def _launch(tmp_path, n_train: int, n_val: int, batch: int, world: int = 2) -> list[dict]:
    from tests.unit import _ddp_child

    ctx = mp.get_context("spawn")
    port = ddp.free_port()
    procs = [
        ctx.Process(
            target=_ddp_child.run_rank,
            args=(rank, world, port, str(tmp_path), n_train, n_val, batch),
            daemon=True,
        )
        for rank in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(LAUNCH_TIMEOUT_S)
    hung = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    assert not hung, f"DDP ranks {hung} did not finish within {LAUNCH_TIMEOUT_S} s (a hang)"
    assert [p.exitcode for p in procs] == [0] * world
    return [json.loads((tmp_path / f"report_rank{r}.json").read_text()) for r in range(world)]


def test_two_processes_uneven_slices_identical_weights_and_resume(tmp_path):
    # 19 training slices, batch 8, 2 ranks: unpadded, rank 0 ran 2 steps and rank 1 one
    # (its last batch of one dropped), and the next collective waited forever.
    reports = _launch(tmp_path, n_train=19, n_val=3, batch=8)
    r0, r1 = reports
    for key in ("a", "b", "b_resumed"):
        assert r0[key]["steps"] == r1[key]["steps"], key
        # validation metrics are pooled over both ranks: identical records
        assert r0[key]["history"] == r1[key]["history"], key
    assert r0["a"]["steps"] == [2, 2] and r0["a"]["epochs_run"] == 2
    assert r0["a"]["history"][0]["val_slices"] == 3  # 2 + 1 slices on the two ranks
    # stopped on rank 0's request after one epoch: both ranks stop together
    assert r0["b"]["stopped"] == r1["b"]["stopped"] == "cancelled"
    assert r0["b"]["epochs_run"] == r1["b"]["epochs_run"] == 1
    assert r0["b_resumed"]["steps"] == [2] and r0["b_resumed"]["epochs_run"] == 2
    # checkpoints are written by rank 0 only
    assert r0["a"]["saves"] == 2 and r1["a"]["saves"] == 0 and r1["b_resumed"]["saves"] == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.name.startswith(".")) == []
    for key in ("a", "b_resumed"):
        w0 = torch.load(tmp_path / f"{key}_rank0.pt", weights_only=True)
        w1 = torch.load(tmp_path / f"{key}_rank1.pt", weights_only=True)
        assert w0.keys() == w1.keys()
        for k in w0:  # parameters and BatchNorm statistics alike
            torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0, msg=k)
    # resuming under DDP continues exactly where the uninterrupted run went
    a = torch.load(tmp_path / "a_rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "b_resumed_rank0.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert r0["a"]["history"][1]["train_loss"] == pytest.approx(
        r0["b_resumed"]["history"][1]["train_loss"], rel=1e-5
    )
