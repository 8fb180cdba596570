"""Reading what a user hands us (a config file, a data row, a form or flag value) without letting it exhaust or
confuse the machine: bounded before it is parsed, refused when it is ambiguous.

- A config is at most `MAX_CONFIG_BYTES`, and only a regular file (a FIFO or a device would block the reader).
- YAML: no anchors or aliases (an alias bomb of a few hundred bytes expands to gigabytes; a run config needs
  neither), no key given twice (YAML keeps the last one silently), at most `MAX_DEPTH` levels of nesting, integers of
  at most `MAX_INT_DIGITS` digits.
- JSON: no key given twice in one object, the same integer bound, nesting bounded by the parser's recursion limit.
- Every string is valid Unicode text: a lone surrogate (which JSON's `\\ud800` escape can produce) is refused.
- An error quotes at most `EXCERPT_CHARS` of the offending value.
"""

from __future__ import annotations

import json
import stat
import unicodedata
from pathlib import Path
from typing import Any

import yaml

MAX_CONFIG_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_INT_DIGITS = 30
EXCERPT_CHARS = 80
MAX_STRING_CHARS = 65536  # one config value; data rows have their own bound (ValidationConfig.max_text_chars)
# characters that show nothing on their own (besides whitespace and format controls): Hangul fillers, braille blank
_BLANK_LETTERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}


class DocumentError(ValueError):
    """A document that cannot be read as given; the message says where and why, quoting a bounded excerpt."""


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """`repr(value)`, cut to `limit` characters with the full length said: an error never repeats a huge input."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


def require_regular_file(path: Path, what: str) -> int:
    """The file's size; a directory, FIFO, socket or device is refused by name (reading one blocks or means
    nothing)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DocumentError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise DocumentError(f"{path}: cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise DocumentError(f"{path}: is a directory, not a {what} (give the file inside it)")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "a device or socket"
        raise DocumentError(f"{path}: is {kind}, not a regular {what}")
    return info.st_size


def read_config_text(path: Path) -> str:
    """The text of a config file, bounded in size before it is read."""
    size = require_regular_file(path, "config file")
    if size > MAX_CONFIG_BYTES:
        raise DocumentError(
            f"{path}: is {size:,} bytes; a config file may be at most {MAX_CONFIG_BYTES:,} (data goes in data files)"
        )
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def check_text(value: str, where: str) -> None:
    """A string must be valid Unicode text: a lone surrogate cannot be stored, hashed or shown."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DocumentError(
            f"{where}: holds a lone surrogate (U+{ord(value[exc.start]):04X}) at character {exc.start}, "
            "which is not text; fix the escape that produced it"
        ) from None


def check_strings(value: Any, where: str = "") -> None:
    """Every string (keys included) in a parsed config is valid Unicode text of a bounded length; the error names
    its path."""
    if isinstance(value, str):
        check_text(value, where or "value")
        if len(value) > MAX_STRING_CHARS:
            raise DocumentError(
                f"{where or 'value'}: is {len(value):,} characters long; a config value may have at most "
                f"{MAX_STRING_CHARS:,} ({excerpt(value)})"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str):
                check_text(key, f"key {path}")
            check_strings(item, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_strings(item, f"{where}[{index}]")


def is_blank(text: str) -> bool:
    """Whether a text shows nothing: only whitespace, control and format characters (zero-width spaces and joiners,
    the byte-order mark, direction marks) and blank letters."""
    return all(
        ch in _BLANK_LETTERS or ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cn")
        for ch in text
    )


def bounded_int(text: str) -> int:
    digits = text.lstrip("+-")
    if len(digits) > MAX_INT_DIGITS:
        raise DocumentError(f"an integer of {len(digits):,} digits; at most {MAX_INT_DIGITS} are accepted")
    return int(text)


# ----------------------------------------------------------------------------------------------- YAML


class StrictYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases, duplicate keys, deep nesting or huge integers."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None,
                None,
                "an alias (*name) is not accepted in an alignlab config: write the value out",
                event.start_mark,
            )
        if getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(
                None,
                None,
                "an anchor (&name) is not accepted in an alignlab config: write the value out",
                event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {excerpt(key)} is given twice (first on line {first.line + 1}); give each key once",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        value = self.construct_scalar(node).replace("_", "")
        if len(value.lstrip("+-")) > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"an integer of {len(value):,} digits; at most {MAX_INT_DIGITS} are accepted",
                node.start_mark,
            )
        return super().construct_yaml_int(node)


StrictYamlLoader.add_constructor("tag:yaml.org,2002:int", StrictYamlLoader.construct_yaml_int)


def _bounded_message(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 600 else text[:600] + f"… ({len(text):,} characters)"


def parse_yaml(text: str) -> Any:
    """A YAML document read strictly (see `StrictYamlLoader`); DocumentError says what and where (line, column)."""
    try:
        data = yaml.load(text, Loader=StrictYamlLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise DocumentError(f"not valid YAML: {_bounded_message(exc)}") from None
    except RecursionError:
        raise DocumentError("not valid YAML: nested too deeply") from None
    check_strings(data)
    return data


# ----------------------------------------------------------------------------------------------- JSON


class DuplicateKeyError(DocumentError):
    """A JSON object gives one key twice (json keeps the last one silently); `key` names it."""

    def __init__(self, key: str):
        super().__init__(f"key {excerpt(key)} is given twice in one object; give each key once")
        self.key = key


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads`'s object hook for a strict read: a key given twice raises DuplicateKeyError."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def parse_json(text: str) -> Any:
    """A JSON document read strictly: no key given twice in an object, bounded integers and nesting, valid text."""
    try:
        data = json.loads(text, object_pairs_hook=no_duplicate_keys, parse_int=bounded_int)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise DocumentError("not valid JSON: nested too deeply") from None
    check_strings(data)
    return data


def parse_document(text: str, yaml_syntax: bool) -> Any:
    return parse_yaml(text) if yaml_syntax else parse_json(text)
