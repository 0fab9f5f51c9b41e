"""Request lengths for decode replay: the real traces, the paper's length means, batches.

Loaders (each returns ``list[RequestSpec]`` in file order; ``arrival_s`` counts seconds
after the earliest request of the file; ``source_row`` is the request's line number in
the file, the CSV header being line 1):

- :func:`load_azure`: Azure LLM inference trace 2023 (``TIMESTAMP,ContextTokens,
  GeneratedTokens``; wall-clock timestamps with up to 7 fractional digits, kept exact as
  100 ns ticks before converting).
- :func:`load_sharegpt`: ShareGPT-8k lengths (``num_prefill_tokens,num_decode_tokens,
  num_total_tokens,pd_ratio``); no arrival times: all arrive at 0, or as a seeded Poisson
  process when ``arrival_rate`` is given. The total must equal prefill + decode.
- :func:`load_mooncake`: Mooncake JSON lines (``timestamp`` in ms, ``input_length``,
  ``output_length``; ``hash_ids`` is not used).

A file that cannot be read, or a row that cannot be parsed (wrong field count, a number
that is not a non-negative integer, a prompt of 0 tokens, ...), raises
:class:`WorkloadError` naming the file and the line. The default folder is
``<repo>/../shared/workloads``, else ``/work/shared/workloads``, or ``$NEUPIMS_WORKLOADS``
(:data:`DEFAULT_ROOT`); each loader takes a path, and
:func:`load_workload` a ``root`` override.

Generators (:func:`generate_requests`): the paper's per-turn length means (ShareGPT 80
prompt / 296 output tokens, Alpaca 12 / 56; NEUPIMS.md 6). The paper gives means only; we
draw each length from a log-normal distribution with that mean (mu = ln(mean) - sigma^2/2;
sigma per profile, our choice, in :data:`PAPER_PROFILES`), round to the nearest integer
and floor at 1 token, seeded with ``numpy.random.default_rng(seed)``.

Batches (:func:`snapshot`): the decode state of ``batch_size`` requests at one moment:
KV length = prompt + tokens generated so far, under a decode-progress rule. Limits
(:func:`apply_limits`): a request longer than ``max_seq_len`` or than a capacity check
allows is clipped or rejected (``policy``), and every such request is counted in a
:class:`LimitSummary`: nothing is dropped silently.
"""
from __future__ import annotations

import csv
import json
import math
import re
from calendar import timegm
from dataclasses import dataclass, field, replace
import os
from pathlib import Path
from time import strptime
from typing import Callable, Iterable, Sequence

import numpy as np

__all__ = ["DEFAULT_ROOT", "WORKLOAD_FILES", "WorkloadError", "RequestSpec", "load_azure",
           "load_sharegpt", "load_mooncake", "load_workload", "LengthProfile", "PAPER_PROFILES",
           "generate_requests", "clip_request", "LimitSummary", "apply_limits", "BatchEntry",
           "BatchSnapshot", "snapshot", "decode_progress"]

def _default_root() -> Path:
    """``$NEUPIMS_WORKLOADS`` if set; else ``<repo>/../shared/workloads``; else the team's
    shared folder ``/work/shared/workloads`` (for clones made elsewhere, e.g. by CI)."""
    if os.environ.get("NEUPIMS_WORKLOADS"):
        return Path(os.environ["NEUPIMS_WORKLOADS"])
    for candidate in (Path(__file__).resolve().parents[2] / "shared" / "workloads",
                      Path("/work/shared/workloads")):
        if candidate.is_dir():
            return candidate
    return Path(__file__).resolve().parents[2] / "shared" / "workloads"


DEFAULT_ROOT = _default_root()

WORKLOAD_FILES = {"azure-conv": "azure_llm_2023_conv.csv",
                  "azure-code": "azure_llm_2023_code.csv",
                  "sharegpt": "sharegpt_8k_lengths.csv",
                  "mooncake": "mooncake_conversation.jsonl"}

AZURE_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
SHAREGPT_HEADER = ("num_prefill_tokens", "num_decode_tokens", "num_total_tokens", "pd_ratio")
TICKS_PER_S = 10_000_000          # Azure timestamps: 7 fractional digits = 100 ns
_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?:\.(\d{1,7}))?")
_UINT = re.compile(r"\d+")


