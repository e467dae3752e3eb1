"""Registering versions: a draft declares its files, resumable uploads fill them, commit signs the manifest.

Uploads are encrypted as they stream in, segment by segment; the durable offset only advances by
whole segments (or to the end of the file), so a client resumes from the offset it is told. The
file's SHA-256 runs alongside; if the process restarted in between, it is recomputed from the
staged ciphertext. Nothing becomes visible until ``commit`` succeeds: a draft that is cut short,
carries a wrong digest or is aborted never shows up as a registered version.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from mlp_core.errors import AlreadyExists, Conflict, FailedPrecondition, InvalidArgument, NotFound
from mlp_registry.crypto.aead import (
    TAG_SIZE,
    SegmentCipher,
    binding_for,
    new_data_key,
    new_nonce_prefix,
    rechunk,
    segment_count,
)
from mlp_registry.crypto.keys import WrappedKey
from mlp_registry.crypto.signing import manifest_digest
from mlp_registry.domain import validation
from mlp_registry.domain.caller import WRITE, Caller, require
from mlp_registry.domain.context import RegistryContext, load_model, load_version, record, subject_of
from mlp_registry.domain.errors import IdempotencyKeyTaken, IntegrityCheckFailed
from mlp_registry.domain.idempotency import REGISTER_VERSION, fingerprint
from mlp_registry.domain.manifest import build_manifest
from mlp_registry.domain.models import (
    ArtifactFile,
    FileSpec,
    IdempotencyRecord,
    Lineage,
    Model,
    ModelVersion,
    UploadSession,
    UploadState,
    VersionState,
)
from mlp_registry.domain.upload_pipeline import BackgroundHasher, segments
from mlp_registry.store.base import MetadataTx

DRAFT = frozenset({VersionState.DRAFT})


@dataclass
class VersionDraft:
    """What a client declares when it starts a version; fixed from then on."""

    files: list[FileSpec]
    framework: str = "onnx"
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    input_schema: dict[str, Any] = field(default_factory=dict)
    output_schema: dict[str, Any] = field(default_factory=dict)
    model_card: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    lineage: Lineage = field(default_factory=Lineage)
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)


def request_digest(draft: VersionDraft) -> str:
    """SHA-256 of a draft's canonical JSON (files in path order): what an idempotent retry must repeat."""
    body = asdict(draft)
    body["files"] = sorted(body["files"], key=lambda f: f["path"])
    return fingerprint(body)


def object_key(file_sha256: str, binding: bytes) -> str:
    """Content address of a stored file: its plaintext SHA-256, plus a suffix for the place it is bound to."""
    place = hashlib.sha256(binding).hexdigest()[:16]
    return f"sha256/{file_sha256[:2]}/{file_sha256}-{place}"


class _HashCheckpoints:
    """Running SHA-256 states of open uploads in this process, keyed by upload id and offset."""

    def __init__(self, capacity: int = 256) -> None:
        self._items: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity

    def take(self, upload_id: str, offset: int) -> Any | None:
        with self._lock:
            item = self._items.pop(upload_id, None)
        return item[1] if item and item[0] == offset else None

    def put(self, upload_id: str, offset: int, state: Any) -> None:
        with self._lock:
            self._items[upload_id] = (offset, state)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)


@dataclass
class _Lease:
    """This process's claim on an upload session while it writes."""

    id: str
    ttl: timedelta
    renewed: float = 0.0


