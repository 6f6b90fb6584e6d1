"""Normalised matchers: one canonical form per kind of value, so the same value written two
ways is recognised as the same value.

IBANs lose separators and case (`gb33-bukb-2020…` is `GB33BUKB2020…`) and must pass the ISO
7064 mod-97 check, so a postal code or an order number is never read as an account. Hosts
lose `www.`, case, port and trailing dot; URLs lose their scheme and trailing slash. Amounts
read `1,234.50`, `1.234,50`, `1'234.5` and `-19.99` as the same numbers (an ambiguous `1,234`
yields both readings). Dates read ISO, `20.05.2024`, `05/20/2024` and `May 20th, 2024`;
times read `14:00`, `2pm` and `2:00 PM`. Bare hosts (`www.evil.example/x`) are recognised
without a scheme, but only on real top-level domains, so `report.pdf` is not a host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

# Top-level domains recognised in bare hosts. File extensions (pdf, docx, py, sh, md, zip)
# are deliberately absent: "report.pdf" is a file name, not a host.
_TLDS = frozenset(
    "com net org edu gov mil int io ai co dev app info biz me us uk de fr es it nl ch at be ca au jp cn ru in "
    "br eu se no dk fi pl cz pt ie nz za mx ar kr tw hk sg xyz site online top shop store tech cloud link club "
    "live news blog email page website space today world pro cc tv ly gg fm bank money finance travel "
    "example test invalid local".split()
)
_HOSTISH = re.compile(
    r"(?<![\w@.\-])(?:(?:https?|ftp)://)?(?:[\w.%+\-]+(?::[^@\s/]*)?@)?"
    r"((?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+([a-z]{2,24}))\.?(?::\d{1,5})?"
    r"(/[^\s<>\"'`)\]}]*)?",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"(?<![\w.%+\-])[a-z0-9._%+\-]+@(?:[a-z0-9\-]+\.)+[a-z]{2,24}(?![\w\-])", re.IGNORECASE)
_IBANISH = re.compile(
    r"(?<![a-z0-9])[a-z]{2}(?:\s*[\-./]?\s*)\d(?:\s*[\-./]?\s*)\d(?:(?:\s*[\-./]?\s*)[a-z0-9]){11,34}(?![a-z0-9])",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\d+(?:[.,']\d+)*")
_PHONE = re.compile(r"(?<![\w])\+?\d[\d ().\-]{5,18}\d(?![\w])")
_WORD = re.compile(r"\w+")
_NON_ALNUM = re.compile(r"[\W_]+")

_MONTHS = {
    m: i + 1
    for i, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ]
    )
    for m in names
}
_MONTH_RE = "|".join(sorted(_MONTHS, key=len, reverse=True))
_ISO_DATE = re.compile(r"(?<!\d)(\d{4})-(\d{1,2})-(\d{1,2})(?!\d)")
_NUM_DATE = re.compile(r"(?<![\d.])(\d{1,2})[./](\d{1,2})[./](\d{4}|\d{2})(?![\d])")
_NAMED_DATE = re.compile(
    rf"(?:(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?)?\b({_MONTH_RE})\b\.?(?:\s+(\d{{1,2}})(?:st|nd|rd|th)?\b)?"
    r"(?:,?\s+(\d{4}))?",
    re.IGNORECASE,
)
_CLOCK = re.compile(r"(?<![\d:])(\d{1,2}):(\d{2})(?::\d{2})?(?:\s*([ap])\.?m\.?)?(?![\d])", re.IGNORECASE)
_HOUR_AMPM = re.compile(r"(?<![\d:])(\d{1,2})\s*([ap])\.?m\.?(?![a-z])", re.IGNORECASE)


def compact(text: str) -> str:
    """Upper-case letters and digits only: the form identifiers are compared in, whatever
    separators, case or field boundaries they were written with."""
    return _NON_ALNUM.sub("", text).upper()


def words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.casefold()))


def alnum_runs(text: str) -> tuple[str, ...]:
    """The upper-cased letter/digit runs of a text, in order (what `assembled_from` walks)."""
    return tuple(m.group(0).upper() for m in re.finditer(r"[A-Za-z0-9]+", text))


def assembled_from(value: str, runs: tuple[str, ...], *, max_skip: int = 6) -> bool:
    """True when `value` (compact form) is the concatenation of runs of the text in order,
    with at most `max_skip` other runs (field labels, "and", "account number") in between:
    an IBAN written across two fields of a bill, or around words."""
    if len(value) < 10:
        return False
    for start, first in enumerate(runs):
        if len(first) < 2 or not value.startswith(first):
            continue
        pos, skipped = len(first), 0
        for run in runs[start + 1 :]:
            if pos == len(value):
                break
            if value.startswith(run, pos):
                pos += len(run)
                skipped = 0
            else:
                skipped += 1
                if skipped > max_skip:
                    break
        if pos == len(value):
            return True
    return False


# ISO 13616 lengths per country (the registry's common entries); others need only the checksum.
_IBAN_LENGTH = {
    cc: int(n)
    for cc, n in (
        pair.split(":")
        for pair in (
            "AD:24 AE:23 AL:28 AT:20 AZ:28 BA:20 BE:16 BG:22 BH:22 BR:29 CH:21 CR:22 CY:28 CZ:24 DE:22 DK:18 "
            "DO:28 EE:20 EG:29 ES:24 FI:18 FO:18 FR:27 GB:22 GE:22 GI:23 GL:18 GR:27 GT:28 HR:21 HU:28 IE:22 "
            "IL:23 IS:26 IT:27 JO:30 KW:30 KZ:20 LB:28 LI:21 LT:20 LU:20 LV:21 MC:27 MD:24 ME:22 MK:19 MR:27 "
            "MT:31 MU:30 NL:18 NO:15 PK:24 PL:28 PS:29 PT:25 QA:29 RO:24 RS:22 SA:24 SE:24 SI:19 SK:24 SM:27 "
            "TN:24 TR:26 UA:29 VG:24 XK:20"
        ).split()
    )
}


def iban_valid(candidate: str) -> bool:
    """ISO 13616 structure, the country's length, and the mod-97 check digits."""
    s = compact(candidate)
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", s):
        return False
    if _IBAN_LENGTH.get(s[:2], len(s)) != len(s):
        return False
    digits = "".join(str(int(c, 36)) for c in s[4:] + s[:4])
    return int(digits) % 97 == 1


