"""Helpers for tests/e2e/test_modes.py and test_cli.py: mitmdump variants (listen address,
environment, a private /etc/hosts), `backorigin run` as a user types it, a plain mitmdump as an
upstream proxy, a throw-away test CA and a store that speaks HTTPS with it, and a network
namespace with a NAT REDIRECT rule for transparent mode.

Everything stays on this machine: loopback, or a veth pair between the host and a
namespace this module creates and removes itself.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backorigin.tools.embedded_store import EmbeddedStore, free_ports
from tests.support import BACKORIGIN, MITMDUMP, Mitmdump

VENV_BIN = Path(sys.executable).parent


@dataclass
class ModeMitmdump(Mitmdump):
    """The documented command, plus: the address to listen on, extra environment variables
    (passed with env(1), so the process started is still mitmdump itself and Ctrl-C reaches
    it), and an optional /etc/hosts of its own (a private mount namespace, root only)."""

    listen_host: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)
    hosts_file: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.listen_host}:{self.port}"

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("--listen-host") + 1] = self.listen_host
        if self.env:
            command = ["env", *(f"{k}={v}" for k, v in self.env.items()), *command]
        if self.hosts_file is not None:
            # unshare without --fork execs, and so does sh: the pid stays mitmdump's
            command = [
                "unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(self.hosts_file), *command,
            ]
        return command


@dataclass
class BackoriginRun(ModeMitmdump):
    """`backorigin run --rules FILE --listen HOST:PORT ARGS...`, the installed command, with the
    environment given (HOME there makes mitmproxy's default confdir HOME/.mitmproxy). `mode` is
    the mitmproxy mode it amounts to, for the name of its default spool."""

    args: list[str] = field(default_factory=list)

    @property
    def confdir(self) -> Path:
        return Path(self.env.get("HOME", Path.home())) / ".mitmproxy"

    def command(self) -> list[str]:
        command = [BACKORIGIN, "run", "--rules", str(self.rules), "--listen", f"{self.listen_host}:{self.port}", *self.args]
        return ["env", *(f"{k}={v}" for k, v in self.env.items()), *command] if self.env else command


@dataclass
class PlainMitmdump(ModeMitmdump):
    """mitmdump without the addon (an upstream proxy); it prints every flow to its log."""

    def command(self) -> list[str]:
        return [
            MITMDUMP, "--mode", self.mode, "--listen-host", self.listen_host, "--listen-port", str(self.port),
            "--set", f"confdir={self.workdir / 'confdir'}", "--flow-detail", "1",
        ]


# a test CA and a server certificate for 127.0.0.1 ---------------------------------------------


@dataclass(frozen=True)
class TestCA:
    ca_cert: Path  # PEM: what clients trust
    server_cert: Path  # PEM: for 127.0.0.1 and localhost, signed by the CA
    server_key: Path


def make_test_ca(directory: Path, names: tuple[str, ...] = ("localhost",)) -> TestCA:
    """A one-day CA and a server certificate for 127.0.0.1 and `names` (cryptography, which
    mitmproxy depends on anyway)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backorigin test CA")])
    ca = (
        x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key(),
                                serial_number=x509.random_serial_number(), not_valid_before=not_before,
                                not_valid_after=not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder(
            subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), issuer_name=ca_name,
            public_key=server_key.public_key(), serial_number=x509.random_serial_number(),
            not_valid_before=not_before, not_valid_after=not_after)
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), *map(x509.DNSName, names)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TestCA(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    files.server_key.chmod(0o600)
    return files


@dataclass
class TlsStore(EmbeddedStore):
    https_port: int = 0  # also in extra_args, as -s3.port.https

    @property
    def https_endpoint(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"


def make_tls_store(directory: Path, ca: TestCA, access_key: str | None = None, secret_key: str | None = None) -> TlsStore:
    """A store (not started) with an HTTPS port too, its certificate signed by `ca` (readiness is
    checked on its plain port)."""
    https_port = free_ports(1)[0]
    return TlsStore(
        directory, free_ports(1, with_grpc=True)[0], access_key, secret_key,
        extra_args=(f"-s3.port.https={https_port}", f"-s3.cert.file={ca.server_cert}", f"-s3.key.file={ca.server_key}"),
        https_port=https_port,
    )


# root-only set-ups ------------------------------------------------------------------------------


def why_no_namespaces() -> str | None:
    """None when this process can create network namespaces and NAT rules, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs and NAT rules)"
    if not shutil.which("ip"):
        return "needs the `ip` command (Debian package iproute2)"
    if not (shutil.which("iptables") or shutil.which("nft")):
        return "needs `iptables` or `nft` (Debian package iptables or nftables)"
    return None


def why_no_mount_namespace() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a private mount namespace for mitmdump's own /etc/hosts)"
    if not shutil.which("unshare"):
        return "needs `unshare` (Debian package util-linux)"
    probe = run("unshare", "--mount", "--propagation", "private", "true", check=False)
    if probe.returncode != 0:
        return f"this host refused `unshare --mount`: {probe.stderr.strip()}"
    return None


def run(*command: str, check: bool = True, timeout: float = 15.0) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, capture_output=True, text=True, timeout=timeout)


@dataclass
class TransparentLink:
    """A namespace whose only way out is a veth pair to the host:

        namespace  NS_ADDR/30 ---- veth ---- HOST_ADDR/30  host

    The client in the namespace addresses the store as HOST_ADDR:store_port. NAT on the
    host redirects those connections (arriving on the veth) to mitmdump --mode transparent
    listening on HOST_ADDR:proxy_port; mitmdump reads the original destination
    (SO_ORIGINAL_DST) and connects to HOST_ADDR:store_port itself, which a DNAT rule for
    locally generated traffic maps to the store's loopback address (the store listens on
    127.0.0.1 only). Write-backs to the address the client used take the same way."""

    store_port: int
    proxy_port: int
    firewall: str = field(default_factory=lambda: "iptables" if shutil.which("iptables") else "nft")
    tag: str = field(default_factory=lambda: f"bo{os.getpid() % 100000}")

    @property
    def namespace(self) -> str:
        return f"{self.tag}-transparent"

    @property
    def subnet(self) -> int:
        return 16 + os.getpid() % 200

    @property
    def host_addr(self) -> str:
        return f"10.200.{self.subnet}.1"

    @property
    def ns_addr(self) -> str:
        return f"10.200.{self.subnet}.2"

    @property
    def host_if(self) -> str:
        return f"{self.tag}h"

    @property
    def ns_if(self) -> str:
        return f"{self.tag}n"

    @property
    def table(self) -> str:
        return f"backorigin_test_{self.tag}"

    def _iptables_rules(self) -> list[list[str]]:
        comment = ["-m", "comment", "--comment", f"backorigin test {self.tag}"]
        return [
            ["PREROUTING", "-i", self.host_if, "-p", "tcp", "-d", self.host_addr, "--dport", str(self.store_port),
             *comment, "-j", "REDIRECT", "--to-ports", str(self.proxy_port)],
            ["OUTPUT", "-o", "lo", "-p", "tcp", "-d", self.host_addr, "--dport", str(self.store_port),
             *comment, "-j", "DNAT", "--to-destination", f"127.0.0.1:{self.store_port}"],
        ]

    def _nft_script(self) -> str:
        return (
            f"table ip {self.table} {{\n"
            f"  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;\n"
            f"    iifname \"{self.host_if}\" ip daddr {self.host_addr} tcp dport {self.store_port} redirect to :{self.proxy_port}\n"
            f"  }}\n"
            f"  chain output {{ type nat hook output priority -100; policy accept;\n"
            f"    oifname \"lo\" ip daddr {self.host_addr} tcp dport {self.store_port} dnat to 127.0.0.1:{self.store_port}\n"
            f"  }}\n"
            f"}}\n"
        )

    def up(self) -> None:
        self.down()  # leftovers of a killed run that had the same process id
        run("ip", "netns", "add", self.namespace)
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.namespace)
        run("ip", "addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        run("ip", "-n", self.namespace, "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if)
        run("ip", "-n", self.namespace, "link", "set", self.ns_if, "up")
        run("ip", "-n", self.namespace, "link", "set", "lo", "up")
        if self.firewall == "iptables":
            for rule in self._iptables_rules():
                run("iptables", "-t", "nat", "-A", *rule)
        else:
            subprocess.run(["nft", "-f", "-"], input=self._nft_script(), check=True, capture_output=True, text=True, timeout=15)

    def down(self) -> list[str]:
        """Remove everything up() may have made; returns what could not be removed."""
        problems = []
        if self.firewall == "iptables":
            for rule in self._iptables_rules():
                # -D until it fails: a rule added twice by a retried set-up goes too (bounded)
                for _ in range(5):
                    if run("iptables", "-t", "nat", "-D", *rule, check=False).returncode != 0:
                        break
        else:
            run("nft", "delete", "table", "ip", self.table, check=False)
        # deleting the namespace deletes the veth pair with it; the host end may outlive a
        # half-done set-up, so it goes explicitly
        run("ip", "netns", "del", self.namespace, check=False)
        run("ip", "link", "del", self.host_if, check=False)
        if self.namespace in run("ip", "netns", "list", check=False).stdout.split():
            problems.append(f"namespace {self.namespace} is still there")
        if run("ip", "link", "show", self.host_if, check=False).returncode == 0:
            problems.append(f"interface {self.host_if} is still there")
        if self.firewall == "iptables" and self.tag in run("iptables", "-t", "nat", "-S", check=False).stdout:
            problems.append(f"iptables rules tagged {self.tag} are still there")
        if self.firewall == "nft" and run("nft", "list", "table", "ip", self.table, check=False).returncode == 0:
            problems.append(f"nft table {self.table} is still there")
        return problems

    def run_in_namespace(self, *command: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.namespace, *command, check=False, timeout=timeout)

    @contextmanager
    def established(self):
        """up() ... down(); a host that refuses the set-up (a container without
        CAP_NET_ADMIN/CAP_SYS_ADMIN, a kernel without NAT) skips the test, saying why."""
        try:
            try:
                self.up()
            except subprocess.CalledProcessError as e:
                pytest.skip(f"transparent mode: this host refused `{' '.join(e.cmd)}`: {e.stderr.strip()}")
            yield self
        finally:
            problems = self.down()
            assert not problems, f"transparent-mode clean-up left: {problems}"
