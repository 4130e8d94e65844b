"""The ``tls-alpn-01`` challenge type (RFC 8737) for acme's message parser; IP identifiers.

acme 5.x dropped its TLSALPN01 class, so an authorization's tls-alpn-01 challenge parses as
``UnrecognizedChallenge`` and offers no key authorization. Importing this module registers a
``KeyAuthorizationChallenge`` subclass and its response under the type name, which is all the
issuer needs: the token, the key authorization, and ``{}`` as the response payload (RFC 8555
§7.5.1; the key authorization is not sent, RFC 8737 §3).

Rules: registers only when acme has no class of that name already (a later acme that brings one
back wins); nothing here leaves ``issuing/``.
"""

from __future__ import annotations

from typing import Any

from acme import challenges, messages

from rotatord.core.identifiers import is_ip

TYPE = "tls-alpn-01"


def identifier(name: str) -> messages.Identifier:
    """The newOrder identifier for ``name``: type ``ip`` for an address (RFC 8738 §3)."""
    typ = messages.IDENTIFIER_IP if is_ip(name) else messages.IDENTIFIER_FQDN
    return messages.Identifier(typ=typ, value=name)


class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The (empty) response to a tls-alpn-01 challenge."""

    typ = TYPE


class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """A tls-alpn-01 challenge: a token whose key authorization goes into the validation
    certificate's acmeIdentifier extension."""

    response_cls = TLSALPN01Response
    typ = TYPE

    def validation(self, account_key: Any, **unused_kwargs: Any) -> Any:
        """Not used: the responder builds the validation certificate from the key
        authorization itself (``challenges.tlsalpn01``)."""
        return self.key_authorization(account_key)


if TYPE not in challenges.Challenge.TYPES:
    challenges.Challenge.register(TLSALPN01)
if TYPE not in challenges.ChallengeResponse.TYPES:
    challenges.ChallengeResponse.register(TLSALPN01Response)