def norm_iban(raw: str) -> str | None:
    s = compact(raw)
    return s if iban_valid(s) else None


def ibans_in(text: str) -> set[str]:
    out: set[str] = set()
    for m in _IBANISH.finditer(text):
        s = compact(m.group(0))
        # a greedy match may swallow a following word: the country's length decides, else the
        # longest prefix with valid check digits
        known = _IBAN_LENGTH.get(s[:2])
        for end in [known] if known else range(len(s), 14, -1):
            if iban_valid(s[:end]):
                out.add(s[:end])
                break
    return out


def norm_email(raw: str) -> str | None:
    s = raw.strip().lower().removeprefix("mailto:")
    return s if _EMAIL.fullmatch(s) else None


def emails_in(text: str) -> set[str]:
    return {m.group(0).lower() for m in _EMAIL.finditer(text)}


def norm_host(raw: str) -> str | None:
    s = raw.strip().lower()
    s = re.sub(r"^[a-z][a-z0-9+.\-]*://", "", s)
    s = re.split(r"[/?#]", s, maxsplit=1)[0].rsplit("@", 1)[-1].split(":", 1)[0].rstrip(".")
    s = s.removeprefix("www.")
    if not re.fullmatch(r"(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}", s):
        return None
    return s if s.rsplit(".", 1)[1] in _TLDS else None


def norm_url(raw: str) -> str | None:
    """`host/path?query` without scheme, `www.` or trailing punctuation, lower-cased."""
    s = raw.strip()
    m = _HOSTISH.fullmatch(s.rstrip(".,;:!?/"))
    if m is None or m.group(2).lower() not in _TLDS:
        return None
    host = m.group(1).lower().removeprefix("www.")
    path = (m.group(3) or "").rstrip(".,;:!?/").lower()
    return host + path


def urls_in(text: str) -> list[tuple[str, str, tuple[int, int]]]:
    """(normalised URL, host, span) for every URL or bare host on a known top-level domain."""
    out: list[tuple[str, str, tuple[int, int]]] = []
    for m in _HOSTISH.finditer(text):
        if m.group(2).lower() not in _TLDS:
            continue
        host = m.group(1).lower().removeprefix("www.")
        path = (m.group(3) or "").rstrip(".,;:!?/").lower()
        out.append((host + path, host, m.span()))
    return out


def _decimal(text: str) -> Decimal | None:
    try:
        return abs(Decimal(text))
    except InvalidOperation:
        return None


def canon_amount(value: Decimal | float | int) -> str:
    d = Decimal(str(value)) if not isinstance(value, Decimal) else value
    d = abs(d)
    text = format(d.normalize(), "f") if d != 0 else "0"
    return text.rstrip("0").rstrip(".") if "." in text else text


def amount_readings(token: str) -> set[str]:
    """Every plausible numeric reading of one written number (`1,234` is 1234 or 1.234)."""
    token = token.strip().lstrip("+-").replace("\u00a0", "")
    seps = [c for c in token if c in ".,'"]
    if not seps:
        d = _decimal(token)
        return {canon_amount(d)} if d is not None else set()
    readings: list[str] = []
    if "'" in seps:
        token, seps = token.replace("'", ""), [c for c in seps if c != "'"]
        if not seps:
            readings.append(token)
    if seps:
        last = max(token.rfind("."), token.rfind(","))
        whole, frac = token[:last], token[last + 1 :]
        whole_digits = re.sub(r"[.,]", "", whole)
        if len(set(seps)) == 2 or len(seps) == 1:
            readings.append(f"{whole_digits}.{frac}")  # the last separator is the decimal point
            if len(set(seps)) == 1 and len(frac) == 3:
                readings.append(whole_digits + frac)  # ... or a thousands separator
        else:  # one kind, several times: thousands separators
            readings.append(re.sub(r"[.,]", "", token))
    out: set[str] = set()
    for r in readings:
        d = _decimal(r)
        if d is not None:
            out.add(canon_amount(d))
    return out


