"""A live training-curve canvas (matplotlib in Qt) for the Fine-tune widget.

Left axis: training and validation loss per epoch; right axis: validation
Dice per epoch, with the base model's Dice on the same validation slices as a
dashed line once known. Points are added as the worker reports epochs.
"""

from __future__ import annotations

from typing import Any

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure


class TrainingPlot(FigureCanvasQTAgg):
    """Loss and validation Dice per epoch; ``add_epoch`` appends one point each.

    Attributes:
        epochs, train_loss, val_loss, val_dice: the plotted values (lists, one per epoch;
            None where a value is missing).
        baseline: the base model's validation Dice (dashed line) or None.
    """

    def __init__(self, parent: Any = None, *, width: float = 4.2, height: float = 2.6) -> None:
        fig = Figure(figsize=(width, height), dpi=90, layout="constrained")
        super().__init__(fig)
        if parent is not None:
            self.setParent(parent)
        self.ax_loss = fig.add_subplot(1, 1, 1)
        self.ax_dice = self.ax_loss.twinx()
        self.epochs: list[int] = []
        self.train_loss: list[float | None] = []
        self.val_loss: list[float | None] = []
        self.val_dice: list[float | None] = []
        self.baseline: float | None = None
        (self._l_train,) = self.ax_loss.plot(
            [], [], "o-", color="tab:blue", ms=3, lw=1.2, label="train loss"
        )
        (self._l_val,) = self.ax_loss.plot(
            [], [], "s--", color="tab:cyan", ms=3, lw=1.0, label="val loss"
        )
        (self._l_dice,) = self.ax_dice.plot(
            [], [], "o-", color="tab:orange", ms=4, lw=1.6, label="val Dice"
        )
        self._l_base = self.ax_dice.axhline(
            0.0, color="tab:gray", ls=":", lw=1.2, label="base model Dice", visible=False
        )
        self.ax_loss.set_xlabel("epoch")
        self.ax_loss.set_ylabel("loss")
        self.ax_dice.set_ylabel("validation Dice")
        self.ax_dice.set_ylim(0.0, 1.0)
        handles = [self._l_train, self._l_val, self._l_dice, self._l_base]
        self.ax_loss.legend(
            handles=handles,
            loc="upper center",
            fontsize=7,
            ncols=2,
            frameon=False,
            bbox_to_anchor=(0.5, 1.22),
        )
        self.setMinimumHeight(200)
        self._redraw()

    def clear(self) -> None:
        """Forget all points and the baseline."""
        self.epochs.clear()
        self.train_loss.clear()
        self.val_loss.clear()
        self.val_dice.clear()
        self.baseline = None
        self._l_base.set_visible(False)
        self._redraw()

    def add_epoch(
        self,
        epoch: int,
        train_loss: float | None,
        val_loss: float | None = None,
        val_dice: float | None = None,
    ) -> None:
        """Append the values of one finished epoch and redraw."""
        self.epochs.append(int(epoch))
        self.train_loss.append(_num(train_loss))
        self.val_loss.append(_num(val_loss))
        self.val_dice.append(_num(val_dice))
        self._redraw()

    def set_baseline(self, dice: float | None) -> None:
        """Show the base model's Dice on the same validation slices (None hides it)."""
        self.baseline = _num(dice)
        if self.baseline is None:
            self._l_base.set_visible(False)
        else:
            self._l_base.set_ydata([self.baseline, self.baseline])
            self._l_base.set_visible(True)
        self._redraw()

    def n_points(self) -> int:
        """Number of epochs plotted."""
        return len(self.epochs)

    def _redraw(self) -> None:
        def pairs(values: list[float | None]) -> tuple[list[int], list[float]]:
            kept = [(e, v) for e, v in zip(self.epochs, values, strict=True) if v is not None]
            return [e for e, _ in kept], [v for _, v in kept]

        self._l_train.set_data(*pairs(self.train_loss))
        self._l_val.set_data(*pairs(self.val_loss))
        self._l_dice.set_data(*pairs(self.val_dice))
        last = max(self.epochs) if self.epochs else 1
        self.ax_loss.set_xlim(0.5, max(2, last) + 0.5)
        losses = [v for v in self.train_loss + self.val_loss if v is not None]
        if losses:
            lo, hi = min(losses), max(losses)
            pad = 0.1 * (hi - lo) or 0.05 * max(abs(hi), 1e-3)
            self.ax_loss.set_ylim(max(0.0, lo - pad), hi + pad)
        self.draw_idle()


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out and abs(out) != float("inf") else None
