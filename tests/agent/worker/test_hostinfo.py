"""Host facts: nvidia-smi parsing and its failures, addresses, and the capabilities sent."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import namedtuple
from pathlib import Path

import psutil
import pytest
import structlog.testing
import trio
import trio.testing

import agent.worker._hostinfo as hostinfo_module
from agent.worker._hostinfo import (
    NVIDIA_SMI_QUERY,
    NVIDIA_SMI_TIMEOUT,
    Capabilities,
    GpuInfo,
    HostProperties,
    cpu_arch,
    ip_addresses,
    normalize_ipv6,
    os_family,
    parse_nvidia_smi,
    probe_gpus,
    probe_host,
)

SMI = Path(__file__).resolve().parents[2] / "data" / "nvidia-smi"
Addr = namedtuple("Addr", "family address netmask broadcast ptp")


# --- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "count", "min_memory"),
    [
        ("one-h100.csv", 1, 81559),
        ("eight-t4.csv", 8, 15360),
        ("mixed-crlf.csv", 2, 12288),
        ("disabled-na.csv", 1, 0),
        ("not-supported.csv", 2, 81559),
        ("driver-failure.txt", 0, 0),
    ],
)
def test_fixtures_give_count_and_smallest_memory(fixture: str, count: int, min_memory: int) -> None:
    """Each fixture yields the GPU count and the smallest known GPU memory in MiB."""
    report = parse_nvidia_smi((SMI / fixture).read_bytes().decode())
    assert (report.count, report.min_memory_mib) == (count, min_memory)


def test_rows_keep_index_memory_and_name() -> None:
    """A row's index, memory and name (commas in the name included) are kept."""
    report = parse_nvidia_smi("0, 81559, NVIDIA H100 80GB HBM3\n1, 1024 MiB, Odd, Name\n")
    assert report.gpus == (
        GpuInfo(0, 81559, "NVIDIA H100 80GB HBM3"),
        GpuInfo(1, 1024, "Odd, Name"),
    )
    assert report.unreadable == ()


@pytest.mark.parametrize("value", ["[N/A]", "[Not Supported]", "[Insufficient Permissions]", ""])
def test_unknown_memory_counts_the_gpu_but_not_its_memory(value: str) -> None:
    """A GPU whose memory is not a number is counted; the minimum is over the others (#536)."""
    report = parse_nvidia_smi(f"0, {value}, A\n1, 2048, B\n")
    assert report.count == 2
    assert report.gpus[0].memory_mib is None
    assert report.min_memory_mib == 2048


@pytest.mark.parametrize(
    "text", ["", "\n\n", "garbage", "No devices were found", "x, 1, y", "8\n8\n8\n"]
)
def test_garbage_gives_no_gpus(text: str) -> None:
    """Output that holds no GPU row gives no GPUs, keeping what it could not read."""
    report = parse_nvidia_smi(text)
    assert (report.count, report.min_memory_mib) == (0, 0)
    assert report.unreadable == tuple(line for line in text.splitlines() if line.strip())


# --- running nvidia-smi ----------------------------------------------------------------------------


def fake_smi(directory: Path, body: str) -> Path:
    """An executable ``nvidia-smi`` shell script in ``directory``."""
    path = directory / "nvidia-smi"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def smi_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory first on PATH, where a test puts its fake nvidia-smi."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")
    return directory


async def test_the_query_is_passed_and_parsed(smi_dir: Path) -> None:
    """nvidia-smi gets NVIDIA_SMI_QUERY and its rows become the report."""
    fake_smi(
        smi_dir,
        f'[ "$*" = "{" ".join(NVIDIA_SMI_QUERY)}" ] || exit 3\ncat {SMI / "eight-t4.csv"}',
    )
    with structlog.testing.capture_logs() as logs:
        report = await probe_gpus()
    assert (report.count, report.min_memory_mib) == (8, 15360)
    assert logs == []


