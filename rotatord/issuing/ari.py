"""ACME Renewal Information (RFC 9773): one query and the parsing of its answer.

Rules: the answer is the CA's, so every field is checked and bounded (an ``explanationURL``
goes into the audit log); datetimes that come out are aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

from acme.client import ClientNetwork

from rotatord.clock import Clock
from rotatord.core.errors import IssuanceError
from rotatord.core.text import MAX_QUOTE_CHARS
from rotatord.issuing import RenewalInfo
from rotatord.issuing.acme_net import MAX_URL_CHARS, _Network, _parse_retry_after, translate


def query(net: _Network, base: str, cert_id: str, clock: Clock) -> RenewalInfo:
    """The window the CA suggests for ``cert_id``, or IssuanceError."""
    url = base.rstrip("/") + "/" + cert_id
    what = f"renewalInfo for {cert_id[:MAX_QUOTE_CHARS]}"
    try:
        response = net.get(url, content_type=ClientNetwork.JSON_CONTENT_TYPE)
        doc = response.json()
        window = doc["suggestedWindow"]
        start = datetime.fromisoformat(window["start"])
        end = datetime.fromisoformat(window["end"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IssuanceError(f"{what}: malformed response", retryable=True) from exc
    except Exception as exc:
        raise translate(exc, net, what) from exc
    explanation = doc.get("explanationURL")
    if not isinstance(explanation, str) or len(explanation) > MAX_URL_CHARS:
        explanation = None
    return RenewalInfo(
        start=start if start.tzinfo else start.replace(tzinfo=UTC),
        end=end if end.tzinfo else end.replace(tzinfo=UTC),
        retry_after=_parse_retry_after(response.headers.get("Retry-After"), clock.now()),
        explanation_url=explanation,
    )
