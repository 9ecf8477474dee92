"""Host facts for CreateWorker and UpdateWorker: host properties and capabilities.

``probe_host()`` gathers what the official agent detects
(``capabilities.py``, ``startup/host_properties.py``):

- ``hostProperties``: ``hostName`` from ``socket.gethostname()`` and every address
  of every interface from ``psutil.net_if_addrs()``, loopback included. IPv6
  addresses are fully expanded, upper-case and without a zone id, as the API's
  pattern wants.
- amounts: ``amount.worker.vcpu`` (logical CPUs), ``amount.worker.memory`` (MiB,
  rounded down), ``amount.worker.disk.scratch`` (free MiB on ``/`` unless the
  caller names another directory), ``amount.worker.gpu`` (GPUs nvidia-smi lists)
  and ``amount.worker.gpu.memory`` (the smallest GPU's MiB; GPUs whose memory is
  ``[N/A]`` or another non-number are left out of the minimum, as the official
  agent does after its fixes for #435 and #536/#574).
- attributes: ``attr.worker.os.family`` (linux, macos, windows) and
  ``attr.worker.cpu.arch`` (x86_64, arm64; other machines pass through lower-case).

A probe that fails is a logged warning, never an exception: the amount is left
out, except the GPU amounts, which are 0 when nvidia-smi is missing, fails, hangs
or prints nothing usable (as the official agent reports them). nvidia-smi gets
``NVIDIA_SMI_TIMEOUT`` seconds; that is the probe's only internal bound, so a hung
driver cannot take the rest of the facts with it. Capabilities from the
configuration override detected ones per name; when both GPU amounts are
configured, nvidia-smi is not run at all (a way around a broken driver).
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
import psutil
import structlog
import trio

__all__ = [
    "NVIDIA_SMI_QUERY",
    "NVIDIA_SMI_TIMEOUT",
    "Capabilities",
    "GpuInfo",
    "HostFacts",
    "HostProperties",
    "NvidiaSmiReport",
    "parse_nvidia_smi",
    "probe_gpus",
    "probe_host",
]

log = structlog.get_logger("farmhand.hostinfo")

#: Seconds nvidia-smi may take before the GPU probe gives up (it can hang on a wedged driver).
NVIDIA_SMI_TIMEOUT = 10.0
#: The arguments after ``nvidia-smi``: one CSV row per GPU.
NVIDIA_SMI_QUERY = ("--query-gpu=index,memory.total,name", "--format=csv,noheader,nounits")

_MIB = 1024 * 1024
_GPU_AMOUNTS = ("amount.worker.gpu", "amount.worker.gpu.memory")
_OS_FAMILIES = {"linux": "linux", "darwin": "macos", "windows": "windows"}
_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


# --- capabilities -----------------------------------------------------------------------


def _freeze_amounts(value: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType({name: float(amount) for name, amount in value.items()})


def _freeze_attributes(value: Mapping[str, Iterable[str]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({name: tuple(values) for name, values in value.items()})


@attrs.frozen
class Capabilities:
    """Worker capabilities: amounts (``amount.*`` -> number) and attributes (``attr.*`` -> labels)."""

    amounts: Mapping[str, float] = attrs.field(factory=dict, converter=_freeze_amounts)
    attributes: Mapping[str, tuple[str, ...]] = attrs.field(
        factory=dict, converter=_freeze_attributes
    )

    def merged(self, override: Capabilities) -> Capabilities:
        """These capabilities with ``override``'s added; ``override`` wins per name."""
        return Capabilities(
            {**self.amounts, **override.amounts}, {**self.attributes, **override.attributes}
        )

    def to_api(self) -> dict[str, list[dict[str, Any]]]:
        """The ``capabilities`` member of an UpdateWorker request."""
        return {
            "amounts": [
                {"name": name, "value": value} for name, value in sorted(self.amounts.items())
            ],
            "attributes": [
                {"name": name, "values": list(values)}
                for name, values in sorted(self.attributes.items())
            ],
        }


# --- GPUs ---------------------------------------------------------------------------------


@attrs.frozen
class GpuInfo:
    """One row of nvidia-smi's output."""

    index: int
    #: ``None`` when nvidia-smi reports no number (``[N/A]`` on a disabled GPU, for one).
    memory_mib: int | None
    name: str


@attrs.frozen
class NvidiaSmiReport:
    """What could be read from nvidia-smi's output, and what could not."""

    gpus: tuple[GpuInfo, ...]
    #: Lines that are not a GPU row, verbatim.
    unreadable: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.gpus)

    @property
    def min_memory_mib(self) -> int:
        """The smallest GPU memory that was reported as a number; 0 when none was."""
        return min((g.memory_mib for g in self.gpus if g.memory_mib is not None), default=0)