async def test_a_missing_nvidia_smi_is_said_once_at_info(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No nvidia-smi (a host without NVIDIA GPUs): no GPUs, no exception, one info line
    the first time and nothing after."""
    monkeypatch.setattr(hostinfo_module, "_said_no_nvidia_smi", False)
    with structlog.testing.capture_logs() as logs:
        report = await probe_gpus(str(tmp_path / "nvidia-smi"))
        again = await probe_gpus(str(tmp_path / "nvidia-smi"))
    assert report.count == 0 and again.count == 0
    assert logs == [
        {
            "event": "hostinfo.no_nvidia_smi",
            "log_level": "info",
            "note": "nvidia-smi is not installed",
            "gpus": 0,
        }
    ]


async def test_an_unrunnable_nvidia_smi_is_a_warning(tmp_path: Path) -> None:
    """An nvidia-smi that cannot be executed (no x bit) is a warning, no exception."""
    path = tmp_path / "nvidia-smi"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o644)
    with structlog.testing.capture_logs() as logs:
        report = await probe_gpus(str(path))
    assert report.count == 0
    assert [log["event"] for log in logs] == ["hostinfo.gpu_probe_failed"]
    assert logs[0]["reason"].startswith("cannot run nvidia-smi: [Errno 13] Permission denied")


async def test_a_failing_nvidia_smi_is_a_warning_with_its_output(smi_dir: Path) -> None:
    """A non-zero exit is a warning carrying the status and what nvidia-smi said."""
    fake_smi(smi_dir, f"cat {SMI / 'driver-failure.txt'}\nexit 9")
    with structlog.testing.capture_logs() as logs:
        report = await probe_gpus()
    assert report.count == 0
    assert logs == [
        {
            "event": "hostinfo.gpu_probe_failed",
            "log_level": "warning",
            "reason": "nvidia-smi exited with status 9",
            "output": (SMI / "driver-failure.txt").read_text().strip(),
            "gpus": 0,
        }
    ]


async def test_garbage_output_is_a_warning(smi_dir: Path) -> None:
    """Output with lines that are not GPU rows is a warning quoting them; valid rows still count."""
    fake_smi(smi_dir, "echo 'Failed to initialize NVML: Unknown Error'\necho '0, 512, Tiny'")
    with structlog.testing.capture_logs() as logs:
        report = await probe_gpus()
    assert (report.count, report.min_memory_mib) == (1, 512)
    assert logs == [
        {
            "event": "hostinfo.gpu_output_unreadable",
            "log_level": "warning",
            "lines": ["Failed to initialize NVML: Unknown Error"],
            "gpus": 1,
        }
    ]


async def test_unknown_gpu_memory_is_a_warning(smi_dir: Path) -> None:
    """A GPU reporting ``[N/A]`` memory is named in a warning."""
    fake_smi(smi_dir, f"cat {SMI / 'not-supported.csv'}")
    with structlog.testing.capture_logs() as logs:
        report = await probe_gpus()
    assert report.count == 2
    assert [(log["event"], log.get("gpu_indexes")) for log in logs] == [
        ("hostinfo.gpu_memory_unknown", [1])
    ]


async def test_a_hanging_nvidia_smi_is_abandoned_after_the_timeout(
    smi_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """nvidia-smi that never answers is killed after NVIDIA_SMI_TIMEOUT; a warning, no GPUs."""
    fake_smi(smi_dir, "exec sleep 600")
    real_start, start = time.monotonic(), trio.current_time()
    with structlog.testing.capture_logs() as logs:
        report = await probe_gpus()
    virtual = trio.current_time() - start
    assert report.count == 0
    assert virtual == NVIDIA_SMI_TIMEOUT
    assert time.monotonic() - real_start < 5
    assert logs == [
        {
            "event": "hostinfo.gpu_probe_failed",
            "log_level": "warning",
            "reason": f"nvidia-smi did not finish in {NVIDIA_SMI_TIMEOUT:g} s",
            "gpus": 0,
        }
    ]


# --- host properties -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("::1", "0000:0000:0000:0000:0000:0000:0000:0001"),
        ("fe80::1ff:fe23:4567:890a%eth0", "FE80:0000:0000:0000:01FF:FE23:4567:890A"),
        ("2001:db8::8a2e:370:7334", "2001:0DB8:0000:0000:0000:8A2E:0370:7334"),
        ("::ffff:192.0.2.1", "0000:0000:0000:0000:0000:FFFF:C000:0201"),
    ],
)
def test_ipv6_is_expanded_upper_case_without_zone(address: str, expected: str) -> None:
    """IPv6 addresses take the form the Deadline API's pattern requires."""
    assert normalize_ipv6(address) == expected


def test_addresses_from_every_interface_loopback_included() -> None:
    """IPv4 and IPv6 of every interface (loopback too, as the official agent) are sorted, unique."""
    interfaces = {
        "lo": [
            Addr(socket.AF_INET, "127.0.0.1", None, None, None),
            Addr(socket.AF_INET6, "::1", None, None, None),
        ],
        "eth0": [
            Addr(psutil.AF_LINK, "52:54:00:12:34:56", None, None, None),
            Addr(socket.AF_INET, "10.0.0.7", None, None, None),
            Addr(socket.AF_INET6, "fe80::1%eth0", None, None, None),
        ],
        "eth1": [Addr(socket.AF_INET6, "fe80::1%eth1", None, None, None)],
    }
    ipv4, ipv6 = ip_addresses(interfaces)
    assert ipv4 == ("10.0.0.7", "127.0.0.1")
    assert ipv6 == (
        "0000:0000:0000:0000:0000:0000:0000:0001",
        "FE80:0000:0000:0000:0000:0000:0000:0001",
    )


def test_an_unparsable_address_is_skipped_with_a_warning() -> None:
    """An address Python cannot parse is left out with a warning naming it."""
    interfaces = {"weird0": [Addr(socket.AF_INET6, "not-an-address", None, None, None)]}
    with structlog.testing.capture_logs() as logs:
        assert ip_addresses(interfaces) == ((), ())
    assert logs[0]["event"] == "hostinfo.bad_address"
    assert logs[0]["address"] == "not-an-address"


def test_host_properties_wire_form() -> None:
    """``to_api`` gives CreateWorker's hostProperties; a missing host name is left out."""
    props = HostProperties("render-01", ("10.0.0.7",), ("0000:0000:0000:0000:0000:0000:0000:0001",))
    assert props.to_api() == {
        "hostName": "render-01",
        "ipAddresses": {
            "ipV4Addresses": ["10.0.0.7"],
            "ipV6Addresses": ["0000:0000:0000:0000:0000:0000:0000:0001"],
        },
    }
    assert "hostName" not in HostProperties(None).to_api()


# --- capabilities ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "arch"),
    [("x86_64", "x86_64"), ("AMD64", "x86_64"), ("aarch64", "arm64"), ("arm64", "arm64"),
     ("ppc64le", "ppc64le")],
)  # fmt: skip
def test_cpu_arch_uses_openjd_names(machine: str, arch: str) -> None:
    """``aarch64`` is ``arm64`` and ``AMD64`` is ``x86_64``; others pass through lower-case."""
    assert cpu_arch(machine) == arch


