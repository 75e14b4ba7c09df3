"""The cron dialect of KFP's scheduler: six fields, seconds first. `tunepipe schedule` checks an
expression here before any request, and the local scheduler uses the same rules and messages; no
kfp import, so the local scheduler stays light."""
from __future__ import annotations

from croniter import croniter

from components.errors import TunepipeError

_FIVE_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_SIX_FIELDS = ("second", *_FIVE_FIELDS)
_FIELD_RANGES = {"second": "0-59", "minute": "0-59", "hour": "0-23", "day-of-month": "1-31",
                 "month": "1-12 or JAN-DEC", "day-of-week": "0-6 or SUN-SAT"}


def to_kfp_cron(expression: str) -> str:
    """`expression` in the cron dialect of KFP's scheduler: six fields, seconds first.

    Accepts the usual five fields (minute hour day-of-month month day-of-week), which run at second
    0, or six fields with seconds first, as KFP documents. Anything else raises `TunepipeError`
    naming the expression and the field at fault. Makes no network call.
    """
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise TunepipeError(f"cron expression {expression!r} has {len(fields)} field(s): give 5 "
                            f"({' '.join(_FIVE_FIELDS)}) or 6 with seconds first")
    names = _FIVE_FIELDS if len(fields) == 5 else _SIX_FIELDS
    seconds_first = len(fields) == 6
    if not croniter.is_valid(" ".join(fields), second_at_beginning=seconds_first):
        raise TunepipeError(f"cron expression {expression!r}: {_cron_fault(fields, names, seconds_first)}")
    return " ".join(fields) if seconds_first else " ".join(["0", *fields])


def _cron_fault(fields: list[str], names: tuple[str, ...], seconds_first: bool) -> str:
    """Which field of an invalid cron expression is wrong, found by checking each one alone."""
    for position, (field, name) in enumerate(zip(fields, names)):
        alone = ["*"] * len(fields)
        alone[position] = field
        try:
            croniter(" ".join(alone), second_at_beginning=seconds_first)
        except (ValueError, KeyError) as error:
            if "out of range" in str(error):
                return f"the {name} field {field!r} is out of range ({_FIELD_RANGES[name]})"
            return f"the {name} field {field!r} is not a valid {name} ({_FIELD_RANGES[name]}, *, lists, ranges, steps)"
    return "the fields do not make a valid schedule together"
