"""Sign-in with a wallet (EIP-4361) and the wallet session credential.

``POST /api/v1/wallet/challenge`` hands out a message the node wrote itself (domain and URI =
the calling page's origin, the node's chain id, a fresh single-use nonce, five minutes to sign);
``POST /api/v1/wallet/session`` takes the message back with its ``personal_sign`` signature,
checks that it is exactly a message this node issued (nonce unused and unexpired, same origin,
same chain), recovers the signer (EIP-191) and compares it with the message's address, then
opens a session: a random token sent as ``Authorization: Wallet <token>`` (cross-origin pages)
or in the ``fedswarm_wallet_<port>`` cookie (``HttpOnly; SameSite=Strict``, same-origin pages).
The session's :class:`~fedswarm.api.guard.Principal` is ``kind="wallet"`` with the checksum
address as ``owner``. Challenges and sessions live in memory, bounded (oldest dropped).
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import is_address, to_checksum_address
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from fedswarm.api.app import ApiError, principal_of, read_json
from fedswarm.api.guard import Principal, Refusal, server_port

CHALLENGE_TTL_S = 300
MAX_CHALLENGES = 10_000
MAX_SESSIONS = 10_000
MAX_MESSAGE = 2048
DEFAULT_SESSION_S = 12 * 3600
STATEMENT = "Sign in to this fedswarm node to submit, pay for and follow your training jobs."

_SIWE = re.compile(
    r"(?P<domain>[^\s/]{1,255}) wants you to sign in with your Ethereum account:\n"
    r"(?P<address>0x[0-9a-fA-F]{40})\n\n"
    r"(?P<statement>[^\n]{1,300})\n\n"
    r"URI: (?P<uri>[^\s]{1,255})\n"
    r"Version: 1\n"
    r"Chain ID: (?P<chain_id>[0-9]{1,12})\n"
    r"Nonce: (?P<nonce>[A-Za-z0-9]{8,64})\n"
    r"Issued At: (?P<issued_at>[0-9TZ:.\-]{10,40})\n"
    r"Expiration Time: (?P<expiration>[0-9TZ:.\-]{10,40})"
)


class SiweError(ValueError):
    """A sign-in message or signature that does not hold (one line, said to the caller)."""


@dataclass(frozen=True)
class SiweMessage:
    """The fields of an EIP-4361 message as this node writes them."""

    domain: str
    address: str
    uri: str
    chain_id: int
    nonce: str
    issued_at: str
    expiration: str

    def text(self, statement: str = STATEMENT) -> str:
        """The exact text to sign (EIP-4361 layout, no trailing newline)."""
        return (f"{self.domain} wants you to sign in with your Ethereum account:\n{self.address}\n\n"
                f"{statement}\n\nURI: {self.uri}\nVersion: 1\nChain ID: {self.chain_id}\n"
                f"Nonce: {self.nonce}\nIssued At: {self.issued_at}\nExpiration Time: {self.expiration}")


def parse_siwe(message: str) -> SiweMessage:
    """Parse a message in the strict layout :meth:`SiweMessage.text` writes (bounded)."""
    if not isinstance(message, str) or len(message) > MAX_MESSAGE:
        raise SiweError("sign-in message missing or too long")
    m = _SIWE.fullmatch(message)
    if m is None:
        raise SiweError("not a sign-in message this node writes (EIP-4361 layout expected)")
    return SiweMessage(domain=m["domain"], address=m["address"], uri=m["uri"], chain_id=int(m["chain_id"]),
                       nonce=m["nonce"], issued_at=m["issued_at"], expiration=m["expiration"])


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def recover_signer(message: str, signature: str) -> str:
    """The checksum address that ``personal_sign``ed ``message`` (EIP-191); SiweError if the
    signature is malformed."""
    sig = signature.removeprefix("0x") if isinstance(signature, str) else ""
    if not re.fullmatch(r"[0-9a-fA-F]{130}", sig):
        raise SiweError("signature must be 0x + 65 bytes of hex")
    try:
        return to_checksum_address(Account.recover_message(encode_defunct(text=message),
                                                           signature=bytes.fromhex(sig)))
    except Exception as exc:  # a bad v or an s out of range: eth_keys' own errors
        raise SiweError(f"signature does not recover: {str(exc).splitlines()[0][:120]}") from None


def page_origin(conn: HTTPConnection) -> str:
    """The origin of the calling page: ``Origin`` when present (the guard admitted it), else
    this node's own origin from ``Host``."""
    origin = conn.headers.get("origin")
    if origin:
        return origin.rstrip("/")
    return f"{conn.url.scheme}://{conn.headers.get('host', '127.0.0.1')}"


@dataclass
class _Session:
    address: str
    expires_at: int