@pytest.mark.parametrize(
    ("system", "family"),
    [("Linux", "linux"), ("Darwin", "macos"), ("Windows", "windows"), ("FreeBSD", None)],
)
def test_os_family_uses_openjd_names(system: str, family: str | None) -> None:
    """``platform.system()`` maps to the OpenJD OS family; unknown systems have none."""
    assert os_family(system) == family


async def test_probe_host_reports_this_host(smi_dir: Path) -> None:
    """The probe reports this host's CPUs, memory, scratch space, OS, arch and GPUs."""
    fake_smi(smi_dir, f"cat {SMI / 'mixed-crlf.csv'}")
    facts = await probe_host(scratch_dir=Path(sys.prefix))
    amounts = facts.capabilities.amounts
    assert amounts["amount.worker.vcpu"] == psutil.cpu_count()
    assert amounts["amount.worker.memory"] == psutil.virtual_memory().total // 2**20
    free = psutil.disk_usage(sys.prefix).free // 2**20
    assert abs(amounts["amount.worker.disk.scratch"] - free) < 1024
    assert (amounts["amount.worker.gpu"], amounts["amount.worker.gpu.memory"]) == (2, 12288)
    assert facts.capabilities.attributes == {
        "attr.worker.os.family": (os_family(),),
        "attr.worker.cpu.arch": (cpu_arch(),),
    }
    assert facts.host_properties.host_name == socket.gethostname()
    assert "127.0.0.1" in facts.host_properties.ipv4_addresses


