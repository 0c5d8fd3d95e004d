import base64
import hashlib
import hmac
import pickle
import time

COOKIE_NAME = "sid"
MAX_AGE = 14 * 24 * 3600


class CookieSessionCodec:
    """Turns session dictionaries into signed cookie values and back."""

    def __init__(self, secret_key: bytes):
        self._key = secret_key

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def encode(self, session: dict) -> str:
        payload = pickle.dumps({"data": session, "issued": int(time.time())})
        token = self._sign(payload) + payload
        return base64.b64encode(token, altchars=b"-_").decode("ascii")

    def decode(self, cookie_value: str):
        try:
            token = base64.b64decode(cookie_value.encode("ascii"), altchars=b"-_")
        except (ValueError, UnicodeEncodeError):
            return None
        signature, payload = token[:32], token[32:]
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        envelope = pickle.loads(payload)
        if time.time() - envelope["issued"] > MAX_AGE:
            return None
        return envelope["data"]


def load_request_session(request, codec):
    raw = request.cookies.get(COOKIE_NAME)
    if not raw:
        return {}
    return codec.decode(raw) or {}
