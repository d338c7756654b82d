""" "Export for training" panel: the corrected mask and its CT into an nnU-Net v2 dataset.

The write runs in a napari ``thread_worker`` (gzip-compressing a CT takes
seconds) over copies of the arrays, so painting can go on meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
)

from ._notify import describe_error, notify_error, notify_info


@dataclass
class ExportJob:
    """Everything :func:`~napari_covid_seg.io.dataset_export.export_case` needs."""

    folder: str
    image: Any  # io.Volume
    mask: Any  # np.ndarray copy
    case_id: str | None
    reviewed_slices: list[int] | None
    provenance: dict


def run_export(job: ExportJob) -> tuple[str | None, BaseException | None]:
    """Worker body: ``(case id, None)`` or ``(None, error)``; never raises."""
    from ..io.dataset_export import export_case

    try:
        case = export_case(
            job.folder,
            job.image,
            job.mask,
            case_id=job.case_id,
            reviewed_slices=job.reviewed_slices,
            provenance=job.provenance,
        )
    except Exception as err:
        return None, err
    return case, None


class ExportPanel(QGroupBox):
    """Dataset folder, optional case id, and the "Export for training" button.

    ``make_job(folder, case_id) -> ExportJob | None`` is provided by the Correct widget.
    """

    def __init__(self) -> None:
        super().__init__("Export for training (nnU-Net v2 raw)")
        self.make_job: Callable[[str, str | None], ExportJob | None] | None = None
        self.worker: Any = None
        self._job: ExportJob | None = None
        self.last_case: str | None = None
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("dataset folder, e.g. ~/covid/Dataset501_Lesions")
        browse = QPushButton("...")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder)
        row.addWidget(browse)
        self.case_id = QLineEdit()
        self.case_id.setPlaceholderText("automatic (from the file name)")
        self.export_button = QPushButton("Export for training")
        self.export_button.clicked.connect(self.export)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout(self)
        form.addRow("Dataset", row)
        form.addRow("Case id", self.case_id)
        form.addRow(self.export_button)
        form.addRow(self.status)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Dataset folder", self.folder.text())
        if folder:
            self.folder.setText(folder)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def export(self) -> Any:
        """Start the export; returns the worker, or None if refused (one notification)."""
        if self.running:
            return None
        folder = self.folder.text().strip()
        if not folder:
            notify_error("Choose a dataset folder to export into (the '...' button).")
            return None
        job = self.make_job(folder, self.case_id.text().strip() or None) if self.make_job else None
        if job is None:
            return None
        from napari.qt.threading import create_worker

        worker = create_worker(run_export, job, _start_thread=False)
        worker.returned.connect(self._on_returned)  # bound methods: no strong refs kept
        worker.finished.connect(self._finished)
        self.worker = worker
        self._job = job
        self.export_button.setEnabled(False)
        self.status.setText("Exporting...")
        worker.start()
        return worker

    def _on_returned(self, outcome: tuple[str | None, BaseException | None]) -> None:
        case, error = outcome
        job = self._job
        if error is not None:
            self.status.setText("Export failed.")
            notify_error(describe_error(error, "Export for training"))
            return
        self.last_case = case
        reviewed = job.reviewed_slices
        scope = f"{len(reviewed)} reviewed slices" if reviewed else "all slices, none reviewed"
        self.status.setText(f"Exported case '{case}' ({scope}).")
        notify_info(f"Exported case '{case}' to {job.folder} ({scope}).")

    def _finished(self) -> None:
        self.worker = None
        self._job = None
        self.export_button.setEnabled(True)