async def test_scratch_of_a_missing_directory_uses_its_parent(tmp_path: Path) -> None:
    """A session root that does not exist yet is measured on its nearest existing parent."""
    facts = await probe_host(scratch_dir=tmp_path / "not" / "yet", overrides=_GPUS_CONFIGURED)
    free = psutil.disk_usage(str(tmp_path)).free // 2**20
    assert abs(facts.capabilities.amounts["amount.worker.disk.scratch"] - free) < 1024


_GPUS_CONFIGURED = Capabilities({"amount.worker.gpu": 1, "amount.worker.gpu.memory": 1000})


async def test_configured_capabilities_win_and_skip_nvidia_smi(smi_dir: Path) -> None:
    """Configured values override detected ones per name; with both GPU amounts set,
    nvidia-smi is not run at all."""
    marker = smi_dir / "ran"
    fake_smi(smi_dir, f"touch {marker}\ncat {SMI / 'eight-t4.csv'}")
    overrides = Capabilities(
        {**_GPUS_CONFIGURED.amounts, "amount.worker.vcpu": 3, "amount.slots": 2},
        {"attr.worker.os.family": ["windows"]},
    )
    facts = await probe_host(overrides=overrides)
    assert not marker.exists()
    assert facts.gpus is None
    amounts = facts.capabilities.amounts
    assert (amounts["amount.worker.gpu"], amounts["amount.worker.gpu.memory"]) == (1, 1000)
    assert (amounts["amount.worker.vcpu"], amounts["amount.slots"]) == (3, 2)
    assert amounts["amount.worker.memory"] == psutil.virtual_memory().total // 2**20
    assert facts.capabilities.attributes["attr.worker.os.family"] == ("windows",)

    only_count = Capabilities({"amount.worker.gpu": 1})
    facts = await probe_host(overrides=only_count)
    assert marker.exists()
    assert facts.capabilities.amounts["amount.worker.gpu"] == 1
    assert facts.capabilities.amounts["amount.worker.gpu.memory"] == 15360


async def test_failing_probes_are_warnings_and_gpus_default_to_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe that raises leaves its amount out with a warning; missing GPUs report 0."""

    def broken() -> None:
        raise OSError("no /proc here")

    monkeypatch.setattr(psutil, "virtual_memory", broken)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: None)
    monkeypatch.setattr(psutil, "net_if_addrs", broken)
    monkeypatch.setattr(hostinfo_module, "_said_no_nvidia_smi", False)
    with structlog.testing.capture_logs() as logs:
        facts = await probe_host(nvidia_smi=str(tmp_path / "absent"))
    amounts = facts.capabilities.amounts
    assert "amount.worker.memory" not in amounts
    assert "amount.worker.vcpu" not in amounts
    assert (amounts["amount.worker.gpu"], amounts["amount.worker.gpu.memory"]) == (0, 0)
    assert facts.host_properties.ipv4_addresses == ()
    warned = {(log["event"], log.get("fact")) for log in logs}
    assert warned == {
        ("hostinfo.probe_failed", "amount.worker.memory"),
        ("hostinfo.probe_failed", "amount.worker.vcpu"),
        ("hostinfo.probe_failed", "ipAddresses"),
        ("hostinfo.no_nvidia_smi", None),
    }
