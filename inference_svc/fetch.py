"""What a worker reads from the optimizer's storage: the start model and checkpoints.

Each is read in place when this worker sees the same bytes at the optimizer's path
(shared storage, or the same image), and streamed over gRPC otherwise: the start
model into the cache, one folder per content hash, checked file by file; a
checkpoint into a temporary file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from hatchery.core.checkpoint import Checkpoint, checkpoint_path
from hatchery.core.model import cache_dir
from hatchery.core.start import ModelFile, file_sha256, folder_files, folder_sha256
from hatchery.v1 import optimizer_pb2 as pb
from hatchery.v1 import optimizer_pb2_grpc

STREAM_TIMEOUT = 600.0


def _receive(chunks: Iterable[pb.CheckpointChunk], path: Path, size: int) -> None:
    """Writes a streamed file, refusing chunks out of order or of another file's size."""
    received = 0
    with open(path, "wb") as f:
        for chunk in chunks:
            if chunk.offset != received or chunk.size_bytes != size:
                raise RuntimeError(f"{path.name}: stream out of order at byte {received}")
            f.write(chunk.data)
            received += len(chunk.data)
    if received != size:
        raise RuntimeError(f"{path.name}: stream ended at {received} of {size} bytes")


def start_model(optimizer: optimizer_pb2_grpc.OptimizerServiceStub, joined: pb.JoinResponse,
                always_fetch: bool = False) -> Path:
    """The folder holding the run's start model, with exactly the files the optimizer listed."""
    shared = Path(joined.base_model_path)
    if not joined.base_model_files:  # an optimizer that lists no files: trust the path
        return shared
    wanted = [ModelFile(f.name, f.size_bytes, f.sha256) for f in joined.base_model_files]
    if not always_fetch and shared.is_dir() and folder_files(shared) == wanted:
        return shared
    copy = cache_dir() / "models" / f"sha256-{folder_sha256(wanted)}"
    if copy.is_dir() and folder_files(copy) == wanted:
        return copy
    copy.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{copy.name}.", dir=copy.parent))
    try:
        for f in wanted:
            path = tmp / f.name
            _receive(optimizer.FetchModelFile(pb.FetchModelFileRequest(name=f.name), timeout=STREAM_TIMEOUT),
                     path, f.size_bytes)
            if file_sha256(path) != f.sha256:
                raise RuntimeError(f"{f.name}: streamed bytes do not match the optimizer's sha256")
        shutil.rmtree(copy, ignore_errors=True)  # an incomplete or stale copy
        os.replace(tmp, copy)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return copy


@contextlib.contextmanager
def checkpoint(optimizer: optimizer_pb2_grpc.OptimizerServiceStub, info: pb.CheckpointInfo,
               always_fetch: bool = False) -> Iterator[Checkpoint]:
    """The checkpoint file: read in place when visible here, else streamed into a temporary file."""
    shared = Path(info.path)
    if not always_fetch and shared.is_file() and shared.stat().st_size == info.size_bytes:
        yield Checkpoint(info.generation, shared)
        return
    with tempfile.TemporaryDirectory(prefix="hatchery-ckpt-") as tmp:
        path = checkpoint_path(Path(tmp), info.generation)
        _receive(optimizer.FetchCheckpoint(pb.FetchCheckpointRequest(generation=info.generation),
                                           timeout=STREAM_TIMEOUT), path, info.size_bytes)
        yield Checkpoint(info.generation, path)
