"""Metrics against hand-computed confusion matrices; losses on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_covid_seg.training.metrics import (
    MetricAccumulator,
    confusion,
    confusion_per_slice,
    format_table,
    metrics_from_confusion,
    segmentation_metrics,
)


def _pair():
    # 4x4 slice: truth has 4 lesion pixels, prediction 3 (2 correct, 1 false positive).
    truth = np.zeros((4, 4), np.uint8)
    truth[0, 0:4] = 1
    pred = np.zeros((4, 4), bool)
    pred[0, 0:2] = True
    pred[3, 3] = True
    return pred, truth


def test_confusion_counts_by_hand():
    pred, truth = _pair()
    tp, fp, fn, tn = confusion(pred, truth)
    assert (tp, fp, fn, tn) == (2, 1, 2, 11)


def test_metrics_match_hand_computed_values():
    m = metrics_from_confusion([2, 1, 2, 11])
    assert m["dice"] == pytest.approx(4 / 7)  # 2*2 / (2*2 + 1 + 2)
    assert m["iou"] == pytest.approx(2 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["sensitivity"] == pytest.approx(2 / 4)
    assert m["specificity"] == pytest.approx(11 / 12)
    assert m["accuracy"] == pytest.approx(13 / 16)
    # F1 = 2 Pc Sen / (Pc + Sen) equals Dice
    pc, sen = m["precision"], m["sensitivity"]
    assert m["dice"] == pytest.approx(2 * pc * sen / (pc + sen))


def test_empty_truth_and_prediction_conventions():
    m = metrics_from_confusion([0, 0, 0, 100])
    assert m["dice"] == 1.0 and m["iou"] == 1.0 and m["sensitivity"] == 1.0
    m = metrics_from_confusion([0, 5, 0, 95])  # lesion predicted where there is none
    assert m["dice"] == 0.0 and m["precision"] == 0.0 and m["sensitivity"] == 1.0


def test_pooled_differs_from_per_slice_mean():
    # slice 1 perfect with 1 px lesion; slice 2: 9 lesion px, all missed.
    truth = np.zeros((2, 3, 3), np.uint8)
    pred = np.zeros((2, 3, 3), np.uint8)
    truth[0, 1, 1] = pred[0, 1, 1] = 1
    truth[1] = 1
    s = segmentation_metrics(pred, truth)
    assert s["dice"] == pytest.approx(2 / (2 + 9))  # pooled: TP=1, FN=9
    assert s["dice_mean"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (1, 0, 9, 8)
    assert s["n_slices"] == 2


def test_torch_and_numpy_counts_agree():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    pred = rng.random((3, 1, 8, 8)) > 0.5
    truth = rng.random((3, 1, 8, 8)) > 0.7
    a = MetricAccumulator()
    a.update(torch.from_numpy(pred), torch.from_numpy(truth.astype(np.float32)))
    np.testing.assert_array_equal(a.all_counts, confusion_per_slice(pred, truth))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        confusion(np.zeros((2, 2)), np.zeros((2, 3)))


def test_format_table_uses_paper_columns():
    text = format_table({"X": metrics_from_confusion([2, 1, 2, 11])})
    assert "| Acc | Pc | Sen | Sp | F1 | IoU |" in text
    assert "0.571" in text  # F1 = 4/7


def test_losses_on_known_inputs():
    torch = pytest.importorskip("torch")
    from napari_covid_seg.training.losses import build_loss, soft_dice_loss

    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :] = 1
    perfect = (target * 2 - 1) * 50.0  # confident, correct logits
    assert float(soft_dice_loss(perfect, target)) < 1e-3
    assert float(build_loss("bce")(perfect, target)) < 1e-3
    zero = torch.zeros(1, 1, 4, 4)
    assert float(build_loss("bce")(zero, target)) == pytest.approx(math.log(2), rel=1e-5)
    both = float(build_loss("dice_bce")(zero, target))
    assert both == pytest.approx(math.log(2) + float(soft_dice_loss(zero, target)), rel=1e-5)
    with pytest.raises(ValueError, match="Unknown loss"):
        build_loss("focal")
