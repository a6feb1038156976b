"""Reading metrics from a program's output lines, with no configuration.

`OutputScanner` turns each line a program prints (stdout and stderr; a `\\r`
progress-bar update is a line; ANSI colour codes and backspaces dropped) into
an `Observation`: the named numbers on it and where the program was.

What `auto` takes (README "Metrics from a program as it is" lists the same):
- `name: value` and `name=value` (a name is one to three words:
  `Average loss: 0.28`, tqdm's postfix `[..., loss=0.43]`, Keras'
  `- val_loss: 0.15`);
- `name value` when it is a whole field between `|`, `,`, `;`, tabs, ` - `
  or `: ` (`| valid loss  6.91 |`, `iter 10: loss 4.23, time 40.1ms`), or a
  field made only of such pairs (`epoch 3 loss 0.41 acc 0.93`);
- Python dict and JSON lines, values plain or quoted numbers
  (`{'eval_loss': '0.69', 'epoch': 3.0}`, the Hugging Face Trainer's);
- a number's unit or percent sign is dropped (`40.1ms`, `12.5%`, `10.65M`),
  thousands separators read (`16,384`).
Names are lower-cased, spaces and `/` made `_` (`valid loss` -> `valid_loss`,
`val/loss` -> `val_loss`), then `rename` applies.

Where the program was: `epoch`, `step` or `iter` (or a name ending in
`_epoch`/`epoch`, `_step`) on the line, `Epoch 3/10` and `Step [100/1000]`
headers, else the last epoch and step seen on an earlier line.

What it leaves: counters (`44/44`, `200/ 2983 batches`), times of day and
dates (`12:30:01`, `2024-05-01`), `--name value` argument echoes, argparse's
`Namespace(...)`, a traceback's `File "x.py", line 12` and a warning's
`x.py:12:`, tqdm's rates and Lightning's `v_num`, a dataloader's index,
and anything printed before the program's first step (settings, banners,
`number of parameters: 10.65M`). User patterns (`[script.capture] patterns`)
are regexes with named groups: `epoch`/`step`/`iter` give the place, every
other group a value; with `output = "patterns"` they are all that is read
(the place still comes from headers like `Epoch 3/10`; a pattern's values with
no place known are each the next step).

A program prints the same few line shapes thousands of times: the parse of a
shape (the line with its digits zeroed) is cached, and a line of a known
shape costs a translate, a dict lookup and one number parse per value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from trialdeck.engine.capture.steps import EPOCH_NAMES, STEP_NAMES, Number, Observation

ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+(?![\d.])|\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)\b"
_NUM = re.compile(NUMBER, re.IGNORECASE)
_TOKEN = re.compile(r"\d[\d,.]*(?:[eE][-+]?\d+)?")
"""A line's number tokens, as cheaply as `re` finds them (a digit first): a plan names its values
by their index among these, and their sign and the NaNs by what the shape shows."""
NAN_TOKEN, INF_TOKEN = -2, -3
# After a value: a unit or a percent sign, then the end of the value. Not a counter (44/44),
# a time (12:30), a date (2024-05-01) or a version (1.2.3).
_END = r"(?!\s*/\s*\d|:\d|-\d|\.\d)(?:[A-Za-z\u00b5%]{1,4}(?:/[A-Za-z]{1,5})?)?(?=$|[\s,;|)\]}'\"])"
_WORD = r"[A-Za-z_][\w@./-]*"
_PAIR = re.compile(rf"(?<![\w@./'\"-])(?P<name>{_WORD}(?: {_WORD}){{0,2}})\s*[:=]\s*(?P<num>{NUMBER}){_END}",
                   re.IGNORECASE)
_DICT_PAIR = re.compile(rf"['\"](?P<name>[^'\"]{{1,100}})['\"]\s*:\s*(?:np\.float\d*\(|np\.int\d*\(|tensor\()?"
                        rf"['\"]?(?P<num>{NUMBER})", re.IGNORECASE)
_DICT_START = re.compile(r"\{\s*['\"]")
_FIELD_SPLIT = re.compile(r"\s*(?:\||,|;|\t|\s-\s|:\s)\s*")
_FIELD_PAIRS = re.compile(rf"(?:{_WORD}\s+(?:{NUMBER}){_END}\s*)+", re.IGNORECASE)
_FIELD_PAIR = re.compile(rf"(?P<name>{_WORD})\s+(?P<num>{NUMBER}){_END}", re.IGNORECASE)
_FIELD_ONE = re.compile(rf"(?P<name>{_WORD}(?:\s+{_WORD}){{0,3}})\s+(?P<num>{NUMBER}){_END}", re.IGNORECASE)
_HEADER = re.compile(r"(?<![\w/])(?P<kind>epoch|step|iter(?:ation)?)\s*[:=#]?\s*"
                     r"(?:[\[(]?\s*(?P<num>\d+)\s*/\s*\d+|\[\s*(?P<alone>\d+)\s*\])", re.IGNORECASE)
_PAREN_NUM = re.compile(rf"\(\s*(?:{NUMBER})%?\s*\)", re.IGNORECASE)
"""A running average after a value, `Loss 2.34 (2.50)`: left out so the field reads as a pair."""
_PREFIX = re.compile(r"^\s*(?:\[?\d{4}-\d\d-\d\d(?:[ T]\d\d:\d\d(?::\d\d)?(?:[.,]\d+)?)?\]?|\[?\d\d:\d\d:\d\d(?:[.,]\d+)?\]?)"
                     r"|^\s*(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):[\w.]*:")
_LEAD = re.compile(r"[^\w]*")
"""Punctuation before a field's name (` * Acc@1 ...`); a field that starts with a number is no pair."""
_SKIP_LINE = re.compile(r"Namespace\(|^\s*File \"|^Traceback \(most recent call last\)|\.py:\d+: ")
"""Argparse's echo, a traceback's frames, a Python warning's `file.py:12:`: never metrics."""
_NAN_OR_INF = re.compile(r"nan|inf", re.IGNORECASE)
_DIGITS = str.maketrans("123456789", "000000000")
IGNORED = frozenset({"v_num", "hp_metric", "eta", "it_s", "s_it"})
"""Names that are never metrics: Lightning's version number and TensorBoard placeholder, times left."""
CACHE_SIZE = 1024

