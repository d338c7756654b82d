""" "Save and export" panel: the mask as NIfTI, or the mask and its CT into an nnU-Net v2 dataset.

"Save as NIfTI..." writes the mask being edited with its CT's geometry
(atomically; never over the CT). "Export for training" writes a dataset case in
a napari ``thread_worker`` (gzip-compressing a CT takes seconds) over copies of
the arrays, so painting can go on meanwhile. Exporting an image that is
already in the dataset (same source file or same voxels) asks to update that
case instead of adding a copy that would sit in training and validation at
once; "as a new case" adds one on purpose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from magicgui.widgets import CheckBox, Container, FileEdit, Label, LineEdit, PushButton

from ._layers import wrap_labels
from ._notify import Confirm, describe_error, notify_error, notify_info


@dataclass
class ExportJob:
    """Everything :func:`~napari_covid_seg.io.dataset_export.export_case` needs."""

    folder: str
    image: Any  # io.Volume
    mask: Any  # np.ndarray copy
    case_id: str | None
    reviewed_slices: list[int] | None
    provenance: dict
    image_fingerprint: str | None = None
    overwrite: bool = False


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
            overwrite=job.overwrite,
            image_fingerprint=job.image_fingerprint,
        )
    except Exception as err:
        return None, err
    return case, None


class ExportPanel(Container):
    """Save as NIfTI; dataset folder, case id, "as a new case", "Export for training".

    A magicgui container: ``folder`` is a directory ``FileEdit`` (its ``value`` a
    path, None while empty), ``case_id`` a ``LineEdit``, ``new_case`` a
    ``CheckBox``. ``make_job(folder, case_id) -> ExportJob | None`` and
    ``save() -> path | None`` are provided by the Correct widget; ``confirm`` asks
    before updating a case.
    """

    def __init__(self, confirm: Confirm | None = None) -> None:
        super().__init__(labels=False)
        self.make_job: Callable[[str, str | None], ExportJob | None] | None = None
        self.save: Callable[[], Any] | None = None
        self.confirm: Confirm = confirm or (lambda title, text: True)
        self.worker: Any = None
        self._job: ExportJob | None = None
        self.last_case: str | None = None
        self.save_button = PushButton(name="save_nifti", text="Save as NIfTI...")
        self.save_button.tooltip = (
            "Write the mask being edited as .nii.gz with the CT's geometry (never over the CT)"
        )
        self.save_button.clicked.connect(lambda *_: self.save() if self.save else None)
        self.folder = FileEdit(name="dataset", label="Dataset", mode="d", nullable=True)
        self.folder.tooltip = "The nnU-Net v2 dataset folder the case goes into"
        self.folder.line_edit.native.setPlaceholderText(
            "dataset folder, e.g. ~/covid/Dataset501_Lesions"
        )
        self.folder.choose_btn.text = "..."  # (the dock may be ~350 px wide)
        self.folder.choose_btn.tooltip = "Choose the dataset folder"
        self.folder.choose_btn.max_width = 32
        self.case_id = LineEdit(name="case_id", label="Case id", value="")
        self.case_id.native.setPlaceholderText("automatic (from the file name)")
        self.new_case = CheckBox(name="new_case", text="as a new case", value=False)
        self.new_case.tooltip = (
            "Add another case even if this image was exported before "
            "(otherwise that case is updated, after a question)"
        )
        self.export_button = PushButton(name="export", text="Export for training")
        self.export_button.tooltip = (
            "Write the CT and the corrected mask as a case of an nnU-Net v2 dataset, with the "
            "reviewed slices, for the Fine-tune widget"
        )
        self.export_button.clicked.connect(lambda *_: self.export())
        self.status = Label(name="status", value="")
        wrap_labels(self.status)
        form = Container(name="form", labels=True, widgets=[self.folder, self.case_id])
        buttons = Container(
            name="buttons",
            layout="horizontal",
            labels=False,
            widgets=[self.save_button, self.export_button],
        )
        for box in (form, buttons):
            box.margins = (0, 0, 0, 0)
        self.extend([form, self.new_case, buttons, self.status])
        self.native.layout().addStretch(1)  # rows at the top, not spread over the page

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _decide_case(self, job: ExportJob) -> bool:
        """Update an existing case (after asking), or not; False = do not export."""
        from ..io.dataset_export import case_exists, find_case

        if self.new_case.value:
            if job.case_id is not None and case_exists(job.folder, job.case_id):
                notify_error(
                    f"Case '{job.case_id}' already exists; clear the case id (a new id is "
                    "chosen) or untick 'as a new case' to update it."
                )
                return False
            return True
        existing = job.case_id
        if existing is None:
            existing = find_case(job.folder, job.image.source_path, job.image_fingerprint)
        elif not case_exists(job.folder, existing):
            return True
        if existing is None:
            return True
        if not self.confirm(
            "Update the exported case?",
            f"'{existing}' in {job.folder} already holds this image. Replace its image, mask "
            "and reviewed slices with the current ones? (No exports nothing; tick 'as a new "
            "case' to add a second copy on purpose.)",
        ):
            self.status.value = f"Not exported: case '{existing}' was left as it is."
            return False
        job.case_id, job.overwrite = existing, True
        return True

    def export(self) -> Any:
        """Start the export; returns the worker, or None if refused (one notification)."""
        if self.running:
            return None
        folder = str(self.folder.value or "").strip()
        if not folder:
            notify_error("Choose a dataset folder to export into (the '...' button).")
            return None
        case_id = self.case_id.value.strip() or None
        job = self.make_job(folder, case_id) if self.make_job else None
        if job is None or not self._decide_case(job):
            return None
        from napari.qt.threading import create_worker

        worker = create_worker(run_export, job, _start_thread=False)
        worker.returned.connect(self._on_returned)  # bound methods: no strong refs kept
        worker.finished.connect(self._finished)
        self.worker = worker
        self._job = job
        self.export_button.enabled = False
        self.status.value = "Updating..." if job.overwrite else "Exporting..."
        worker.start()
        return worker

    def _on_returned(self, outcome: tuple[str | None, BaseException | None]) -> None:
        case, error = outcome
        job = self._job
        if error is not None:
            self.status.value = "Export failed."
            notify_error(describe_error(error, "Export for training"))
            return
        self.last_case = case
        reviewed = job.reviewed_slices
        scope = f"{len(reviewed)} reviewed slices" if reviewed else "all slices, none reviewed"
        verb = "Updated" if job.overwrite else "Exported"
        self.status.value = f"{verb} case '{case}' ({scope})."
        notify_info(f"{verb} case '{case}' in {job.folder} ({scope}).")

    def _finished(self) -> None:
        self.worker = None
        self._job = None
        self.export_button.enabled = True
