"""What BackOrigin and its child addons share: the rules in force and the options every flow
reads, copied once in BackOrigin.configure (an option read copies its value every time)."""

from __future__ import annotations

from dataclasses import dataclass

from mitmproxy import http

from backorigin.rules.model import RuleBook
from backorigin.rules.rulesfile import RulesFile
from backorigin.s3.addressing import ObjectRef, object_ref
from backorigin.s3.store import store_endpoint


@dataclass
class Context:
    rules_file: RulesFile
    vhost_domains: tuple[str, ...] = ()
    dry_run: bool = False
    s3_endpoint: str | None = None  # backorigin_s3_endpoint

    @property
    def rulebook(self) -> RuleBook:
        return self.rules_file.rulebook

    def acts(self, flow: http.HTTPFlow) -> bool:
        """Live flows outside a dry run act; replayed flows and dry runs only decide."""
        return flow.live and not self.dry_run

    def object(self, flow: http.HTTPFlow) -> ObjectRef | None:
        return object_ref(flow.request, self.vhost_domains)

    def endpoint(self, request: http.Request) -> str:
        """The store the proxy writes to and asks on the request's behalf."""
        return self.s3_endpoint or store_endpoint(request, self.vhost_domains)