Plan = tuple[tuple[str, str, int, int], ...]
"""A parsed line shape: (recorded name, kind, which of the line's number tokens, sign); kind is
value/epoch/step. The tokens are `_TOKEN`'s matches, the same for every line of the shape."""


def clean(text: str) -> str:
    """A chunk of output as lines: ANSI codes and backspaces dropped, `\\r` updates made lines."""
    if "\x1b" in text:
        text = ANSI.sub("", text)
    if "\x08" in text:
        text = text.replace("\x08", "")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def normalize(name: str) -> str:
    """`Valid Loss` -> `valid_loss`, `val/loss` -> `val_loss`, `ms/batch` -> `ms_batch`."""
    out = re.sub(r"[\s/]+", "_", name.strip().lower()).strip("_.-")
    return re.sub(r"_+", "_", out)


def kind_of(name: str) -> str:
    if name in EPOCH_NAMES or name.endswith("_epoch"):
        return "epoch"
    if name in STEP_NAMES or name.endswith("_step"):
        return "step"
    return "value"


def number(text: str) -> Number | None:
    """A captured number: an int when it is written as one, else a float (None: not a number)."""
    text = text.strip().strip("'\"").replace(",", "")
    try:
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    except ValueError:
        return None


_CONSTANT: dict[int, float] = {NAN_TOKEN: math.nan, INF_TOKEN: math.inf, NAN_TOKEN - 2: -math.inf}


def _value(token: str, sign: int = 1) -> Number | None:
    """A number token as a value, fast: most are plain ints or floats."""
    if token.isdigit():
        return sign * int(token)
    try:
        return sign * float(token)
    except ValueError:
        value = number(token)
        return None if value is None else sign * value


def _ignored(name: str) -> bool:
    return not name or name in IGNORED or "dataloader" in name


