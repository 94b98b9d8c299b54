"""The OSS XML vocabulary of the rules, read off the pydantic models (rules.model): every field
OSS also has, in the models' order, and how it is written. A field added to the models is imported
and exported without a second list to keep in step."""

from __future__ import annotations

import types
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr

# OSS RoutingRule fields we deliberately refuse, with the reason the user is shown.
UNSUPPORTED_OSS_FIELDS = {
    "MirrorMultiAlternates": "several alternate origins by region need OSS's own network; use MirrorURLSlave",
    "MirrorRole": "RAM roles exist only inside Alibaba Cloud; use MirrorAuth",
    "MirrorUsingRole": "RAM roles exist only inside Alibaba Cloud; use MirrorAuth",
    "MirrorIsExpressTunnel": "OSS express tunnels exist only inside Alibaba Cloud",
    "MirrorDstRegion": "OSS express tunnels exist only inside Alibaba Cloud",
    "MirrorDstVpcId": "OSS express tunnels exist only inside Alibaba Cloud",
    "MirrorDstSlaveVpcId": "OSS express tunnels exist only inside Alibaba Cloud",
    "MirrorAsyncStatus": "asynchronous pull answers the client before the object exists; backorigin always answers from the origin",
    "MirrorTaggings": "object tags are not written back; S3 stores differ in tagging support",
    "MirrorReturnHeaders": "response headers follow the fixed OSS storable-header list",
    "MirrorSNI": "the origin's TLS server name is always its host name",
    "EnableMirrorSNI": "the origin's TLS server name is always its host name",
    "LuaConfig": "OSS runs Lua scripts on its own servers; there is no equivalent here",
}
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
MD5_ALWAYS_CHECKED = ("backorigin always checks the origin's Content-MD5 (and an ETag that is an MD5) and never stores "
                      "a body that fails the check")
MIRROR_ONLY_FIELDS = frozenset(
    {"MirrorURL", "MirrorURLSlave", "MirrorURLProbe", "MirrorSwitchAllErrors", "MirrorPassQueryString",
     "MirrorFollowRedirect", "MirrorCheckMd5", "MirrorHeaders", "MirrorAllowHeadObject",
     "MirrorPassOriginalSlashes", "TransparentMirrorResponseCodes", "MirrorProxyPass",
     "MirrorUserLastModified", "MirrorSaveOssMeta", "MirrorAuth", "MirrorHost"}
)
REDIRECT_ONLY_FIELDS = frozenset({"HttpRedirectCode", "Protocol", "HostName"})

# Fields of our rules that OSS does not have; export leaves them out of the XML.
BACKORIGIN_ONLY_FIELDS = {
    "MirrorHost": "backorigin only (the Host header sent to the origin); OSS has no such field",
    # a bucket entry's, not a RoutingRule's: see rules.convert.export_bucket
    "WriteThrough": "backorigin only (every write through the proxy is applied to the bucket's S3 origin too: "
                    "docs/write-through.md); OSS has no such field",
}
# OSS writes these lists as one comma-separated text, not as repeated elements (in XML and in its SDKs).
COMMA_SEPARATED_FIELDS = frozenset({"TransparentMirrorResponseCodes"})
Kind = Literal["text", "bool", "int", "codes", "secret"] | type[BaseModel]


@dataclass(frozen=True)
class XmlField:
    kind: Kind
    repeated: bool


@cache
def xml_fields(model: type[BaseModel]) -> dict[str, XmlField]:
    """The model's fields OSS also has, in the model's order, with how each is written in XML."""
    fields = {}
    for name, info in model.model_fields.items():
        if name in BACKORIGIN_ONLY_FIELDS:
            continue
        annotation = _bare(info.annotation)
        repeated = get_origin(annotation) is tuple
        if repeated:
            annotation = _bare(get_args(annotation)[0])
        if name in COMMA_SEPARATED_FIELDS:
            fields[name] = XmlField("codes", repeated=False)
        else:
            fields[name] = XmlField(_kind(annotation), repeated)
    return fields


def _bare(annotation: Any) -> Any:
    """Without Annotated[...] metadata and without '| None'."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            present = [a for a in get_args(annotation) if a is not type(None)]
            if len(present) != 1:
                return annotation
            annotation = present[0]
        else:
            return annotation


def _kind(annotation: Any) -> Kind:
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is SecretStr:
        return "secret"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return "text"
