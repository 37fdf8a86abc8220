"""Keyed pseudonyms (delineo.pseudonym) and the node's log lines that use them."""

from __future__ import annotations

import hashlib
import stat

import pydicom

from delineo.dicom.node import patient_tag
from delineo.pseudonym import SECRET_FILE, keyed_pseudonym, load_secret


def test_the_key_is_made_once_private_and_kept(tmp_path):
    key = load_secret(tmp_path)
    assert len(key) == 32 and stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600
    assert load_secret(tmp_path) == key
    assert load_secret(tmp_path / "elsewhere") != key


def test_the_node_log_pseudonym_is_keyed_not_a_plain_hash(tmp_path):
    ds = pydicom.Dataset()
    ds.PatientID = "1234567"
    key = load_secret(tmp_path)
    tag = patient_tag(ds, key)
    assert tag == keyed_pseudonym(key, "1234567", 12)
    # the old tag, sha256(PatientID), was reversible by trying every 7-digit record number
    assert tag not in hashlib.sha256(b"1234567").hexdigest()
    assert tag != patient_tag(ds, load_secret(tmp_path / "other-node"))
