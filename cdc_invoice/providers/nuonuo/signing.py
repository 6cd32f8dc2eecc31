"""X-Nuonuo-Sign: base64(HMAC-SHA1(appSecret, "a=…&l=…&p=…&k=…&i=…&n=…&t=…&f=<body>")).

Shared by the adapter (to sign) and the sandbox (to verify); see reference/nuonuo.md §2.4.
The body must be signed byte for byte as sent, so callers serialise once and pass the string.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

GATEWAY_PATH = "/open/v1/services"


def string_to_sign(
    *, path: str, app_key: str, senid: str, nonce: str, timestamp: str, content: str
) -> str:
    pieces = path.split("/")
    if len(pieces) < 4:
        raise ValueError(f"gateway path {path!r} must look like /open/v1/services")
    p, l, a = pieces[1], pieces[2], pieces[3]  # noqa: E741 - the protocol's own names
    return f"a={a}&l={l}&p={p}&k={app_key}&i={senid}&n={nonce}&t={timestamp}&f={content}"


def sign(
    *,
    app_secret: str,
    app_key: str,
    senid: str,
    nonce: str,
    timestamp: str,
    content: str,
    path: str = GATEWAY_PATH,
) -> str:
    msg = string_to_sign(
        path=path, app_key=app_key, senid=senid, nonce=nonce, timestamp=timestamp, content=content
    )
    digest = hmac.new(app_secret.encode(), msg.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(expected_signature: str, **kwargs: str) -> bool:
    return hmac.compare_digest(sign(**kwargs), expected_signature)