def parse_nvidia_smi(text: str) -> NvidiaSmiReport:
    """Read the output of ``nvidia-smi`` with ``NVIDIA_SMI_QUERY``: ``index, memory, name`` rows.

    Memory may carry a ``MiB`` unit. A bracketed or other non-numeric memory value makes
    the GPU's memory unknown; a line that is not a row at all is collected as unreadable.
    """
    gpus: list[GpuInfo] = []
    unreadable: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",", 2)]
        if len(fields) != 3 or not fields[0].isdigit():
            unreadable.append(line)
            continue
        index, memory, name = fields
        memory = memory.removesuffix("MiB").strip()
        gpus.append(GpuInfo(int(index), int(memory) if memory.isdigit() else None, name))
    return NvidiaSmiReport(tuple(gpus), tuple(unreadable))


async def _kill(process: trio.Process) -> None:
    # nvidia-smi only reads, so there is nothing to wind down: no SIGTERM and 5 s grace first.
    process.kill()


#: Whether this process has said that nvidia-smi is missing (it says so once).
_said_no_nvidia_smi = False


async def probe_gpus(nvidia_smi: str = "nvidia-smi") -> NvidiaSmiReport:
    """Run nvidia-smi (at most ``NVIDIA_SMI_TIMEOUT`` seconds) and parse it; on any
    failure log a warning and report no GPUs (no nvidia-smi at all: one info line, the
    first time only)."""
    argv = [nvidia_smi, *NVIDIA_SMI_QUERY]
    result: subprocess.CompletedProcess[bytes] | None = None
    with trio.move_on_after(NVIDIA_SMI_TIMEOUT) as scope:
        try:
            result = await trio.run_process(
                argv,
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                deliver_cancel=_kill,
            )
        except FileNotFoundError:
            # The usual case on a host without NVIDIA GPUs: say so once, not as a problem.
            global _said_no_nvidia_smi
            if not _said_no_nvidia_smi:
                _said_no_nvidia_smi = True
                log.info("hostinfo.no_nvidia_smi", note="nvidia-smi is not installed", gpus=0)
            return NvidiaSmiReport(())
        except OSError as exc:
            log.warning("hostinfo.gpu_probe_failed", reason=f"cannot run nvidia-smi: {exc}", gpus=0)
            return NvidiaSmiReport(())
    if scope.cancelled_caught or result is None:
        log.warning(
            "hostinfo.gpu_probe_failed",
            reason=f"nvidia-smi did not finish in {NVIDIA_SMI_TIMEOUT:g} s",
            gpus=0,
        )
        return NvidiaSmiReport(())
    stdout = result.stdout.decode(errors="replace")
    if result.returncode != 0:
        detail = (result.stderr.decode(errors="replace") or stdout).strip()
        log.warning(
            "hostinfo.gpu_probe_failed",
            reason=f"nvidia-smi exited with status {result.returncode}",
            output=detail[:500],
            gpus=0,
        )
        return NvidiaSmiReport(())
    report = parse_nvidia_smi(stdout)
    if report.unreadable:
        log.warning(
            "hostinfo.gpu_output_unreadable",
            lines=[line[:200] for line in report.unreadable[:5]],
            gpus=report.count,
        )
    unknown = [g.index for g in report.gpus if g.memory_mib is None]
    if unknown:
        log.warning(
            "hostinfo.gpu_memory_unknown",
            gpu_indexes=unknown,
            note="left out of amount.worker.gpu.memory",
        )
    return report


# --- host properties ----------------------------------------------------------------------


@attrs.frozen
class HostProperties:
    """The ``hostProperties`` of CreateWorker and UpdateWorker."""

    host_name: str | None
    ipv4_addresses: tuple[str, ...] = ()
    ipv6_addresses: tuple[str, ...] = ()

    def to_api(self) -> dict[str, Any]:
        api: dict[str, Any] = {
            "ipAddresses": {
                "ipV4Addresses": list(self.ipv4_addresses),
                "ipV6Addresses": list(self.ipv6_addresses),
            }
        }
        if self.host_name is not None:
            api["hostName"] = self.host_name
        return api


def normalize_ipv6(address: str) -> str:
    """``fe80::1%eth0`` -> ``FE80:0000:0000:0000:0000:0000:0000:0001``."""
    return IPv6Address(int(IPv6Address(address))).exploded.upper()