class WalletSessions:
    """Issued challenges and open sessions (in memory, bounded) plus the sign-in checks."""

    def __init__(self, chain_id: Callable[[], int], session_s: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.chain_id = chain_id
        self.session_s = int(session_s if session_s is not None
                             else os.environ.get("FEDSWARM_WALLET_SESSION_S", DEFAULT_SESSION_S))
        self.clock = clock
        self._challenges: OrderedDict[str, tuple[str, int]] = OrderedDict()  # nonce -> (text, expires)
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def challenge(self, address: str, chain_id: int | None, origin: str) -> dict[str, Any]:
        """A fresh message for ``address`` to sign, bound to ``origin`` and our chain."""
        if not isinstance(address, str) or not is_address(address):
            raise SiweError("address must be a 0x EVM address")
        ours = int(self.chain_id())
        if chain_id is not None and int(chain_id) != ours:
            raise SiweError(f"switch your wallet to chain {ours} (it is on chain {chain_id})")
        domain = origin.split("://", 1)[-1]
        now = self.clock()
        nonce = secrets.token_hex(8)
        expires = int(now) + CHALLENGE_TTL_S
        msg = SiweMessage(domain=domain, address=to_checksum_address(address), uri=origin, chain_id=ours,
                          nonce=nonce, issued_at=_iso(now), expiration=_iso(expires))
        text = msg.text()
        self._challenges[nonce] = (text, expires)
        while len(self._challenges) > MAX_CHALLENGES:
            self._challenges.popitem(last=False)
        return {"message": text, "nonce": nonce, "expires_at": expires}

    def sign_in(self, message: str, signature: str, origin: str) -> dict[str, Any]:
        """Check a signed challenge and open a session (the nonce is spent whatever happens
        after it is found, so a message can be tried once)."""
        msg = parse_siwe(message)
        issued = self._challenges.pop(msg.nonce, None)
        if issued is None:
            raise SiweError("unknown or already used sign-in nonce: ask for a new challenge")
        text, expires = issued
        if text != message:
            raise SiweError("the signed message is not the one this node issued")
        if self.clock() > expires:
            raise SiweError("the sign-in message expired: ask for a new challenge")
        if msg.uri != origin or msg.domain != origin.split("://", 1)[-1]:
            raise SiweError(f"the sign-in message is for {msg.uri}, not this page ({origin})")
        if msg.chain_id != int(self.chain_id()):
            raise SiweError(f"the sign-in message is for chain {msg.chain_id}, this node runs on {self.chain_id()}")
        signer = recover_signer(message, signature)
        if signer != msg.address:
            raise SiweError("the signature is not from the message's address")
        token = secrets.token_urlsafe(32)
        session = _Session(signer, int(self.clock()) + self.session_s)
        self._sessions[token] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return {"token": token, "address": signer, "expires_at": session.expires_at}

    def lookup(self, token: str) -> _Session | None:
        """The live session of ``token`` (an expired one is dropped)."""
        s = self._sessions.get(token)
        if s is not None and self.clock() > s.expires_at:
            del self._sessions[token]
            return None
        return s

    def sign_out(self, token: str) -> bool:
        return self._sessions.pop(token, None) is not None


def cookie_name(port: int | None) -> str:
    """Per port, like the UI's session cookie (browsers share cookies between ports)."""
    return f"fedswarm_wallet_{port or 0}"


def token_of(conn: HTTPConnection) -> str | None:
    """The wallet token of a request: the ``Authorization: Wallet`` header, else the cookie."""
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "wallet":
        return value.strip()
    return conn.cookies.get(cookie_name(server_port(conn.scope)))


class WalletCredential:
    """The guard's wallet credential: a valid session token is ``Principal("wallet", address)``;
    a wrong or expired one is a 401."""

    name = "wallet"

    def __init__(self, sessions: WalletSessions) -> None:
        self.sessions = sessions

    def authenticate(self, conn: HTTPConnection) -> Principal | None:
        token = token_of(conn)
        if token is None:
            return None
        session = self.sessions.lookup(token)
        if session is None:
            raise Refusal(401, "bad-wallet-session", "wallet session unknown or expired: sign in with your wallet again")
        return Principal("wallet", session.address)


def wallet_router(sessions: WalletSessions) -> APIRouter:
    """The sign-in routes under ``/api/v1/wallet``."""
    router = APIRouter(prefix="/api/v1/wallet")

    @router.post("/challenge")
    async def challenge(request: Request) -> dict[str, Any]:
        body = await read_json(request, what="challenge request")
        chain = body.get("chain_id")
        if chain is not None and (not isinstance(chain, int) or isinstance(chain, bool)):
            raise ApiError("chain_id must be an integer")
        try:
            return sessions.challenge(body.get("address", ""), chain, page_origin(request))
        except SiweError as exc:
            raise ApiError(str(exc)) from None

    @router.post("/session")
    async def session(request: Request) -> JSONResponse:
        body = await read_json(request, what="sign-in")
        message, signature = body.get("message"), body.get("signature")
        if not isinstance(message, str) or not isinstance(signature, str):
            raise ApiError("send {\"message\": ..., \"signature\": \"0x...\"}")
        try:
            out = sessions.sign_in(message, signature, page_origin(request))
        except SiweError as exc:
            raise Refusal(401, "bad-sign-in", str(exc)) from None
        secure = "; Secure" if request.url.scheme == "https" else ""
        cookie = (f"{cookie_name(server_port(request.scope))}={out['token']}; Path=/; HttpOnly; "
                  f"SameSite=Strict; Max-Age={sessions.session_s}{secure}")
        return JSONResponse(out, headers={"Set-Cookie": cookie})

    @router.get("/me")
    async def me(request: Request) -> dict[str, Any]:
        principal = principal_of(request)
        token = token_of(request)
        session = sessions.lookup(token) if token else None
        if principal.kind != "wallet" or session is None:
            raise Refusal(401, "no-wallet-session", "not signed in with a wallet")
        return {"address": session.address, "expires_at": session.expires_at}

    @router.delete("/session")
    async def sign_out(request: Request) -> JSONResponse:
        token = token_of(request)
        if principal_of(request).kind != "wallet" or not token:
            raise Refusal(401, "no-wallet-session", "not signed in with a wallet")
        sessions.sign_out(token)
        expired = f"{cookie_name(server_port(request.scope))}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        return JSONResponse({"status": "ok"}, headers={"Set-Cookie": expired})

    return router