class VersionUploads:
    """Drafts, resumable file uploads and the commit that registers a signed version."""

    def __init__(self, ctx: RegistryContext, lease_ttl: timedelta = timedelta(seconds=60),
                 stream_idle_timeout: timedelta = timedelta(seconds=20)) -> None:
        self.ctx = ctx
        self.lease_ttl = lease_ttl
        #: The edges end an upload stream that sends nothing for this long (kept below ``lease_ttl``):
        #: its whole segments stay durable and its lease is released, so a client whose stream went
        #: silent (e.g. a cancel that never reached the server) can resume without waiting for the lease.
        self.stream_idle_timeout = stream_idle_timeout
        self._hashes = _HashCheckpoints()

    def create_draft(self, caller: Caller, project: str, model_name: str, draft: VersionDraft,
                     idempotency_key: str | None = None) -> tuple[ModelVersion, list[UploadSession]]:
        """Reserve the next version number and open one upload session per declared file.

        With an ``idempotency_key``, a retry by the same caller for the same model returns the
        version the first request created (as it is now, uploads with their current offsets) and
        creates nothing; the same key with a different draft is refused with ``AlreadyExists``.
        Concurrent first uses of a key create one version (unique key row, the loser replays).
        """
        require(caller, WRITE)
        key = validation.idempotency_key(idempotency_key)
        validation.files(draft.files)
        metrics = validation.metrics(draft.metrics)
        tags = validation.tags(draft.tags)
        if not draft.framework or len(draft.framework) > 64:
            raise InvalidArgument("framework must be 1-64 characters, e.g. 'onnx' or 'pytorch'")
        digest = request_digest(draft) if key else ""
        if key:
            replay = self._replay(caller, project, model_name, key, digest, draft)
            if replay is not None:
                return replay
        try:
            return self._insert_draft(caller, project, model_name, draft, metrics, tags, key, digest)
        except IdempotencyKeyTaken:
            # A concurrent request with the same key committed first: answer with its version.
            assert key is not None
            replay = self._replay(caller, project, model_name, key, digest, draft)
            if replay is None:  # pragma: no cover - the winner's row is committed before we fail
                raise Conflict("a request with the same idempotency key is in progress; retry") from None
            return replay

    def _replay(self, caller: Caller, project: str, model_name: str, key: str, digest: str,
                draft: VersionDraft) -> tuple[ModelVersion, list[UploadSession]] | None:
        """What the first request with ``key`` created, or None when the key is new."""
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, model_name)
            found = tx.get_idempotency_key(REGISTER_VERSION, model.id, caller.subject, key)
            if found is None:
                return None
            if found.request_digest != digest:
                raise AlreadyExists(
                    f"idempotency key {key!r} was already used to register a different version of "
                    f"'{project}/{model_name}' (other files or metadata); use a new key for a new version")
            version = tx.get_version_by_id(found.object_id)
            if version is None:  # pragma: no cover - versions are never deleted, only marked
                raise NotFound(f"the version registered with idempotency key {key!r} no longer exists")
            by_path = {u.path: u for u in tx.list_uploads(version.id)}
        order = [s.path for s in draft.files]  # same order as the first answer, whatever the retry's order
        return version, [by_path[p] for p in order if p in by_path]

    def _insert_draft(self, caller: Caller, project: str, model_name: str, draft: VersionDraft,
                      metrics: dict[str, Any], tags: dict[str, str], key: str | None, digest: str,
                      ) -> tuple[ModelVersion, list[UploadSession]]:
        now = self.ctx.clock()
        version_id = str(uuid.uuid4())
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, model_name)
            if key:
                # First write of the transaction: a concurrent twin waits here and then fails.
                tx.claim_idempotency_key(IdempotencyRecord(
                    operation=REGISTER_VERSION, model_id=model.id, caller=caller.subject, key=key,
                    request_digest=digest, object_id=version_id, created_at=now))
            version = ModelVersion(
                id=version_id, model_id=model.id, number=tx.next_version_number(model.id),
                state=VersionState.DRAFT, framework=draft.framework, metrics=metrics, params=draft.params,
                input_schema=draft.input_schema, output_schema=draft.output_schema, model_card=draft.model_card,
                attributes=draft.attributes, lineage=draft.lineage, description=draft.description, tags=tags,
                metadata_revision=1, created_by=caller.subject, created_at=now)
            files = [self._new_file(model, version, spec) for spec in draft.files]
            tx.insert_version(version, files)
            uploads = [UploadSession(id=uuid.uuid4().hex, version_id=version.id, path=s.path, size=s.size,
                                     sha256=s.sha256, offset=0, state=UploadState.OPEN, updated_at=now)
                       for s in draft.files]
            for upload in uploads:
                tx.insert_upload(upload)
            record(self.ctx, tx, caller, "version.draft-created", model, subject_of(model, version),
                   {"version": version.number, "files": [asdict(s) for s in draft.files]})
        return version, uploads

    def _new_file(self, model: Model, version: ModelVersion, spec: FileSpec) -> ArtifactFile:
        binding = binding_for(model.id, version.id, spec.path)
        wrapped = self.ctx.keys.wrap(new_data_key(), binding)
        return ArtifactFile(version_id=version.id, path=spec.path, size=spec.size, sha256=spec.sha256,
                            object_key=object_key(spec.sha256, binding), key_id=wrapped.key_id,
                            key_version=wrapped.key_version, wrapped_key=wrapped.ciphertext,
                            nonce_prefix=new_nonce_prefix(), segment_size=self.ctx.segment_size)

    def _load_upload(self, tx: MetadataTx, caller: Caller, upload_id: str, *, for_update: bool = False,
                     ) -> tuple[UploadSession, Model, ModelVersion, ArtifactFile]:
        upload = tx.get_upload(upload_id, for_update=for_update)
        version = tx.get_version_by_id(upload.version_id) if upload else None
        model = tx.get_model_by_id(version.model_id) if version else None
        if upload is None or version is None or model is None or not caller.can_access(model.project):
            raise NotFound(f"upload {upload_id!r} does not exist or is not visible to you")
        file = next((f for f in tx.list_files(version.id) if f.path == upload.path), None)
        if file is None or version.state is not VersionState.DRAFT:
            raise FailedPrecondition(f"upload {upload_id!r} belongs to a version that is no longer a draft")
        return upload, model, version, file

    def get_upload(self, caller: Caller, upload_id: str) -> UploadSession:
        """An upload session, with the offset to resume from."""
        with self.ctx.store.transaction() as tx:
            upload, *_ = self._load_upload(tx, caller, upload_id)
        return upload

    def _cipher(self, model: Model, version: ModelVersion, file: ArtifactFile) -> SegmentCipher:
        binding = binding_for(model.id, version.id, file.path)
        key = self.ctx.keys.unwrap(WrappedKey(file.key_id, file.key_version, file.wrapped_key), binding)
        return SegmentCipher(key, file.nonce_prefix, binding, file.segment_size)

    def _hash_at(self, upload: UploadSession, cipher: SegmentCipher) -> Any:
        state = self._hashes.take(upload.id, upload.offset)
        if state is not None:
            return state
        state = hashlib.sha256()
        count = upload.offset // cipher.segment_size
        last = segment_count(upload.size, cipher.segment_size) - 1
        staged = self.ctx.artifacts.read_staging(upload.id, cipher.segment_size + TAG_SIZE) if count else iter(())
        for index, piece in zip(range(count), rechunk(staged, cipher.segment_size + TAG_SIZE), strict=False):
            state.update(cipher.open(index, piece, index == last))
        return state

    def write(self, caller: Caller, upload_id: str, offset: int, chunks: Iterable[bytes]) -> UploadSession:
        """Append plaintext at ``offset`` (encrypting as it streams); returns the session with the durable offset.

        A stream that stops mid-segment keeps only its whole segments; resume from the returned offset.
        When the last byte arrives the SHA-256 is compared with the declared one: a mismatch resets the
        upload and raises ``InvalidArgument``. One writer at a time: the writer takes a lease on the
        session row (compare-and-set) and a second concurrent writer gets ``Conflict``.
        """
        require(caller, WRITE)
        with self.ctx.store.transaction() as tx:
            upload, model, version, file = self._load_upload(tx, caller, upload_id)
        if upload.state is not UploadState.OPEN:
            raise FailedPrecondition(f"upload {upload_id} is {upload.state.value}; nothing more to send")
        if offset != upload.offset:
            raise Conflict(f"upload {upload_id} is at offset {upload.offset}, not {offset}; resume from there",
                           headers={"Upload-Offset": str(upload.offset)})
        lease = self._claim(upload, offset)
        try:
            cipher = self._cipher(model, version, file)
            seg = cipher.segment_size
            staged_end = (offset // seg) * (seg + TAG_SIZE)
            if self.ctx.artifacts.staging_size(upload_id) < staged_end:
                self._reset(upload_id)
                raise Conflict(f"the staged bytes of upload {upload_id} were lost; restart from offset 0",
                               headers={"Upload-Offset": "0"})
            hasher = BackgroundHasher(self._hash_at(upload, cipher))
            written = [0]
            try:
                self.ctx.artifacts.append_staging(
                    upload_id, staged_end, self._seal(cipher, upload, offset, chunks, hasher, written, lease))
                state = hasher.finish()
            except BaseException:
                hasher.finish()
                self._hashes.take(upload_id, -1)
                raise
            return self._advance(caller, upload, offset, offset + written[0], state, lease)
        finally:
            with self.ctx.store.transaction() as tx:
                tx.release_upload_lease(upload_id, lease.id)

    def _claim(self, upload: UploadSession, offset: int) -> _Lease:
        lease = _Lease(uuid.uuid4().hex, self.lease_ttl)
        now = self.ctx.clock()
        with self.ctx.store.transaction() as tx:
            if tx.claim_upload(upload.id, offset, lease.id, now, now + lease.ttl):
                lease.renewed = time.monotonic()
                return lease
            current = tx.get_upload(upload.id)
        if current is not None and current.offset != offset:
            raise Conflict(f"upload {upload.id} is at offset {current.offset}, not {offset}; resume from there",
                           headers={"Upload-Offset": str(current.offset)})
        raise Conflict(f"another stream is writing to upload {upload.id}; wait for it to finish (or for its "
                       f"lease to lapse, at most {int(self.lease_ttl.total_seconds())} s), then GET the "
                       "session and resume from its offset")

    def _renew(self, upload_id: str, lease: _Lease) -> None:
        if time.monotonic() - lease.renewed < lease.ttl.total_seconds() / 4:
            return
        with self.ctx.store.transaction() as tx:
            held = tx.renew_upload_lease(upload_id, lease.id, self.ctx.clock() + lease.ttl)
        if not held:
            raise Conflict(f"upload {upload_id}: this stream stalled past its lease and another writer took "
                           "over; GET the session and resume from its offset")
        lease.renewed = time.monotonic()

    def _seal(self, cipher: SegmentCipher, upload: UploadSession, offset: int, chunks: Iterable[bytes],
              hasher: BackgroundHasher, written: list[int], lease: _Lease) -> Iterator[bytes]:
        seg = cipher.segment_size
        last = segment_count(upload.size, seg) - 1
        index = offset // seg
        if upload.size == 0:
            written[0] = 0
            yield cipher.seal(0, b"", True)
            return
        for piece in segments(_limited(chunks, upload.size - offset, upload.path), seg):
            expected = seg if index < last else upload.size - last * seg
            if len(piece) != expected:
                return  # a partial segment at the end of a cut stream is not kept
            hasher.update(piece)  # SHA-256 on the helper thread while this one encrypts
            yield cipher.seal(index, piece, index == last)
            written[0] += len(piece)
            index += 1
            self._renew(upload.id, lease)

    def _advance(self, caller: Caller, upload: UploadSession, offset: int, new_offset: int, hasher: Any,
                 lease: _Lease) -> UploadSession:
        digest_error = None
        with self.ctx.store.transaction() as tx:
            current, _model, _version, file = self._load_upload(tx, caller, upload.id, for_update=True)
            if current.offset != offset or current.state is not UploadState.OPEN or current.lease_id != lease.id:
                raise Conflict(f"upload {upload.id} was changed concurrently; GET it and resume")
            current.offset, current.updated_at = new_offset, self.ctx.clock()
            current.lease_id = current.lease_until = None
            if new_offset == current.size:
                if hasher.hexdigest() != current.sha256:
                    digest_error = hasher.hexdigest()
                    current.offset = 0
                else:
                    self.ctx.artifacts.promote(upload.id, file.object_key)
                    current.state = UploadState.COMPLETE
            tx.update_upload(current)
        if digest_error is not None:
            self.ctx.artifacts.discard_staging(upload.id)
            raise InvalidArgument(
                f"file {upload.path!r}: the uploaded bytes have SHA-256 {digest_error} but {upload.sha256} was "
                "declared; the upload was reset to offset 0, send the right file")
        if current.state is UploadState.OPEN:
            self._hashes.put(upload.id, new_offset, hasher)
        return current

    def _reset(self, upload_id: str) -> None:
        self.ctx.artifacts.discard_staging(upload_id)
        with self.ctx.store.transaction() as tx:
            upload = tx.get_upload(upload_id, for_update=True)
            if upload is not None:
                upload.offset, upload.updated_at = 0, self.ctx.clock()
                upload.lease_id = upload.lease_until = None
                tx.update_upload(upload)

    def commit(self, caller: Caller, project: str, model_name: str, number: int) -> ModelVersion:
        """Register a draft whose files are all uploaded: sign its manifest and make it visible."""
        require(caller, WRITE)
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, model_name)
            version = load_version(tx, model, number, DRAFT)
            pending = [f"{u.path} ({u.offset}/{u.size} bytes)" for u in tx.list_uploads(version.id)
                       if u.state is not UploadState.COMPLETE]
            if pending:
                raise FailedPrecondition(f"version {number} cannot be registered: uploads incomplete: "
                                         + ", ".join(pending))
            files = tx.list_files(version.id)
            for f in files:
                if not self.ctx.artifacts.exists(f.object_key):
                    raise IntegrityCheckFailed(f"stored object of {f.path!r} is missing; upload it again")
            manifest = build_manifest(model, version, files)
            version.signature = self.ctx.signer.sign(manifest)
            version.manifest_digest = manifest_digest(manifest)
            version.state, version.registered_at = VersionState.REGISTERED, self.ctx.clock()
            tx.update_version(version)
            tx.upsert_signing_key(self.ctx.signer.key_id, self.ctx.signer.public_pem, self.ctx.clock())
            record(self.ctx, tx, caller, "version.registered", model, subject_of(model, version),
                   {"version": version.number, "version_id": version.id,
                    "manifest_digest": version.manifest_digest, "signing_key_id": self.ctx.signer.key_id},
                   event="version-registered")
        return version

    def abort(self, caller: Caller, project: str, model_name: str, number: int) -> None:
        """Drop a draft: its uploads stop, its staged and stored bytes become garbage."""
        require(caller, WRITE)
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, model_name)
            version = load_version(tx, model, number, DRAFT)
            uploads = tx.list_uploads(version.id)
            for upload in uploads:
                upload.state, upload.updated_at = UploadState.ABORTED, self.ctx.clock()
                tx.update_upload(upload)
            tx.delete_files(version.id)
            version.state = VersionState.DELETED
            tx.update_version(version)
            record(self.ctx, tx, caller, "version.draft-aborted", model, subject_of(model, version),
                   {"version": number})
        for upload in uploads:
            self.ctx.artifacts.discard_staging(upload.id)


def _limited(chunks: Iterable[bytes], remaining: int, path: str) -> Iterator[bytes]:
    for chunk in chunks:
        remaining -= len(chunk)
        if remaining < 0:
            raise InvalidArgument(f"file {path!r}: more bytes were sent than the declared size")
        yield chunk
