"""Signed per-job manifests: canonical signing, verification, signer binding, bad input."""

from __future__ import annotations

import pytest

from fedswarm.identity import load_identity
from fedswarm.learning.chunks import Preprocessing
from fedswarm.storage.manifest import (
    ChunkEntry,
    DatasetSchema,
    Manifest,
    ManifestError,
    SignedManifest,
    sign_manifest,
    signer_peer_id,
    verify_manifest,
)


def _manifest(job: str = "job-1") -> Manifest:
    prep = Preprocessing(task="classification", features=["a", "b"], label="y", classes=["0", "1"], mean=[0.5, 1.0], std=[1.0, 2.0])
    chunks = [
        ChunkEntry(chunk_id=f"chunk-{i:05d}", object_key=f"jobs/{job}/chunk-{i:05d}", rows=10, plaintext_size=200, ciphertext_size=233, ciphertext_sha256=f"{i:064x}")
        for i in range(3)
    ]
    return Manifest(job_id=job, chunks=chunks, data_schema=DatasetSchema(features=["a", "b"], label="y", task="classification", num_classes=2), preprocessing=prep, train_rows=30, validation_rows=5)


def test_sign_and_verify(tmp_path) -> None:
    ident = load_identity(tmp_path / "client")
    signed = sign_manifest(_manifest(), ident.key_pair())
    again = SignedManifest.from_json(signed.to_json())
    assert verify_manifest(again, expected_peer_id=ident.peer_id) == _manifest()
    assert signer_peer_id(again) == ident.peer_id
    assert again.manifest.chunk("chunk-00001").rows == 10
    with pytest.raises(ManifestError, match="no chunk"):
        again.manifest.chunk("chunk-9")


def test_tampering_and_wrong_signer(tmp_path) -> None:
    client, mallory = load_identity(tmp_path / "c"), load_identity(tmp_path / "m")
    signed = sign_manifest(_manifest(), client.key_pair())
    data = signed.model_dump(mode="json")
    data["manifest"]["chunks"][0]["rows"] = 11
    with pytest.raises(ManifestError, match="does not verify"):
        verify_manifest(SignedManifest.model_validate(data))
    # A manifest re-signed by someone else verifies only without the expected peer id.
    forged = sign_manifest(_manifest(), mallory.key_pair())
    verify_manifest(forged)
    with pytest.raises(ManifestError, match="not by the job's client"):
        verify_manifest(forged, expected_peer_id=client.peer_id)
    # Signature of one job replayed on another.
    other = SignedManifest(manifest=_manifest("job-2"), signer_public_key=signed.signer_public_key, signature=signed.signature)
    with pytest.raises(ManifestError):
        verify_manifest(other)
    bad_key = SignedManifest(manifest=signed.manifest, signer_public_key="00", signature=signed.signature)
    with pytest.raises(ManifestError, match="signer key"):
        verify_manifest(bad_key)


def test_malformed_manifest_one_line_error() -> None:
    with pytest.raises(ManifestError) as err:
        SignedManifest.from_json(b'{"manifest": {"job_id": "x"}, "signer_public_key": "", "signature": ""}')
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="sha256"):
        ChunkEntry(chunk_id="c", object_key="k", rows=1, plaintext_size=1, ciphertext_size=1, ciphertext_sha256="zz")
    with pytest.raises(ValueError, match="unique"):
        m = _manifest()
        Manifest(**{**m.model_dump(), "chunks": [m.chunks[0].model_dump(), m.chunks[0].model_dump()]})
