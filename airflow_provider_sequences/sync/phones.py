"""Phone normalisation to E.164.

A number written with digits, spaces and ``+ ( ) - . /`` is split into country code and national
number and checked against the phonenumbers metadata patterns, for all rows of one country code
at once, exactly as ``phonenumbers.is_valid_number`` checks one number (a region's plain national
prefix, the 0 of 020 7946 0018, stripped as parse strips it). A number that needs more (an
international dialling prefix such as 00, a prefix transform rule, a kept leading zero) goes to
phonenumbers, each distinct value once.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np
import numpy.typing as npt
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from phonenumbers import NumberParseException, PhoneMetadata, PhoneNumberFormat

from airflow_provider_sequences.sync.text import (
    TEXT,
    CheckedColumn,
    Mask,
    bool_mask,
    text_lengths,
    to_objects,
    valid_mask,
)

#: E.164 allows at most 15 digits; shorter than 7 is not a number a sequence can dial.
E164_MIN_DIGITS = 7
E164_MAX_DIGITS = 15

#: Digits with the usual separators and at most one leading plus: what the fast path reads.
_PHONE_SHAPE = r"^\+?[0-9 ().\-/]{1,64}$"
_PHONE_SEPARATORS = r"[ ().\-/]"
_PHONE_DESCS = (
    "fixed_line",
    "mobile",
    "toll_free",
    "premium_rate",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)


def normalise_phones(text: pa.Array, region: str | None) -> CheckedColumn:
    """Every phone as E.164; phonenumbers sees only numbers the metadata check cannot settle."""
    size = len(text)
    region = region.upper() if region else None
    values, fast = _phones_fast(text, region)
    bad = np.zeros(size, dtype=bool)
    details: dict[int, str] = {}
    slow = np.flatnonzero(valid_mask(text) & ~fast)
    if slow.size:
        originals = text.take(pa.array(slow)).to_pylist()
        checked = {value: check_phone(value, region) for value in dict.fromkeys(originals)}
        for position, value in zip(slow.tolist(), originals, strict=True):
            e164, problem = checked[value]
            if problem is None:
                values[position] = e164
            else:
                bad[position] = True
                details[position] = problem
    return CheckedColumn(values, bad, details)


@functools.lru_cache(maxsize=1 << 16)
def check_phone(value: str, region: str | None) -> tuple[str | None, str | None]:
    """One phone through phonenumbers: ``(e164, None)`` or ``(None, problem)``."""
    if any(character.isalpha() for character in value):
        return None, f"{value!r} is not a phone number: it contains letters"
    try:
        number = phonenumbers.parse(value, region)
    except NumberParseException as error:
        return None, _parse_problem(value, region, error)
    if number.extension:
        return None, f"{value!r} has an extension; give the number without it"
    international = "+" in value or "\uff0b" in value
    if not phonenumbers.is_valid_number(number):
        if region is not None and not international:
            return None, (
                f"{value!r} is not a valid {region} phone number; "
                "numbers from other countries need +<country code>"
            )
        return None, f"{value!r} is not a valid phone number"
    e164: str = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    digits = len(e164) - 1
    if not E164_MIN_DIGITS <= digits <= E164_MAX_DIGITS:
        return None, (
            f"{value!r} is not a valid phone number: it has {digits} digits and E.164 allows "
            f"{E164_MIN_DIGITS} to {E164_MAX_DIGITS}"
        )
    return e164, None


def _parse_problem(value: str, region: str | None, error: NumberParseException) -> str:
    kind = error.error_type
    if kind == NumberParseException.INVALID_COUNTRY_CODE:
        if region is None and "+" not in value and "\uff0b" not in value:
            return f"{value!r} has no country code; set default_region or use +<country code>"
        return f"{value!r} has no known country code"
    if kind in (NumberParseException.TOO_SHORT_NSN, NumberParseException.TOO_SHORT_AFTER_IDD):
        return f"{value!r} is too short to be a phone number"
    if kind == NumberParseException.TOO_LONG:
        return f"{value!r} is too long to be a phone number"
    return f"{value!r} is not a phone number"


def _phones_fast(text: pa.Array, region: str | None) -> tuple[npt.NDArray[np.object_], Mask]:
    """E.164 for the numbers the metadata check accepts without phonenumbers.parse.

    Accepted: ``+<country code><national number>`` and, with a default region, a national
    number, written with digits and ``( ) - . / space``, where parse would strip no national or
    international prefix, keep no leading zero, and the number is valid for its country code
    as ``phonenumbers.is_valid_number`` decides. Everything else is left for ``check_phone``.
    """
    size = len(text)
    values: npt.NDArray[np.object_] = np.full(size, None, dtype=object)
    fast = np.zeros(size, dtype=bool)
    shaped = np.flatnonzero(bool_mask(pc.match_substring_regex(text, _PHONE_SHAPE)))
    if not shaped.size:
        return values, fast
    digits = pc.replace_substring_regex(text.take(pa.array(shaped)), _PHONE_SEPARATORS, "")
    plus = bool_mask(pc.starts_with(digits, "+"))
    number = pc.if_else(pa.array(plus), pc.utf8_slice_codeunits(digits, 1), digits)
    leading_zero = bool_mask(pc.starts_with(number, "0"))

    groups: list[tuple[npt.NDArray[np.intp], int, pa.Array]] = []  # (positions in shaped, cc, nsn)
    international = plus & ~leading_zero
    code_length = np.zeros(len(shaped), dtype=np.int64)
    for length in (3, 2, 1):  # the shortest known code wins, as in phonenumbers
        prefix = pc.utf8_slice_codeunits(number, 0, length)
        known = bool_mask(pc.is_in(prefix, value_set=_country_codes(length)))
        code_length[known & (text_lengths(number) > length)] = length
    for length in (1, 2, 3):
        positions = np.flatnonzero(international & (code_length == length))
        if not positions.size:
            continue
        picked = number.take(pa.array(positions))
        codes = pc.utf8_slice_codeunits(picked, 0, length)
        national = pc.utf8_slice_codeunits(picked, length)
        for code in pc.unique(codes).to_pylist():
            same = bool_mask(pc.equal(codes, code))
            groups.append((positions[same], int(code), national.filter(pa.array(same))))
    if region is not None:
        metadata: Any = PhoneMetadata.metadata_for_region(region, None)  # a supported region (PrepareSpec)
        code = int(metadata.country_code)
        national_form = (
            ~plus
            & ~bool_mask(pc.starts_with(number, str(code)))
            & ~_starts_with_pattern(number, metadata.international_prefix)
        )
        with_prefix = _starts_with_pattern(number, metadata.national_prefix_for_parsing)
        positions = np.flatnonzero(national_form & ~with_prefix & ~leading_zero)
        if positions.size:
            groups.append((positions, code, number.take(pa.array(positions))))
        positions = np.flatnonzero(national_form & with_prefix)
        if positions.size:
            kept, stripped = _strip_national_prefix(number.take(pa.array(positions)), metadata)
            if kept.any():
                groups.append((positions[kept], code, stripped))

    for positions, code, national in groups:
        # parse strips a national prefix with the main region's metadata: leave such numbers
        main = _metadata(code, _main_region(code))
        accepted = ~_starts_with_pattern(national, main.national_prefix_for_parsing)
        accepted &= _valid_national_numbers(code, national)
        accepted &= ~bool_mask(pc.starts_with(national, "0"))
        total = text_lengths(national) + len(str(code))
        accepted &= (total >= E164_MIN_DIGITS) & (total <= E164_MAX_DIGITS)
        if not accepted.any():
            continue
        e164 = pc.binary_join_element_wise(
            pa.scalar(f"+{code}", type=TEXT), national.filter(pa.array(accepted)), pa.scalar("", type=TEXT)
        )
        rows = shaped[positions[accepted]]
        values[rows] = to_objects(e164)
        fast[rows] = True
    return values, fast


def _strip_national_prefix(numbers: pa.Array, metadata: Any) -> tuple[Mask, pa.Array]:
    """National numbers of the default region with their national prefix (the 0 of 020...) off.

    Only where parse would certainly strip it the same way: the region has no transform rule,
    the number without the prefix still matches the general pattern whenever the number with
    it did, and its length is a possible one (not a local-only one). The mask marks those
    numbers; the array holds them stripped.
    """
    size = len(numbers)
    prefix_pattern = _non_capturing(metadata.national_prefix_for_parsing)
    general = metadata.general_desc
    if (
        prefix_pattern is None
        or metadata.national_prefix_transform_rule
        or general is None
        or not general.national_number_pattern
    ):
        return np.zeros(size, dtype=bool), pa.array([], type=TEXT)
    prefix = pc.struct_field(pc.extract_regex(numbers, f"^(?P<prefix>{prefix_pattern})"), [0])
    prefix_lengths = text_lengths(prefix)
    starts = np.unique(prefix_lengths)
    stripped = numbers
    for start in starts.tolist():
        same = pa.array(prefix_lengths == start)
        stripped = pc.if_else(same, pc.utf8_slice_codeunits(numbers, start), stripped)
    pattern = f"^(?:{general.national_number_pattern})$"
    was_viable = bool_mask(pc.match_substring_regex(numbers, pattern))
    still_viable = bool_mask(pc.match_substring_regex(stripped, pattern))
    lengths = text_lengths(stripped)
    kept = (
        valid_mask(prefix)
        & (prefix_lengths > 0)
        & ~(was_viable & ~still_viable)
        & np.isin(lengths, np.asarray(general.possible_length, dtype=np.int64))
        & ~np.isin(lengths, np.asarray(general.possible_length_local_only or (-1,), dtype=np.int64))
    )
    return kept, stripped.filter(pa.array(kept))


@functools.cache
def _non_capturing(pattern: str | None) -> str | None:
    """The pattern with its groups made non-capturing (Arrow extracts only named groups)."""
    if not pattern or "\\(" in pattern or re.search(r"\[[^\]]*\(", pattern):
        return None
    converted = re.sub(r"\((?!\?)", "(?:", pattern)
    return converted if re.compile(converted).groups == 0 else None


def _starts_with_pattern(text: pa.Array, pattern: str | None) -> Mask:
    """Where a metadata pattern matches at the start (``re.match``); all False for no pattern."""
    if not pattern:
        return np.zeros(len(text), dtype=bool)
    return bool_mask(pc.match_substring_regex(text, f"^(?:{pattern})"))


@functools.cache
def _country_codes(length: int) -> pa.Array:
    codes = [str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE if len(str(code)) == length]
    return pa.array(codes, type=TEXT)


def _main_region(code: int) -> str:
    region: str = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[code][0]
    return region


def _metadata(code: int, region: str) -> Any:
    return PhoneMetadata.metadata_for_region_or_calling_code(code, region.upper())


def _valid_national_numbers(code: int, national: pa.Array) -> Mask:
    """``phonenumbers.is_valid_number`` for every national number of one country code at once.

    The same steps: pick the region (the only one, or the first whose leading digits match or
    whose patterns know the number), then the number must match the general pattern and one
    number type's pattern of that region, lengths included.
    """
    regions: tuple[str, ...] = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ())
    size = len(national)
    if len(regions) == 1:
        return _known_type(national, _metadata(code, regions[0]))
    valid = np.zeros(size, dtype=bool)
    undecided = np.ones(size, dtype=bool)
    for region in regions:
        if not undecided.any():
            break
        metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
        if metadata is None:
            continue
        positions = np.flatnonzero(undecided)
        subset = national.take(pa.array(positions))
        if metadata.leading_digits is not None:
            chosen = _starts_with_pattern(subset, metadata.leading_digits)
            valid[positions[chosen]] = _known_type(subset.filter(pa.array(chosen)), metadata)
        else:
            chosen = _known_type(subset, metadata)
            valid[positions[chosen]] = True
        undecided[positions[chosen]] = False
    return valid


def _known_type(national: pa.Array, metadata: Any) -> Mask:
    """Whether ``_number_type_helper`` gives anything but UNKNOWN, for each number."""
    known = _matches_desc(national, metadata.general_desc)
    if not known.any():
        return known
    typed = np.zeros(len(national), dtype=bool)
    for name in _PHONE_DESCS:
        if name == "mobile" and metadata.same_mobile_and_fixed_line_pattern:
            continue
        open_ = np.flatnonzero(known & ~typed)
        if not open_.size:
            break
        typed[open_[_matches_desc(national.take(pa.array(open_)), getattr(metadata, name))]] = True
    return known & typed


def _matches_desc(national: pa.Array, desc: Any) -> Mask:
    """``_is_number_matching_desc``: a possible length and a full match of the pattern."""
    size = len(national)
    if desc is None or not desc.national_number_pattern:
        return np.zeros(size, dtype=bool)
    matches = np.ones(size, dtype=bool)
    if desc.possible_length:
        matches &= np.isin(text_lengths(national), np.asarray(desc.possible_length, dtype=np.int64))
    if matches.any():
        positions = np.flatnonzero(matches)
        pattern = f"^(?:{desc.national_number_pattern})$"
        matches[positions] = bool_mask(pc.match_substring_regex(national.take(pa.array(positions)), pattern))
    return matches
