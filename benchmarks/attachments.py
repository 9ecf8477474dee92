"""Job-attachment downloads: farmhand against the official library and plain boto3.

One S3 server on loopback (its own process: moto, or with ``--s3 lean`` the
read-only endpoint of benchmarks/_s3lean.py) holds N small files and one
large file, uploaded once by hash as job attachments store them. Then each
contender, in its own process (peak RSS from wait4; the time is the transfer's,
measured inside the process, without interpreter start-up and imports),
downloads the same manifest into an empty directory:

- farmhand: ``agent.attachments.download_files`` (Trio, boto3 in threads,
  streaming, every file's xxh128 verified);
- official: ``deadline.job_attachments.download.download_files_from_manifests``,
  the function the official worker agent's download script calls;
- boto3: ``client.download_file`` per file in a ``ThreadPoolExecutor`` (16
  threads), no hashing: the floor for this endpoint.

Hashing: ``agent.attachments.hash_file_sync`` over the large file against
``xxhsum -H2`` (apt package ``xxhash``), when it is installed, both warm.

    python -m benchmarks.attachments [--small-count 2000] [--small-kib 64]
        [--large-mib 512] [--repeat 1] [--contenders farmhand,official,boto3]
        [--s3 moto|lean]

Targets (issue 11): farmhand at least 2x the official path for the small
files, within 1.2x of boto3 for the large file, peak RSS at most 100 MiB,
hashing within 1.5x of xxhsum. moto's S3 serves requests from one Python
process, so it can be the bottleneck for every contender: the client CPU
seconds column shows what each client itself costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    Measurement,
    add_json_option,
    run_measured,
    table,
    write_results,
)

BUCKET = "farmhand-bench"
PREFIX = "DeadlineCloud"
REGION = "us-west-2"
ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDBENCH",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCOUNT_ID": "123456789012",
    "DEADLINE_CLOUD_TELEMETRY_OPT_OUT": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto server did not start")


def client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        config=Config(max_pool_connections=32, response_checksum_validation="when_required"),
    )


def start_lean(port: int, root: Path) -> subprocess.Popen[bytes]:
    """The lean read-only endpoint (benchmarks/_s3lean.py) over ``root``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._s3lean", str(root), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    if process.stdout.readline() != b"ready\n":
        process.kill()
        raise RuntimeError("the lean S3 endpoint did not start")
    return process


def seed(
    endpoint: str, work: Path, count: int, kib: int, large_mib: int, lean_root: Path | None
) -> dict[str, Path]:
    """Store the data by hash (through S3, or as files under ``lean_root`` for the lean
    endpoint); write one manifest per data set. Returns manifest paths."""
    import xxhash

    from agent.attachments import Manifest, ManifestPath

    s3 = client(endpoint)
    if lean_root is None:
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    else:
        (lean_root / BUCKET / PREFIX / "Data").mkdir(parents=True)
    small: list[ManifestPath] = []
    for index in range(count):
        data = os.urandom(kib * 1024)
        digest = xxhash.xxh3_128_hexdigest(data)
        if lean_root is None:
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/Data/{digest}.xxh128", Body=data)
        else:
            (lean_root / BUCKET / PREFIX / "Data" / f"{digest}.xxh128").write_bytes(data)
        small.append(
            ManifestPath(
                f"small/{index // 100:03d}/f{index:05d}.bin",
                digest,
                len(data),
                1_700_000_000_000_000,
            )
        )
    manifests = {}
    path = work / "small.manifest"
    path.write_text(Manifest.from_paths(small).encode())
    manifests["small"] = path
    if large_mib:
        big = work / "big.source"
        hasher = xxhash.xxh3_128()
        with big.open("wb") as out:
            for _ in range(large_mib):
                block = os.urandom(1 << 20)
                hasher.update(block)
                out.write(block)
        digest = hasher.hexdigest()
        if lean_root is None:
            s3.upload_file(str(big), BUCKET, f"{PREFIX}/Data/{digest}.xxh128")
        else:
            shutil.copyfile(big, lean_root / BUCKET / PREFIX / "Data" / f"{digest}.xxh128")
        entry = ManifestPath("large/render.exr", digest, large_mib << 20, 1_700_000_000_000_000)
        path = work / "large.manifest"
        path.write_text(Manifest.from_paths([entry]).encode())
        manifests["large"] = path
        manifests["large-source"] = big
    return manifests


# ------------------------------------------------------------------ contenders (child processes)