def amounts_in(text: str) -> set[str]:
    out: set[str] = set()
    for m in _NUMBER.finditer(text):
        out |= amount_readings(m.group(0))
    return out


def norm_amount(raw: str | float | int) -> str | None:
    if isinstance(raw, int | float):
        return canon_amount(Decimal(str(raw)))
    cleaned = re.sub(r"[^\d.,'\-+]", "", raw)
    readings = amount_readings(cleaned) if cleaned else set()
    return min(readings, key=len) if len(readings) == 1 else (sorted(readings)[0] if readings else None)


def _valid_date(y: int, m: int, d: int) -> bool:
    return 1 <= m <= 12 and 1 <= d <= 31 and 1900 <= y <= 2200


@dataclass(frozen=True, slots=True)
class Moments:
    dates: frozenset[str]  # YYYY-MM-DD
    monthdays: frozenset[str]  # MM-DD (a date written without its year)
    times: frozenset[str]  # HH:MM, 24-hour


def moments_in(text: str) -> Moments:
    dates: set[str] = set()
    monthdays: set[str] = set()
    times: set[str] = set()
    for m in _ISO_DATE.finditer(text):
        y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if _valid_date(y, mo, d):
            dates.add(f"{y:04d}-{mo:02d}-{d:02d}")
    for m in _NUM_DATE.finditer(text):
        a, b, y = int(m.group(1)), int(m.group(2)), int(m.group(3))
        y = y + 2000 if y < 100 else y
        for d, mo in ((a, b), (b, a)):  # day-first and month-first readings
            if _valid_date(y, mo, d):
                dates.add(f"{y:04d}-{mo:02d}-{d:02d}")
    for m in _NAMED_DATE.finditer(text):
        mo = _MONTHS[m.group(2).lower()]
        day = m.group(1) or m.group(3)
        if day is None:
            continue
        d = int(day)
        if not 1 <= d <= 31:
            continue
        if m.group(4):
            dates.add(f"{int(m.group(4)):04d}-{mo:02d}-{d:02d}")
        monthdays.add(f"{mo:02d}-{d:02d}")
    for m in _CLOCK.finditer(text):
        h, mi = int(m.group(1)), int(m.group(2))
        h = _ampm(h, m.group(3))
        if 0 <= h <= 23 and 0 <= mi <= 59:
            times.add(f"{h:02d}:{mi:02d}")
    for m in _HOUR_AMPM.finditer(text):
        h = _ampm(int(m.group(1)), m.group(2))
        if 0 <= h <= 23:
            times.add(f"{h:02d}:00")
    lowered = text.lower()
    if "noon" in lowered:
        times.add("12:00")
    if "midnight" in lowered:
        times.add("00:00")
    monthdays |= {d[5:] for d in dates}
    return Moments(frozenset(dates), frozenset(monthdays), frozenset(times))


def mostly_moment(text: str) -> bool:
    """The text is a date and/or time and little else ("2024-05-20 14:00", "May 20 at 2pm"),
    not an identifier that contains one ("INV-2024-05-20")."""
    rest = text
    for pattern in (_ISO_DATE, _NUM_DATE, _NAMED_DATE, _CLOCK, _HOUR_AMPM):
        rest = pattern.sub(" ", rest)
    rest = re.sub(r"\b(at|on|from|to|t|z|utc|noon|midnight)\b|[\W_]", "", rest.lower())
    return len(rest) <= 2


def _ampm(hour: int, marker: str | None) -> int:
    if marker is None:
        return hour
    if marker.lower() == "p" and hour < 12:
        return hour + 12
    if marker.lower() == "a" and hour == 12:
        return 0
    return hour


def phone_digits(raw: str) -> str | None:
    digits = re.sub(r"\D", "", raw)
    return digits if 7 <= len(digits) <= 15 else None


def phones_in(text: str) -> set[str]:
    out: set[str] = set()
    for m in _PHONE.finditer(text):
        d = phone_digits(m.group(0))
        if d is not None:
            out.add(d)
    return out


def same_phone(a: str, b: str) -> bool:
    """Equal digits, or equal up to a country prefix (at least 7 trailing digits agree)."""
    short, long = sorted((a, b), key=len)
    return len(short) >= 7 and long.endswith(short)


__all__ = [
    "Moments",
    "alnum_runs",
    "amount_readings",
    "amounts_in",
    "assembled_from",
    "canon_amount",
    "compact",
    "emails_in",
    "iban_valid",
    "ibans_in",
    "moments_in",
    "mostly_moment",
    "norm_amount",
    "norm_email",
    "norm_host",
    "norm_iban",
    "norm_url",
    "phone_digits",
    "phones_in",
    "same_phone",
    "urls_in",
    "words",
]