def ip_addresses(
    interfaces: Mapping[str, Iterable[Any]],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """IPv4 and IPv6 addresses (sorted, without duplicates) from ``psutil.net_if_addrs()``."""
    ipv4: set[str] = set()
    ipv6: set[str] = set()
    for name, addresses in interfaces.items():
        for address in addresses:
            try:
                if address.family == socket.AF_INET:
                    ipv4.add(str(IPv4Address(address.address)))
                elif address.family == socket.AF_INET6:
                    ipv6.add(normalize_ipv6(address.address))
            except ValueError:
                log.warning("hostinfo.bad_address", interface=name, address=address.address)
    return tuple(sorted(ipv4)), tuple(sorted(ipv6))


def host_properties() -> HostProperties:
    """Host name and addresses; either part is left out (with a warning) when it cannot be read."""
    try:
        host_name: str | None = socket.gethostname()
    except OSError as exc:
        log.warning("hostinfo.probe_failed", fact="hostName", error=str(exc))
        host_name = None
    try:
        ipv4, ipv6 = ip_addresses(psutil.net_if_addrs())
    except Exception as exc:  # psutil can fail in odd ways in containers
        log.warning("hostinfo.probe_failed", fact="ipAddresses", error=repr(exc))
        ipv4, ipv6 = (), ()
    return HostProperties(host_name, ipv4, ipv6)


# --- detection ----------------------------------------------------------------------------


def os_family(system: str | None = None) -> str | None:
    """The OpenJD OS family of ``platform.system()``; ``None`` for an unknown system."""
    return _OS_FAMILIES.get((platform.system() if system is None else system).lower())


def cpu_arch(machine: str | None = None) -> str:
    """The OpenJD CPU architecture of ``platform.machine()`` (``aarch64`` -> ``arm64``)."""
    machine = (platform.machine() if machine is None else machine).lower()
    return _ARCHES.get(machine, machine)


def _scratch_free_mib(directory: Path) -> int:
    """Free MiB on the file system holding ``directory`` (or its nearest existing parent)."""
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free // _MIB
    raise FileNotFoundError(directory)


def _probe_blocking(scratch_dir: Path) -> tuple[HostProperties, Capabilities]:
    """Everything but the GPUs; blocking (``disk_usage`` can stall on a network mount)."""
    amounts: dict[str, float] = {}
    attributes: dict[str, list[str]] = {}

    def attempt(fact: str, probe: Any) -> None:
        try:
            value = probe()
        except Exception as exc:  # any probe failure is a warning, never a crash
            log.warning("hostinfo.probe_failed", fact=fact, error=repr(exc))
            return
        if value is None:
            log.warning("hostinfo.probe_failed", fact=fact, error="not available")
        elif fact.startswith("attr."):
            attributes[fact] = [value]
        elif not math.isfinite(value) or value < 0:
            log.warning("hostinfo.probe_failed", fact=fact, error=f"nonsense value {value!r}")
        else:
            amounts[fact] = float(value)

    attempt("amount.worker.vcpu", lambda: psutil.cpu_count(logical=True))
    attempt("amount.worker.memory", lambda: psutil.virtual_memory().total // _MIB)
    attempt("amount.worker.disk.scratch", lambda: _scratch_free_mib(scratch_dir))
    attempt("attr.worker.os.family", os_family)
    attempt("attr.worker.cpu.arch", cpu_arch)
    return host_properties(), Capabilities(amounts, attributes)


@attrs.frozen
class HostFacts:
    """What CreateWorker and UpdateWorker(STARTED) say about this host."""

    host_properties: HostProperties
    capabilities: Capabilities
    #: ``None`` when nvidia-smi was not run (both GPU amounts were configured).
    gpus: NvidiaSmiReport | None = None


async def probe_host(
    *,
    overrides: Capabilities | None = None,
    scratch_dir: Path = Path(os.sep),
    nvidia_smi: str = "nvidia-smi",
) -> HostFacts:
    """Detect the host's properties and capabilities; ``overrides`` (the configured
    capabilities) win per name. Never raises for a failing probe (see the module docstring)."""
    overrides = overrides or Capabilities()
    # The psutil and disk probes run in a thread: disk_usage() can block on a stale network
    # mount. They only read, so the thread may be abandoned if the caller gives up.
    props, detected = await trio.to_thread.run_sync(
        _probe_blocking, scratch_dir, abandon_on_cancel=True
    )
    gpus: NvidiaSmiReport | None = None
    if not all(name in overrides.amounts for name in _GPU_AMOUNTS):
        gpus = await probe_gpus(nvidia_smi)
        detected = detected.merged(
            Capabilities(
                {"amount.worker.gpu": gpus.count, "amount.worker.gpu.memory": gpus.min_memory_mib}
            )
        )
    return HostFacts(props, detected.merged(overrides), gpus)