def run_farmhand(endpoint: str, manifest: Path, dest: Path) -> None:
    import trio

    from agent.attachments import (
        S3Settings,
        S3Transfers,
        decode_manifest,
        download_files,
        make_s3_client,
    )

    async def main() -> None:
        transfers = S3Transfers(make_s3_client(region=REGION, endpoint_url=endpoint), BUCKET)
        await download_files(
            transfers, S3Settings(BUCKET, PREFIX), [(decode_manifest(manifest.read_text()), dest)]
        )

    trio.run(main)


def run_official(endpoint: str, manifest: Path, dest: Path) -> None:
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    os.environ["AWS_ENDPOINT_URL_STS"] = endpoint
    import boto3
    from deadline.job_attachments.asset_manifests.decode import decode_manifest
    from deadline.job_attachments.download import download_files_from_manifests

    download_files_from_manifests(
        BUCKET,
        {str(dest): decode_manifest(manifest.read_text())},
        cas_prefix=f"{PREFIX}/Data",
        session=boto3.session.Session(),
    )


def run_boto3(endpoint: str, manifest: Path, dest: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    s3 = client(endpoint)
    paths = json.loads(manifest.read_text())["paths"]

    def one(entry: dict[str, Any]) -> None:
        target = dest / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(BUCKET, f"{PREFIX}/Data/{entry['hash']}.xxh128", str(target))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, paths))


CONTENDERS = {"farmhand": run_farmhand, "official": run_official, "boto3": run_boto3}


# ------------------------------------------------------------------ driver


#: Client CPU seconds (user + system) per "data set:contender", one per run.
CPU_BY_NAME: dict[str, list[float]] = {}


