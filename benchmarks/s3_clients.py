#!/usr/bin/env python3
"""Which S3 client the object-storage target uses (decision 0035): upload rates of obstore and boto3.

Starts its own SeaweedFS S3 server (``heros_archiver.testing.servers.S3Server``, data in a scratch folder
under ``--dir``), then, in one run and in alternating rounds (so that a drift of the machine or the store
hits both alike), uploads ``--n`` objects of ``--size-mib`` MiB with each client, one request at a time from
one thread, as an archiver's writer does:

* ``create``: conditional create (obstore ``put(mode="create")``, boto3 ``put_object(IfNoneMatch="*")``),
  what ``on_exists="error"`` and ``"unique"`` use;
* ``overwrite``: a plain PUT (``on_exists="overwrite"``);
* ``multipart``: objects of ``--large-mib`` MiB as a single conditional PUT and as a multipart upload of
  ``--part-mib`` parts completed with ``If-None-Match: *`` (boto3; obstore cannot combine the two), to choose
  the size from which multipart pays.

    python benchmarks/s3_clients.py [--n 150] [--size-mib 2] [--rounds 3] [--large-mib 64]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from heros_archiver.testing.servers import S3Server

BUCKET = "bench"


def obstore_store(server: S3Server) -> Any:
    return server.obstore_client(BUCKET)


def rate(label: str, count: int, size: int, seconds: float) -> dict[str, Any]:
    return {"label": label, "objects_s": count / seconds, "mib_s": count * size / seconds / 2**20}


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def small_round(server: S3Server, data: bytes, n: int, round_no: int) -> dict[str, float]:
    """Seconds per client and mode for ``n`` objects of ``data``."""
    import obstore

    store = obstore_store(server)
    s3 = server.boto3_client()
    seconds: dict[str, float] = {}

    def obstore_create() -> None:
        for i in range(n):
            obstore.put(store, f"r{round_no}/obstore-create/{i}.npy", data, mode="create", use_multipart=False)

    def obstore_overwrite() -> None:
        for i in range(n):
            obstore.put(store, f"r{round_no}/obstore-overwrite/{i % 8}.npy", data, use_multipart=False)

    def boto3_create() -> None:
        for i in range(n):
            s3.put_object(Bucket=BUCKET, Key=f"r{round_no}/boto3-create/{i}.npy", Body=data, IfNoneMatch="*")

    def boto3_overwrite() -> None:
        for i in range(n):
            s3.put_object(Bucket=BUCKET, Key=f"r{round_no}/boto3-overwrite/{i % 8}.npy", Body=data)

    runs = {
        "obstore create": obstore_create,
        "boto3 create": boto3_create,
        "obstore overwrite": obstore_overwrite,
        "boto3 overwrite": boto3_overwrite,
    }
    order = list(runs) if round_no % 2 == 0 else list(reversed(runs))
    for name in order:
        seconds[name] = timed(runs[name])
    return seconds


def large_round(server: S3Server, data: bytes, part: int, round_no: int) -> dict[str, float]:
    """Seconds for one large object: single conditional PUT (each client) and boto3 multipart (4 threads)."""
    import obstore

    store = obstore_store(server)
    s3 = server.boto3_client()
    view = memoryview(data)

    def obstore_single() -> None:
        obstore.put(store, f"r{round_no}/large-obstore", data, mode="create", use_multipart=False)

    def boto3_single() -> None:
        s3.put_object(Bucket=BUCKET, Key=f"r{round_no}/large-boto3", Body=data, IfNoneMatch="*")

    def boto3_multipart() -> None:
        key = f"r{round_no}/large-multipart"
        upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        offsets = range(0, len(data), part)

        def send(number_offset: tuple[int, int]) -> dict[str, Any]:
            number, offset = number_offset
            body = view[offset : offset + part].tobytes()
            etag = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=body)["ETag"]
            return {"PartNumber": number, "ETag": etag}

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            parts = list(pool.map(send, enumerate(offsets, start=1)))
        s3.complete_multipart_upload(
            Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
        )

    runs = {"obstore single PUT": obstore_single, "boto3 single PUT": boto3_single, "boto3 multipart": boto3_multipart}
    order = list(runs) if round_no % 2 == 0 else list(reversed(runs))
    return {name: timed(runs[name]) for name in order}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the server keeps its data")
    parser.add_argument("--n", type=int, default=150, help="objects per client, mode and round")
    parser.add_argument("--size-mib", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--large-mib", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--part-mib", type=int, default=16)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(dir=args.dir, prefix="s3-clients-"))
    size = int(args.size_mib * 2**20)
    data = os.urandom(size)
    try:
        with S3Server(scratch) as server:
            server.create_bucket(BUCKET)
            small_round(server, data, 5, -1)  # warm-up: connections, volumes
            totals: dict[str, list[float]] = {}
            for round_no in range(args.rounds):
                for name, seconds in small_round(server, data, args.n, round_no).items():
                    totals.setdefault(name, []).append(seconds)
            print(f"# {args.n} objects of {args.size_mib} MiB per client, mode and round; {args.rounds} rounds")
            print(f"{'client and mode':<22} {'objects/s (median)':>18} {'MiB/s':>8}  per round objects/s")
            for name, values in totals.items():
                per_round = [args.n / s for s in values]
                median = statistics.median(per_round)
                print(
                    f"{name:<22} {median:>18.1f} {median * size / 2**20:>8.1f}  "
                    + " ".join(f"{v:.1f}" for v in per_round)
                )
            for large in args.large_mib:
                big = os.urandom(large << 20)
                large_totals: dict[str, list[float]] = {}
                for round_no in range(args.rounds):
                    for name, seconds in large_round(server, big, args.part_mib << 20, round_no + 100 * large).items():
                        large_totals.setdefault(name, []).append(seconds)
                print(f"# one object of {large} MiB ({args.part_mib} MiB parts, 4 threads), median of {args.rounds}")
                for name, values in large_totals.items():
                    print(f"{name:<22} {large / statistics.median(values):>8.1f} MiB/s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
