"""The one redaction of credentials, for every URL and command line that leaves a process: a
tag, a report, a log line, an error message, a child's command line.

``redact(text)`` finds every URL in ``text`` (``scheme://...``, inside a longer text too) and
replaces the password of its ``user:password@`` part, and the value of any query parameter that
holds a secret (``password``, ``passwd``, ``pwd``, ``secret``, ``token``, ``api_key``, ...), by
``***``. A user name, host, port, path and every other parameter stay, so the line still says
where the data went. Imports nothing of negbench: every module may use it.
"""

from __future__ import annotations

import re

MASK = "***"


def _userinfo(pw: str) -> re.Pattern:
    # scheme://user:password@ : the password ends at the last '@' before the host, which ends at
    # '/', '?', '#', whitespace, a quote or the end; ``pw`` is what a password may hold
    return re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:'\"]*:)(?P<pw>" + pw + r")@"
                      r"(?=[^\s@/?#'\"]*(?:[/?#\s'\"]|$))")


# in free text a password holds no whitespace (else "http://host:5000 and a@b" would lose its
# port); inside a shell-quoted word ('...', as shlex.join writes a command line) it may
_USERINFO = _userinfo(r"[^\s/'\"]*")
_USERINFO_QUOTED = _userinfo(r"[^\n/'\"]*")
_QUOTED = re.compile(r"'[^'\n]*://[^'\n]*'")
# ?password=...&token=... (any URL's query; also libpq's keyword form in a query)
_SECRET_PARAM = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|pass|secret|token|"
                           r"access_token|api_key|apikey|key|sslpassword)=)(?P<value>[^&#\s'\"]*)",
                           re.IGNORECASE)


def _mask_userinfo(m: re.Match) -> str:
    return f"{m['head']}{MASK}@"


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    if not text or ("://" not in text and "=" not in text):
        return text
    out = _QUOTED.sub(lambda q: _USERINFO_QUOTED.sub(_mask_userinfo, q[0]), text)
    out = _USERINFO.sub(_mask_userinfo, out)
    return _SECRET_PARAM.sub(lambda m: f"{m['head']}{MASK}" if m["value"] else m[0], out)


def has_password(url: str) -> bool:
    """Whether ``url`` holds a credential that :func:`redact` would hide."""
    return redact(url) != url