def run_child(argv: list[str], cpu_key: str | None = None) -> Measurement:
    """Run a child that prints its own transfer time; (that time, peak RSS from wait4)."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv[3:6])} failed")
    if cpu_key is not None:
        CPU_BY_NAME.setdefault(cpu_key, []).append(usage.ru_utime + usage.ru_stime)
    return Measurement(float(output.split()[-1]), usage.ru_maxrss / 1024)


def measure_downloads(
    names: list[str], data_set: str, endpoint: str, manifest: Path, work: Path, repeat: int
) -> dict[str, Measurement]:
    """Each contender ``repeat`` times, the order rotated each round, so that none always
    goes first (on this VM whoever first writes fresh pages after a pause pays for them
    in system time); the median seconds and the largest peak RSS of each."""

    def once(name: str) -> Measurement:
        dest = Path(tempfile.mkdtemp(dir=work, prefix=f"{name}-"))
        argv = [
            sys.executable,
            "-m",
            "benchmarks.attachments",
            "--child",
            name,
            endpoint,
            str(manifest),
            str(dest),
        ]
        try:
            return run_child(argv, f"{data_set}:{name}")
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    runs: dict[str, list[Measurement]] = {name: [] for name in names}
    for round_ in range(repeat):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(once(name))
    return {
        name: Measurement(statistics.median(m.seconds for m in ms), max(m.peak_rss_mib for m in ms))
        for name, ms in runs.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small-count", type=int, default=2000)
    parser.add_argument("--small-kib", type=int, default=64)
    parser.add_argument("--large-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--contenders", default="farmhand,official,boto3")
    parser.add_argument(
        "--s3",
        choices=("moto", "lean"),
        default="moto",
        help="the endpoint: moto's S3 server, or benchmarks/_s3lean.py (read-only, files "
        "served with sendfile), which leaves the two cores to the clients being measured",
    )
    add_json_option(parser, "attachments")
    parser.add_argument(
        "--child", nargs=4, metavar=("NAME", "ENDPOINT", "MANIFEST", "DEST"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    os.environ.update(ENV)
    if args.child:
        name, endpoint, manifest, dest = args.child
        if name == "hash":
            from agent.attachments import hash_file_sync

            start = time.perf_counter()
            hash_file_sync(Path(manifest))
            print(f"{time.perf_counter() - start:.6f}")
            return 0
        start = time.perf_counter()
        CONTENDERS[name](endpoint, Path(manifest), Path(dest))
        print(f"{time.perf_counter() - start:.6f}")
        return 0

    contenders = [c for c in args.contenders.split(",") if c]
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-attachments-") as tmp:
        work = Path(tmp)
        lean_root = work / "s3" if args.s3 == "lean" else None
        if lean_root is not None:
            lean_root.mkdir()
        server = start_moto(port) if lean_root is None else start_lean(port, lean_root)
        try:
            print(
                f"seeding {args.small_count} × {args.small_kib} KiB and {args.large_mib} MiB into {args.s3} S3 ...",
                flush=True,
            )
            manifests = seed(
                endpoint, work, args.small_count, args.small_kib, args.large_mib, lean_root
            )
            rows: list[list[object]] = [
                [
                    "data set",
                    "contender",
                    "seconds",
                    "MiB/s",
                    "files/s",
                    "peak RSS MiB",
                    "client CPU s",
                    "vs official",
                    "vs boto3",
                ]
            ]
            results: dict[tuple[str, str], Measurement] = {}
            recorded: list[dict[str, Any]] = []
            hashing: dict[str, float | None] | None = None
            sets = [("small", args.small_count, args.small_count * args.small_kib / 1024)]
            if args.large_mib:
                sets.append(("large", 1, float(args.large_mib)))
            for data_set, files, mib in sets:
                measured = measure_downloads(
                    contenders, data_set, endpoint, manifests[data_set], work, args.repeat
                )
                for name in contenders:
                    m = measured[name]
                    results[(data_set, name)] = m
                    cpu = statistics.median(CPU_BY_NAME[f"{data_set}:{name}"])
                    recorded.append(
                        {
                            "data_set": data_set,
                            "files": files,
                            "mib": mib,
                            "contender": name,
                            "seconds": m.seconds,
                            "peak_rss_mib": m.peak_rss_mib,
                            "cpu_seconds": cpu,
                        }
                    )
                    print(
                        f"  {data_set:5} {name:8} {m.seconds:7.2f} s  {m.peak_rss_mib:6.1f} MiB RSS  {cpu:.2f} CPU s",
                        flush=True,
                    )
                for name in contenders:
                    m = results[(data_set, name)]
                    off = results.get((data_set, "official"))
                    b3 = results.get((data_set, "boto3"))
                    rows.append(
                        [
                            f"{files} × {mib / files:.3g} MiB",
                            name,
                            f"{m.seconds:.2f}",
                            f"{mib / m.seconds:.1f}",
                            f"{files / m.seconds:.0f}",
                            f"{m.peak_rss_mib:.0f}",
                            f"{statistics.median(CPU_BY_NAME[f'{data_set}:{name}']):.2f}",
                            f"{off.seconds / m.seconds:.2f}× faster" if off else "",
                            f"{m.seconds / b3.seconds:.2f}× its time" if b3 else "",
                        ]
                    )
            print()
            print(table(rows))
            if args.large_mib:
                source = manifests["large-source"]
                xxhsum = shutil.which("xxhsum")
                argv = [
                    sys.executable,
                    "-m",
                    "benchmarks.attachments",
                    "--child",
                    "hash",
                    "-",
                    str(source),
                    "-",
                ]
                # Warm the page cache, then alternate the two so load changes hit both.
                with source.open("rb") as warm:
                    while warm.read(1 << 24):
                        pass
                ours_runs: list[float] = []
                theirs_runs: list[float] = []
                empty = work / "empty"
                empty.write_bytes(b"")
                for _ in range(5):
                    ours_runs.append(run_child(argv).seconds)
                    if xxhsum:
                        theirs_runs.append(run_measured([xxhsum, "-H2", str(source)]).seconds)
                        # xxhsum's own start-up, taken out as Python's is for ours.
                        theirs_runs[-1] -= run_measured([xxhsum, "-H2", str(empty)]).seconds
                ours_s = statistics.median(ours_runs)
                hashing = {
                    "mib": args.large_mib,
                    "farmhand_seconds": ours_s,
                    "xxhsum_seconds": statistics.median(theirs_runs) if theirs_runs else None,
                }
                line = f"\nhashing {args.large_mib} MiB (warm page cache, median of 5): farmhand hash_file_sync {ours_s:.3f} s ({args.large_mib / ours_s:.0f} MiB/s)"
                if xxhsum:
                    theirs_s = max(1e-6, statistics.median(theirs_runs))
                    line += f"; xxhsum -H2 {theirs_s:.3f} s without its start-up ({args.large_mib / theirs_s:.0f} MiB/s); ratio {ours_s / theirs_s:.2f}× (target ≤ 1.5×)"
                else:
                    line += "; xxhsum not installed (apt package xxhash), no ratio"
                print(line)
        finally:
            server.terminate()
            server.wait()
    write_results(
        args.json,
        "attachments",
        parameters={
            "small_count": args.small_count,
            "small_kib": args.small_kib,
            "large_mib": args.large_mib,
            "repeat": args.repeat,
            "s3": args.s3,
        },
        results={"downloads": recorded, "hashing": hashing},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
