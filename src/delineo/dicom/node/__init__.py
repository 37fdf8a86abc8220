"""A DICOM node for the planning workflow (pynetdicom): receive CT, contour it, send the contours on.

- C-ECHO answered; C-STORE accepted for CT Image Storage only, and only from the configured
  calling AE titles (other associations are rejected).
- Every instance is checked before it is stored (:func:`delineo.dicom.series.instance_problem`):
  UIDs that are not DICOM UIDs (``../x``, ``/abs``), missing geometry, truncated or undecodable
  pixel data are refused with a failure status (0xC000 ... with an Error Comment saying why), so
  the sender knows it must resend. A C-STORE request without a SOP Instance UID (which pynetdicom
  would drop unanswered, leaving the sender waiting) gets the same failure status at once. Paths
  are made only from validated UIDs and checked to stay inside the storage folder.
- Every accepted instance is written durably (temporary file, fsync, rename) under
  ``storage/incoming/<study>/<series>/<sop>.dcm`` *before* success is returned to the sender.
- A series is judged as soon as the association that sent it is released normally and its images
  form a complete stack (:func:`stack_state`: at least ``min_slices``, one orientation, evenly
  spaced positions without gaps or repeats, instance numbers contiguous from 1): at once when the
  images say how many there are (ImagesInAcquisition, one acquisition) and that many arrived,
  otherwise after ``settle_seconds`` (2 s) in which no other association sends more of it (a
  sender that splits a series over several associations). Otherwise it is judged when nothing has
  arrived for it for ``idle_seconds`` and no association is still sending it. A series whose association ended abnormally (A-ABORT, dropped connection, or
  the node stopped while receiving it: a ``.receiving`` marker left on disk) is *incomplete*: it
  is held for ``incomplete_hold_s`` for the sender to resend it (a resend that ends normally
  completes it), then moved to ``failed/`` with the reason. After a restart every series waits
  its idle time again.
- A complete series must also be consistent: at least ``min_slices`` images, one patient and one
  frame of reference, evenly spaced positions without gaps (:func:`read_series`), unique and
  contiguous instance numbers, and as many images as ImagesInAcquisition says when it is given.
- A resend of a series already contoured is recognised (``done/<study>/<series>/received.json``):
  the same images are discarded with a warning; different images are moved to ``failed/`` with
  the reason. Either way no second RT Structure Set is made (remove ``done/<study>/<series>`` to
  contour the series again).
- The RT Structure Set (and the DICOM SEG) are queued under ``storage/outbox/`` and sent by
  C-STORE to the forward destination, retried without end while it is down: the interval doubles
  from ``retry_initial_s`` up to ``retry_max_s``; the state survives restarts. A result not
  delivered after ``alert_after_s`` is logged at error level (again every ``alert_every_s``) and
  shown as undeliverable by :func:`node_status` (``delineo dicom-node --status``, the web page's
  administrator view).
- A result is made in ``work/<study>/<series>.contouring`` and appears in ``done/`` by one rename
  when it is complete (its images, ``received.json`` and its outbox entry inside it). A node
  stopped or killed while contouring leaves nothing in ``done/``: after a restart the series is
  contoured again and its RT Structure Set sent; ``--status`` does not count it as contoured.
- A series that is not a plausible CT (:func:`delineo.inference.plausibility.check_ct`: values
  not in Hounsfield units, e.g. an MR labelled CT; noise; NaN; too few slices for the model) is
  not contoured: nothing is sent, and the reason is logged and kept in ``failed/``.
- A series that cannot be contoured is moved to ``failed/<study>/<series>.<UTC time>/`` (a new
  folder each time, never nested or overwritten) with ``error.txt``; the node goes on.
- Logs name studies by UID and patients by a short hash of the Patient ID, never by name.
- With ``on_event`` (``delineo serve --dicom-port``: :func:`delineo.service.audit.node_recorder`)
  the node also writes the access log: ``receive`` once per series judged complete (calling AE
  title, peer address), ``contour`` (or its failure), ``forward`` on each delivery (destination
  AE title), ``refuse`` for refused instances (one row per association and reason, with the count)
  and rejected associations. A standalone ``delineo dicom-node`` has no database and no access log.


The parts: :mod:`~delineo.dicom.node.receiving` (handlers, checks of each instance),
:mod:`~delineo.dicom.node.completion` (when a series is complete, and what then),
:mod:`~delineo.dicom.node.contouring` (contouring, publishing, failing),
:mod:`~delineo.dicom.node.outbox` (sending, retries), :mod:`~delineo.dicom.node.status` (the state
read from storage), :mod:`~delineo.dicom.node.server` (the node that joins them),
:mod:`~delineo.dicom.node.common` (configuration, storage markers).
"""

from delineo.dicom.node.common import EventRecorder, NodeConfig, SeriesIncomplete, parse_destination, patient_tag
from delineo.dicom.node.completion import COUNTED, NOT_COMPLETE, UNCOUNTED, SliceInfo, slice_info, stack_state
from delineo.dicom.node.server import DicomNode
from delineo.dicom.node.status import format_status, node_status

__all__ = ["COUNTED", "NOT_COMPLETE", "UNCOUNTED", "DicomNode", "EventRecorder", "NodeConfig", "SeriesIncomplete", "SliceInfo",
           "format_status", "node_status", "parse_destination", "patient_tag", "slice_info", "stack_state"]