class OutputScanner:
    """One run's output, line by line (see the module docstring); keeps the last epoch and step."""

    def __init__(self, mode: str = "auto", patterns: Iterable[str] = (), rename: Mapping[str, str] | None = None) -> None:
        self.auto = mode == "auto"
        self.patterns = [re.compile(p) for p in patterns] if mode != "off" else []
        self.rename = dict(rename or {})
        self.epoch: Number | None = None
        self.step: Number | None = None
        self.last_key: int | None = None
        self._cache: dict[str, Plan] = {}
        self._spans: dict[str, tuple[tuple[int, int], ...]] = {}
        """Per shape, where the numbers that decide its place are (its epoch's, else its step's)."""

    @property
    def active(self) -> bool:
        return self.auto or bool(self.patterns)

    def feed(self, text: str) -> list[Observation]:
        """Observations from a chunk of whole lines.

        A line of the same shape as the one before it, at the same place (a bar redrawn, a loop
        printing every step of an epoch), is only compared, not parsed: the later values of the
        same names at the same place win anyway. That is most of a chatty program's lines."""
        out = []
        held: str | None = None
        held_shape = ""
        spans: tuple[tuple[int, int], ...] = ()
        for line in clean(text).split("\n"):
            if not self.patterns:
                shape = line.translate(_DIGITS)
                if shape == line and held is not None and not _NAN_OR_INF.search(line):
                    continue  # no number: nothing to read, nor a new place
                if held is not None and shape == held_shape and all(line[a:b] == held[a:b] for a, b in spans):
                    held = line  # the same place again: the later line wins
                    continue
                if held is not None:
                    obs = self.scan(held)
                    if obs is not None:
                        out.append(obs)
                held, held_shape, spans = line, shape, self._spans.get(shape, ((0, len(line)),))
                continue
            obs = self.scan(line)
            if obs is not None:
                out.append(obs)
        if held is not None:
            obs = self.scan(held)
            if obs is not None:
                out.append(obs)
        return out

    def scan(self, line: str) -> Observation | None:
        """The line's values at its place, or None (nothing on it, or no place known yet)."""
        epoch = step = None
        values: dict[str, Number] = {}
        if self.auto:
            plan = self._plan(line)
            if plan:
                tokens = _TOKEN.findall(line)
                for name, kind, index, sign in plan:
                    value = _value(tokens[index], sign) if index >= 0 else _CONSTANT.get(index)
                    if value is None:
                        continue
                    if kind == "value":
                        values[name] = value
                    elif kind == "epoch":
                        epoch = value if epoch is None else epoch
                    elif step is None:
                        step = value
        from_pattern = False
        for pattern in self.patterns:
            match = pattern.search(line)
            if match is None:
                continue
            for group, text in match.groupdict().items():
                value = number(text) if text is not None else None
                if value is None:
                    continue
                if group == "epoch":
                    epoch = value
                elif group in ("step", "iter"):
                    step = value
                else:
                    values[self.rename.get(group, group)] = value
                    from_pattern = True
        if not self.auto and self.patterns and epoch is None and step is None:
            epoch, step = _HEADER_SCANNER.place_of(line)
        return self._place(values, epoch, step, from_pattern)

    def place_of(self, line: str) -> tuple[Number | None, Number | None]:
        """`Epoch 3/10`, `epoch 3`, `step 100`: the place a patterns-only scan still reads."""
        plan = self._plan(line)
        if plan:
            tokens = _TOKEN.findall(line)
            for _, kind, index, sign in plan:
                if kind != "value" and index >= 0:
                    value = _value(tokens[index], sign)
                    return (value, None) if kind == "epoch" else (None, value)
        return None, None

    def _place(self, values: dict[str, Number], epoch: Number | None, step: Number | None,
               from_pattern: bool) -> Observation | None:
        if epoch is not None and math.isfinite(epoch):
            self.epoch = epoch
        if step is not None and math.isfinite(step):
            self.step = step
        if not values:
            # A header (`Epoch 3/10`) ends the epoch before it: an empty observation at the new place.
            place = Observation({}, self.step, self.epoch)
            if place.key is None or place.key == self.last_key or (epoch is None and step is None):
                return None
            self.last_key = place.key
            return place
        obs = Observation(values, self.step, self.epoch)
        key = obs.key
        if key is None:
            if not from_pattern:
                return None  # before the program's first step: settings and banners, not metrics
            obs = Observation(values, (self.last_key or 0) + 1, None)  # a pattern's value, each the next step
            key = obs.key
        self.last_key = key
        return obs

    # -- auto ---------------------------------------------------------------------------------

    def _plan(self, line: str) -> Plan:
        """The parse of the line's shape (cached), as (name, kind, index into its number tokens)."""
        shape = line.translate(_DIGITS)
        plan = self._cache.get(shape)
        if plan is None:
            if shape == line and not _NAN_OR_INF.search(line):
                return ()  # no digit: no value (a NaN or inf loss is one, so those are parsed)
            plan, cacheable = self._parse(line)
            if not cacheable:
                return plan
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
                self._spans.clear()
            self._cache[shape] = plan
            tokens = [m.span() for m in _TOKEN.finditer(line)]
            kind = "epoch" if any(k == "epoch" for _, k, _, _ in plan) else "step"
            self._spans[shape] = tuple(tokens[i] if i >= 0 else (0, len(line)) for _, k, i, _ in plan if k == kind)
        return plan

    def _parse(self, line: str) -> tuple[Plan, bool]:
        """The line's pairs as a plan, and whether the plan fits every line of its shape (not when
        a name holds a digit: `layer1 loss` and `layer2 loss` share a shape)."""
        if _SKIP_LINE.search(line):
            return (), True
        prefix = _PREFIX.match(line)
        start = prefix.end() if prefix else 0
        found: list[tuple[str, int]] = []
        brace = _DICT_START.search(line, start)
        if brace is not None and line.rstrip().endswith("}"):  # a dict or JSON line (after a bar, in a merged log)
            found = [(m.group("name"), m.start("num")) for m in _DICT_PAIR.finditer(line, brace.start())]
        else:
            for m in _HEADER.finditer(line, start):
                found.append((m.group("kind"), m.start("num") if m.group("num") else m.start("alone")))
            rest = list(line)
            for m in _PAIR.finditer(line, start):
                found.append((m.group("name"), m.start("num")))
                rest[m.start():m.end()] = "|" * (m.end() - m.start())
            for m in _HEADER.finditer(line, start):
                rest[m.start():m.end()] = "|" * (m.end() - m.start())
            for m in _PAREN_NUM.finditer(line, start):
                rest[m.start():m.end()] = " " * (m.end() - m.start())
            text = "".join(rest)
            pos = start
            for part in _FIELD_SPLIT.split(text[start:]):
                at = text.find(part, pos) if part else pos
                pos = at + len(part)
                lead = _LEAD.match(part)
                part_stripped = part[lead.end():].rstrip() if lead else part.strip()
                if not part_stripped or not any(c.isdigit() or c in "nN" for c in part_stripped):
                    continue
                offset = at + (lead.end() if lead else 0)
                if _FIELD_PAIRS.fullmatch(part_stripped):
                    found += [(m.group("name"), offset + m.start("num")) for m in _FIELD_PAIR.finditer(part_stripped)]
                else:
                    one = _FIELD_ONE.fullmatch(part_stripped)
                    if one:
                        found.append((one.group("name"), offset + one.start("num")))
        starts = {m.start(): i for i, m in enumerate(_TOKEN.finditer(line))}
        plan: list[tuple[str, str, int, int]] = []
        cacheable = True
        for raw, at in found:
            name = normalize(raw)
            if _ignored(name):
                continue
            cacheable &= not any(c.isdigit() for c in raw)
            kind = kind_of(name)
            sign = -1 if line[at] == "-" else 1
            digits = at + 1 if line[at] in "+-" else at
            head = line[digits:digits + 3].lower()
            index = NAN_TOKEN if head == "nan" else INF_TOKEN if head == "inf" else starts.get(digits, -1)
            if index == INF_TOKEN and sign < 0:
                index = NAN_TOKEN - 2  # -inf
            plan.append((self.rename.get(name, name) if kind == "value" else name, kind, index, sign))
        return tuple(plan), cacheable


_HEADER_SCANNER = OutputScanner()
_TRACEBACK = "Traceback (most recent call last):"


def failure_line(text: str) -> str | None:
    """Why a program failed, from the end of its stderr: the `SomeError: message` line of its last
    Python traceback (a hint printed after it is not the reason), else its last line."""
    lines = [line.rstrip() for line in clean(text).split("\n")]
    start = max((i for i, line in enumerate(lines) if line.strip() == _TRACEBACK), default=None)
    if start is not None:
        for line in lines[start + 1:]:
            if line.strip() and not line[:1].isspace():
                return line.strip()[:500]
    lines = [line.strip() for line in lines if line.strip()]
    return lines[-1][:500] if lines else None


def scan_text(text: str, mode: str = "auto", patterns: Iterable[str] = (),
              rename: Mapping[str, str] | None = None) -> list[Observation]:
    """Every observation in a saved log (`presets capture`, tests)."""
    return OutputScanner(mode, patterns, rename).feed(text)


def describe(obs: Observation) -> dict[str, Any]:
    return {"step": obs.step, "epoch": obs.epoch, **obs.values}
