"""URL cleaning (what is requested) and normalisation (the identity of a page, hence its doc_id)."""

from __future__ import annotations

import re
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit, urlunsplit

from kbsync.sources import make_doc_id

__all__ = ["DEFAULT_PORTS", "clean_url", "host_key", "normalize_url", "page_doc_id"]

# fmt: off
_TRACKING_PARAMS = frozenset(
    {
        "gclid", "gclsrc", "dclid", "gbraid", "wbraid", "fbclid", "msclkid", "yclid", "twclid", "ttclid", "igshid",
        "mc_cid", "mc_eid", "_ga", "_gl", "_hsenc", "_hsmi", "mkt_tok", "oly_anon_id", "oly_enc_id", "vero_id",
        "rb_clickid", "s_cid", "ref_src",
    }
)
# fmt: on
_TRACKING_PREFIXES = ("utm_", "pk_", "hsa_")
DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def _netloc(parts: SplitResult) -> str:
    host = (parts.hostname or "").rstrip(".").lower()
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        pass
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    return host if port is None or port == DEFAULT_PORTS.get(parts.scheme.lower()) else f"{host}:{port}"


def clean_url(url: str) -> str:
    """The URL to request: no fragment, userinfo or tracking parameters; scheme and host lowercased, no default
    port. Raises ValueError for anything but an absolute http(s) URL."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if not _is_tracking(k)]
    # Nothing dropped: the query stays exactly as the site wrote it.
    query = parts.query if len(kept) == len(pairs) else urlencode(kept, quote_via=quote)
    return urlunsplit((scheme, _netloc(parts), parts.path or "/", query, ""))


def normalize_url(url: str) -> str:
    """The identity of a page: `clean_url`, plus dot segments resolved, escapes normalised, no trailing slash
    (except the root), query parameters sorted."""
    parts = urlsplit(clean_url(url))
    path = _normalize_escapes(_remove_dot_segments(parts.path))
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    pairs = sorted(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(pairs, quote_via=quote), ""))


def _is_tracking(name: str) -> bool:
    lowered = name.lower()
    return lowered in _TRACKING_PARAMS or lowered.startswith(_TRACKING_PREFIXES)


def _remove_dot_segments(path: str) -> str:
    if "." not in path:
        return path
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if len(out) > 1:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if path.endswith(("/.", "/..")):
        out.append("")
    return "/".join(out) or "/"


def _normalize_escapes(path: str) -> str:
    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(0)[1:], 16))
        return char if char in _UNRESERVED else match.group(0).upper()

    return _ESCAPE.sub(fix, path)


def host_key(url: str) -> str:
    """`host[:port]` of a URL, as `clean_url` writes it."""
    return _netloc(urlsplit(url))


def page_doc_id(url: str) -> str:
    return make_doc_id("web", normalize_url(url))