class WorkloadError(ValueError):
    """A workload file or row that cannot be used; names the file and, for a row, its line."""

    def __init__(self, path, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class RequestSpec:
    """One request: ``prompt_tokens`` of context (prefill done elsewhere) and
    ``output_tokens`` to generate. ``source_row``: line in the source file (or sample
    number for generated requests)."""
    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    source_row: int

    @property
    def total_tokens(self) -> int:
        """KV length after the last output token: prompt + output."""
        return self.prompt_tokens + self.output_tokens


# ----------------------------------------------------------------------------- parsing

def _uint(text: str, name: str, path, line: int) -> int:
    text = text.strip()
    if not _UINT.fullmatch(text):
        raise WorkloadError(path, line, f"{name} {text!r} is not a non-negative integer")
    return int(text)


def _request(path, line: int, index: int, ticks: int, prompt: int, output: int) -> tuple:
    if prompt < 1:
        raise WorkloadError(path, line, f"a request needs at least one prompt token, got {prompt}")
    return (ticks, index, prompt, output, line)


def _finish(rows: list[tuple], ticks_per_s: float) -> list[RequestSpec]:
    """Rows (ticks, id, prompt, output, line) -> RequestSpecs, time from the earliest."""
    first = min((r[0] for r in rows), default=0)
    return [RequestSpec(i, (t - first) / ticks_per_s, p, o, line) for t, i, p, o, line in rows]


def _read_lines(path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise WorkloadError(path, None, f"cannot read the file: {error}") from None


def _csv_rows(path, header: Sequence[str]) -> Iterable[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank data row after checking the header."""
    lines = _read_lines(path)
    if not lines:
        raise WorkloadError(path, None, "the file is empty (no header)")
    try:
        rows = list(csv.reader(lines))
    except csv.Error as error:
        raise WorkloadError(path, None, f"not valid CSV: {error}") from None
    got = tuple(name.strip() for name in rows[0])
    if got != tuple(header):
        raise WorkloadError(path, 1, f"expected the header {','.join(header)}, got {','.join(got)}")
    for number, fields in enumerate(rows[1:], 2):
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise WorkloadError(path, number, f"expected {len(header)} fields "
                                f"({','.join(header)}), got {len(fields)}")
        yield number, fields


def _timestamp_ticks(text: str, path, line: int) -> int:
    """'2023-11-16 18:15:46.6805900' -> 100 ns ticks since the epoch (read as UTC), exact."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if not match:
        raise WorkloadError(path, line,
                            f"timestamp {text!r} is not 'YYYY-MM-DD hh:mm:ss[.fffffff]'")
    try:
        seconds = timegm(strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))
    except ValueError as error:
        raise WorkloadError(path, line, f"timestamp {text!r}: {error}") from None
    fraction = (match.group(2) or "").ljust(7, "0")
    return seconds * TICKS_PER_S + int(fraction)


def load_azure(path) -> list[RequestSpec]:
    """An Azure LLM inference 2023 CSV (conversation or code)."""
    rows = []
    for line, (stamp, context, generated) in _csv_rows(path, AZURE_HEADER):
        ticks = _timestamp_ticks(stamp, path, line)
        rows.append(_request(path, line, len(rows), ticks,
                             _uint(context, "ContextTokens", path, line),
                             _uint(generated, "GeneratedTokens", path, line)))
    return _finish(rows, TICKS_PER_S)


def _arrivals(count: int, arrival_rate: float | None, seed: int) -> list[float]:
    """Arrival times in seconds: all 0, or a Poisson process of ``arrival_rate`` per second."""
    if arrival_rate is None:
        return [0.0] * count
    if not arrival_rate > 0:
        raise ValueError(f"arrival_rate must be positive, got {arrival_rate}")
    gaps = np.random.default_rng(seed).exponential(1.0 / arrival_rate, count)
    return list(np.cumsum(gaps) - gaps[0]) if count else []


def load_sharegpt(path, arrival_rate: float | None = None, seed: int = 0) -> list[RequestSpec]:
    """The ShareGPT-8k lengths CSV; arrivals all at 0 s, or Poisson at ``arrival_rate``/s."""
    rows = []
    for line, (prefill, decode, total, ratio) in _csv_rows(path, SHAREGPT_HEADER):
        prompt = _uint(prefill, "num_prefill_tokens", path, line)
        output = _uint(decode, "num_decode_tokens", path, line)
        if _uint(total, "num_total_tokens", path, line) != prompt + output:
            raise WorkloadError(path, line, f"num_total_tokens {total.strip()} is not "
                                f"{prompt} + {output}")
        try:
            float(ratio)
        except ValueError:
            raise WorkloadError(path, line, f"pd_ratio {ratio!r} is not a number") from None
        rows.append(_request(path, line, len(rows), 0, prompt, output))
    times = _arrivals(len(rows), arrival_rate, seed)
    return [RequestSpec(r.id, float(t), r.prompt_tokens, r.output_tokens, r.source_row)
            for r, t in zip(_finish(rows, 1.0), times)]


def load_mooncake(path) -> list[RequestSpec]:
    """Mooncake JSON lines: ``timestamp`` (ms), ``input_length``, ``output_length``."""
    rows = []
    for line, text in enumerate(_read_lines(path), 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise WorkloadError(path, line, f"not valid JSON: {error.msg}") from None
        if not isinstance(record, dict):
            raise WorkloadError(path, line, "expected a JSON object")
        values = []
        for key in ("timestamp", "input_length", "output_length"):
            value = record.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise WorkloadError(path, line,
                                    f"{key} must be a non-negative integer, got {value!r}")
            values.append(value)
        rows.append(_request(path, line, len(rows), *values))
    return _finish(rows, 1000.0)


def load_workload(name: str, root=None, **options) -> list[RequestSpec]:
    """One of :data:`WORKLOAD_FILES` by name, from ``root`` (default :data:`DEFAULT_ROOT`)."""
    if name not in WORKLOAD_FILES:
        raise ValueError(f"unknown workload {name!r}; known workloads: {', '.join(WORKLOAD_FILES)}")
    path = Path(root if root is not None else DEFAULT_ROOT) / WORKLOAD_FILES[name]
    loader = {"azure-conv": load_azure, "azure-code": load_azure, "sharegpt": load_sharegpt,
              "mooncake": load_mooncake}[name]
    return loader(path, **options)


# ----------------------------------------------------------------------------- generators

@dataclass(frozen=True)
class LengthProfile:
    """Log-normal prompt and output lengths with the given means (sigma of the log)."""
    name: str
    mean_prompt: float
    mean_output: float
    sigma_prompt: float
    sigma_output: float

    def sample(self, rng: np.random.Generator, mean: float, sigma: float, count: int) -> np.ndarray:
        mu = math.log(mean) - sigma * sigma / 2
        return np.maximum(1, np.rint(rng.lognormal(mu, sigma, count))).astype(np.int64)


#: The paper's datasets (NEUPIMS.md 6): means from the paper, sigmas our choice.
PAPER_PROFILES = {
    "sharegpt": LengthProfile("sharegpt", 80, 296, sigma_prompt=1.0, sigma_output=0.8),
    "alpaca": LengthProfile("alpaca", 12, 56, sigma_prompt=0.6, sigma_output=0.8),
}


def generate_requests(profile: str | LengthProfile, count: int, seed: int = 0,
                      arrival_rate: float | None = None) -> list[RequestSpec]:
    """``count`` requests with lengths from ``profile`` (a name of :data:`PAPER_PROFILES`
    or a :class:`LengthProfile`); same seed, same requests. ``source_row`` = sample number
    (from 1); arrivals as in :func:`load_sharegpt`."""
    if isinstance(profile, str):
        if profile not in PAPER_PROFILES:
            raise ValueError(f"unknown length profile {profile!r}; "
                             f"known: {', '.join(PAPER_PROFILES)}")
        profile = PAPER_PROFILES[profile]
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = np.random.default_rng(seed)
    prompts = profile.sample(rng, profile.mean_prompt, profile.sigma_prompt, count)
    outputs = profile.sample(rng, profile.mean_output, profile.sigma_output, count)
    times = _arrivals(count, arrival_rate, seed + 1)
    return [RequestSpec(i, float(times[i]), int(prompts[i]), int(outputs[i]), i + 1)
            for i in range(count)]


# ----------------------------------------------------------------------------- limits

def clip_request(request: RequestSpec, limit: int) -> RequestSpec:
    """``request`` shortened to ``limit`` total tokens: the output is cut first; if the
    prompt alone reaches the limit, the prompt keeps its last ``limit - 1`` tokens and one
    output token remains. Needs ``limit >= 2``."""
    if limit < 2:
        raise ValueError(f"cannot clip to {limit} tokens: a request needs a prompt token "
                         f"and an output token")
    if request.total_tokens <= limit:
        return request
    if request.prompt_tokens < limit:
        return replace(request, output_tokens=limit - request.prompt_tokens)
    return replace(request, prompt_tokens=limit - 1, output_tokens=1)


POLICIES = ("clip", "reject")


@dataclass
class LimitSummary:
    """What the limits did to the requests considered; ``outcomes`` maps request id to
    'admitted', 'clipped_length', 'rejected_length', 'clipped_capacity',
    'rejected_capacity' or 'rejected_no_output' (a request with no output to decode).
    A request clipped by both limits counts under each clip it received."""
    policy: str
    max_seq_len: int | None
    considered: int = 0
    admitted: int = 0
    clipped_length: int = 0
    rejected_length: int = 0
    clipped_capacity: int = 0
    rejected_capacity: int = 0
    rejected_no_output: int = 0
    outcomes: dict = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return self.rejected_length + self.rejected_capacity + self.rejected_no_output

    @property
    def clipped(self) -> int:
        """Admitted requests that were shortened (by either limit)."""
        return sum(1 for o in self.outcomes.values() if o.startswith("clipped"))

    def describe(self) -> str:
        return (f"{self.considered} considered, {self.admitted} admitted ({self.clipped} clipped: "
                f"{self.clipped_length} to max_seq_len {self.max_seq_len}, {self.clipped_capacity} "
                f"to capacity), {self.rejected} rejected ({self.rejected_length} too long, "
                f"{self.rejected_capacity} over capacity, {self.rejected_no_output} without "
                f"output), "
                f"policy {self.policy}")


def _capacity_calls(capacity) -> tuple[Callable | None, Callable | None]:
    """(limit, admit) of a capacity check: a callable ``limit(request) -> int`` (largest
    total tokens the request may have), or an object with ``limit(request)`` and
    ``admit(request)`` (told each admitted request, so it can reserve space)."""
    if capacity is None:
        return None, None
    if hasattr(capacity, "limit"):
        return capacity.limit, getattr(capacity, "admit", None)
    if callable(capacity):
        return capacity, None
    raise TypeError(f"capacity must be callable or have .limit(request), got {capacity!r}")


def _limit_one(request, max_seq_len, limit_fn, policy) -> tuple[RequestSpec | None, str]:
    """The request after the limits (None if rejected) and its outcome."""
    if request.output_tokens < 1:
        return None, "rejected_no_output"
    outcome = "admitted"
    if max_seq_len is not None and request.total_tokens > max_seq_len:
        if policy == "reject" or max_seq_len < 2:
            return None, "rejected_length"
        request, outcome = clip_request(request, max_seq_len), "clipped_length"
    if limit_fn is not None:
        limit = int(limit_fn(request))
        if request.total_tokens > limit:
            if policy == "reject" or limit < 2:
                return None, "rejected_capacity"
            request, outcome = clip_request(request, limit), "clipped_capacity"
    return request, outcome


def _check_policy(policy: str, max_seq_len: int | None) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if max_seq_len is not None and max_seq_len < 1:
        raise ValueError(f"max_seq_len must be positive, got {max_seq_len}")


class _Limiter:
    """Applies the limits one request at a time, counting every outcome."""

    def __init__(self, max_seq_len, capacity, policy):
        _check_policy(policy, max_seq_len)
        self.max_seq_len, self.policy = max_seq_len, policy
        self.limit_fn, self.admit_fn = _capacity_calls(capacity)
        self.summary = LimitSummary(policy, max_seq_len)

    def __call__(self, request: RequestSpec) -> RequestSpec | None:
        kept, outcome = _limit_one(request, self.max_seq_len, self.limit_fn, self.policy)
        s = self.summary
        s.considered += 1
        s.outcomes[request.id] = outcome
        if outcome != "admitted":
            setattr(s, outcome, getattr(s, outcome) + 1)
        if kept is not None:
            s.admitted += 1
            if self.admit_fn is not None:
                self.admit_fn(kept)
        return kept


def apply_limits(requests: Iterable[RequestSpec], max_seq_len: int | None = None,
                 capacity=None, policy: str = "clip") -> tuple[list[RequestSpec], LimitSummary]:
    """The requests that can be served, in order, and the count of what was changed.

    A request without output tokens is rejected. Then, if prompt + output exceeds
    ``max_seq_len``, or the limit of the ``capacity`` check, the request is clipped
    (:func:`clip_request`) under ``policy="clip"`` or rejected under "reject".

    ``capacity``: a callable ``limit(request) -> int`` giving the longest total (prompt +
    output tokens) the request may have, or an object with ``limit(request)`` and
    ``admit(request)``; ``admit`` is told each admitted request (after clipping), in order,
    so a stateful check such as :class:`sim.kv_layout.ChannelCapacity` can reserve space.
    Capacity is checked on the total length, so that an admitted request can finish.
    """
    limiter = _Limiter(max_seq_len, capacity, policy)
    kept = [r for r in map(limiter, requests) if r is not None]
    return kept, limiter.summary


# ----------------------------------------------------------------------------- batches

@dataclass(frozen=True)
class BatchEntry:
    """A request in a decode step: ``generated`` output tokens exist; this step makes the
    next one. ``kv_len`` cached tokens are read by attention."""
    request: RequestSpec
    generated: int

    @property
    def kv_len(self) -> int:
        return self.request.prompt_tokens + self.generated

    @property
    def attention_len(self) -> int:
        """Tokens this step's attention reads: the cache plus the token appended now."""
        return self.kv_len + 1


@dataclass(frozen=True)
class BatchSnapshot:
    entries: tuple[BatchEntry, ...]
    summary: LimitSummary
    progress: str

    @property
    def kv_lens(self) -> list[int]:
        return [e.kv_len for e in self.entries]

    @property
    def attention_lens(self) -> list[int]:
        return [e.attention_len for e in self.entries]


PROGRESS_RULES = ("uniform", "start", "end")


def decode_progress(output_tokens: int, rule: str | float, rng: np.random.Generator) -> int:
    """Output tokens generated so far, in [0, output_tokens - 1] (the request still runs).

    ``"uniform"``: floor(u x output) with u uniform in [0, 1); ``"start"``: 0 (first decode
    step); ``"end"``: output - 1 (last step); a float f in [0, 1]: floor(f x output),
    at most output - 1."""
    if output_tokens < 1:
        raise ValueError(f"a request in decode needs output tokens, got {output_tokens}")
    if rule == "uniform":
        return min(int(rng.random() * output_tokens), output_tokens - 1)
    if rule == "start":
        return 0
    if rule == "end":
        return output_tokens - 1
    if isinstance(rule, (int, float)) and not isinstance(rule, bool) and 0 <= rule <= 1:
        return min(int(rule * output_tokens), output_tokens - 1)
    raise ValueError(f"unknown decode progress {rule!r}; use one of {', '.join(PROGRESS_RULES)} "
                     f"or a fraction in [0, 1]")


def snapshot(requests: Sequence[RequestSpec], batch_size: int, progress: str | float = "uniform",
             seed: int = 0, max_seq_len: int | None = None, capacity=None, policy: str = "clip",
             pick: str = "first") -> BatchSnapshot:
    """The decode state of a batch of ``batch_size`` requests.

    Requests are taken in list order (``pick="first"``) or in a seeded random order
    (``"random"``) through the limits of :func:`apply_limits` until the batch is full;
    only the requests considered appear in the summary. Each admitted request gets
    :func:`decode_progress` tokens generated (same seed, same snapshot). Raises
    ``ValueError`` if fewer than ``batch_size`` requests survive the limits.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    decode_progress(1, progress, np.random.default_rng(0))     # validates the rule early
    if pick not in ("first", "random"):
        raise ValueError(f"unknown pick {pick!r}; choose 'first' or 'random'")
    rng = np.random.default_rng(seed)
    order = range(len(requests)) if pick == "first" else rng.permutation(len(requests))
    limiter = _Limiter(max_seq_len, capacity, policy)
    entries = []
    for index in order:
        kept = limiter(requests[int(index)])
        if kept is not None:
            entries.append(BatchEntry(kept, decode_progress(kept.output_tokens, progress, rng)))
            if len(entries) == batch_size:
                break
    if len(entries) < batch_size:
        raise ValueError(f"only {len(entries)} of {len(requests)} requests fit a batch of "
                         f"{batch_size}: {limiter.summary.describe()}")
    return BatchSnapshot(tuple(entries), limiter.summary, str(progress))
