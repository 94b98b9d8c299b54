"""The servers the clients are measured and checked against: nginx over HTTP and HTTPS (with a CA
made for the run), and for the checklist a loopback server that records every request head and
an HTTP proxy that records every request line."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from pathlib import Path
from typing import Self

from bench.services.nginx import NGINX_BASICS

NOT_FOUND_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key does not '
                 'exist.</Message><Key>small/missing</Key><BucketName>bench</BucketName><Resource>/bench/small/missing</Resource>'
                 '<RequestId>17F0A1B2C3D4E5F6</RequestId><HostId>dd9025bab4ad464b049177c95eb6ebf3</HostId></Error>')


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key): a CA made for this run, and a server
    certificate for 127.0.0.1, origin.test and other.test."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.clients CA")])
    usage = {name: False for name in ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                                      "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")}
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(**{**usage, "key_cert_sign": True, "crl_sign": True}), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    names: list[x509.GeneralName] = [x509.DNSName("origin.test"), x509.DNSName("other.test"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "origin.test")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(**{**usage, "digital_signature": True}), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def nginx_config(http_port: int, https_port: int, root: Path, certificate: Path, key: Path) -> str:
    body = NOT_FOUND_XML.replace("'", "\\'")
    return f"""
http {{{NGINX_BASICS}
    tcp_nodelay on;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{http_port} backlog=4096;
        listen 127.0.0.1:{https_port} ssl backlog=4096;
        ssl_certificate {certificate};
        ssl_certificate_key {key};
        root {root};
        location /small/ {{ try_files /small.bin =404; }}
        location /large/ {{ try_files /large.bin =404; }}
        location /gz/ {{ add_header Content-Encoding gzip; try_files /body.gz =404; }}
        location /missing/ {{ default_type application/xml; return 404 '{body}'; }}
        location /sni {{ default_type text/plain; return 200 "$ssl_server_name|$host"; }}
    }}
}}
"""


class Recorder:
    """A loopback HTTP/1.1 server that keeps every request head as it arrived. /cookie sets a
    cookie, /hang never answers, anything else is a 200 'ok'."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                target = head.split(b" ", 2)[1]
                if target.startswith(b"/hang"):
                    await reader.read()
                    return
                cookie = b"Set-Cookie: session=s3cr3t; Path=/\r\n" if target.startswith(b"/cookie") else b""
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + cookie + b"\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class RecordingProxy(Recorder):
    """An HTTP proxy that keeps each request line: CONNECT opens a tunnel; a request in absolute
    form is answered 'proxied' (not forwarded)."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            self.heads.append(line)
            method, target, _ = line.split(b" ", 2)
            if method != b"CONNECT":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nproxied")
                await writer.drain()
                return
            host, _, port = target.decode().rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            self._writers.add(up_writer)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(source: asyncio.StreamReader, to: asyncio.StreamWriter) -> None:
                while data := await source.read(1 << 16):
                    to.write(data)
                    await to.drain()
                to.close()
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
