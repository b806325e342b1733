"""Resumable runs: fingerprinted JSONL rows (:mod:`.store`), model and content fingerprints
(:mod:`.fingerprint`) and a content-hash stage cache (:mod:`.stages`)."""

from .fingerprint import content_hash, model_fingerprint, tensors_fingerprint
from .stages import StageRunner, file_hash
from .store import STORE_FORMAT, ResumeStore, decoding_fields, fingerprint, write_lock

__all__ = ["STORE_FORMAT", "ResumeStore", "StageRunner", "content_hash", "decoding_fields", "file_hash",
           "fingerprint", "model_fingerprint", "tensors_fingerprint", "write_lock"]
