"""The traffic model behind `synth`: deployments, timelines, ids, and COPY text for one chunk of rows.

Instants are float64 microseconds since the Unix epoch (UTC; NaN = none), floored to whole
microseconds before use. SpendLogs values are rounded to milliseconds half up, as Postgres
rounds into `timestamp(3)`.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from ttft_reconcile.policies import POLICIES
from ttft_reconcile.synth_streams import Stream, stream_row

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

KINDS: Final[tuple[str, ...]] = (
    "broken_stream", "broken_untraced", "healthy_stream", "non_streaming", "other_call_type",
    "no_first_output", "out_of_bounds", "retried_stream", "ambiguous", "confirmed",
)
K: Final[dict[str, int]] = {name: i for i, name in enumerate(KINDS)}
FALLBACK_KINDS: Final = ("broken_stream", "broken_untraced", "no_first_output", "out_of_bounds",
                         "retried_stream", "ambiguous")
TRACED_KINDS: Final = ("broken_stream", "no_first_output", "out_of_bounds", "retried_stream", "ambiguous",
                       "confirmed")
CANDIDATE_CALL_TYPES: Final = ("anthropic_messages", "aresponses", "pass_through_endpoint")
LITELLM_VERSION: Final[dict[str, str]] = {"old": "1.82.3", "new": "1.106.12"}
NULL: Final = "\\N"
MS: Final = 1000.0
S: Final = 1_000_000.0


@dataclass(frozen=True)
class Path:
    """One way a request reaches a provider: what LiteLLM logs for it and how its stream behaves."""

    name: str
    call_type: str
    provider: str
    model: str
    model_group: str
    api_base: str  # streaming URL (what `api_base` holds for a stream)
    api_base_sync: str  # non-streaming URL
    fmt: str  # anthropic | responses | openai_chat | unknown | none
    route: str
    weight: float
    hdr_ms: float  # API call start -> response headers (median)
    fc_ms: float  # headers -> first chunk (median)
    think_ms: float  # first event -> first generated content (median)
    tps: float  # output tokens per second
    reasoning: float  # share of streams with a thinking / reasoning phase
    out_tokens: float  # median output tokens
    price_in: float  # USD per input token
    price_out: float
    id_prefix: str  # provider response id prefix


_ANT = "https://api.anthropic.com/v1/messages"
_VTX = ("https://us-east5-aiplatform.googleapis.com/v1/projects/acme-llm/locations/us-east5/publishers/"
        "anthropic/models/claude-sonnet-4-5@20250929")
_BDR = "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0"
_AZ = "https://acme-foundry.services.ai.azure.com/anthropic/v1/messages"

PATHS: Final[tuple[Path, ...]] = (
    Path("anthropic-sonnet", "anthropic_messages", "anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5",
         _ANT, _ANT, "anthropic", "/v1/messages", 30, 350, 40, 450, 70, 0.2, 350, 3e-6, 15e-6, "msg_01"),
    Path("anthropic-haiku", "anthropic_messages", "anthropic", "claude-haiku-4-5-20251001", "claude-haiku-4-5",
         _ANT, _ANT, "anthropic", "/v1/messages", 15, 250, 30, 250, 140, 0.05, 250, 1e-6, 5e-6, "msg_01"),
    Path("vertex-sonnet", "anthropic_messages", "vertex_ai", "claude-sonnet-4-5@20250929", "claude-sonnet-4-5",
         _VTX + ":streamRawPredict", _VTX + ":rawPredict", "anthropic", "/v1/messages", 10, 500, 60, 500, 65,
         0.1, 350, 3e-6, 15e-6, "msg_vrtx_01"),
    Path("bedrock-sonnet", "anthropic_messages", "bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
         "claude-sonnet-4-5", _BDR + "/invoke-with-response-stream", _BDR + "/invoke", "anthropic",
         "/v1/messages", 10, 450, 30, 500, 60, 0.1, 350, 3e-6, 15e-6, "msg_bdrk_01"),
    Path("azure-haiku", "anthropic_messages", "azure_ai", "claude-haiku-4-5", "claude-haiku-4-5", _AZ, _AZ,
         "anthropic", "/v1/messages", 4, 300, 40, 300, 120, 0.05, 250, 1e-6, 5e-6, "msg_01"),
    Path("minimax", "anthropic_messages", "minimax", "MiniMax-M2", "minimax-m2",
         "https://api.minimax.io/anthropic/v1/messages", "https://api.minimax.io/anthropic/v1/messages",
         "anthropic", "/v1/messages", 2, 600, 80, 700, 50, 0.3, 400, 0.3e-6, 1.2e-6, "msg_01"),
    Path("responses-gpt41", "aresponses", "openai", "gpt-4.1", "gpt-4.1", "https://api.openai.com/v1/responses",
         "https://api.openai.com/v1/responses", "responses", "/v1/responses", 12, 300, 20, 400, 90, 0.0, 300,
         2e-6, 8e-6, "resp_"),
    Path("responses-o4mini", "aresponses", "openai", "o4-mini", "o4-mini", "https://api.openai.com/v1/responses",
         "https://api.openai.com/v1/responses", "responses", "/v1/responses", 5, 300, 20, 300, 120, 1.0, 300,
         1.1e-6, 4.4e-6, "resp_"),
    Path("pt-anthropic", "pass_through_endpoint", "anthropic", "claude-sonnet-4-5-20250929", "", _ANT, _ANT,
         "anthropic", "/anthropic/v1/messages", 5, 350, 40, 450, 70, 0.2, 350, 3e-6, 15e-6, "msg_01"),
    Path("pt-vertex", "pass_through_endpoint", "vertex_ai", "claude-sonnet-4-5@20250929", "",
         _VTX + ":streamRawPredict", _VTX + ":rawPredict", "anthropic",
         "/vertex_ai/v1/projects/acme-llm/locations/us-east5/publishers/anthropic/models/"
         "claude-sonnet-4-5@20250929:streamRawPredict", 2, 500, 60, 500, 65, 0.1, 350, 3e-6, 15e-6, "msg_vrtx_01"),
    Path("pt-openai-chat", "pass_through_endpoint", "openai", "gpt-4.1-mini", "",
         "https://api.openai.com/v1/chat/completions", "https://api.openai.com/v1/chat/completions",
         "openai_chat", "/openai/v1/chat/completions", 3, 250, 200, 30, 110, 0.0, 250, 0.4e-6, 1.6e-6,
         "chatcmpl-"),
    Path("pt-cohere", "pass_through_endpoint", "cohere", "command-a-03-2025", "", "https://api.cohere.com/v2/chat",
         "https://api.cohere.com/v2/chat", "unknown", "/cohere/v2/chat", 2, 300, 250, 100, 80, 0.0, 250,
         2.5e-6, 10e-6, ""),
    # not candidates: LiteLLM's own wrapper stamps these, or they never stream
    Path("chat-gpt41-mini", "acompletion", "openai", "gpt-4.1-mini", "gpt-4.1-mini",
         "https://api.openai.com/v1/", "https://api.openai.com/v1/", "openai_chat", "/chat/completions", 55,
         250, 200, 30, 110, 0.0, 250, 0.4e-6, 1.6e-6, "chatcmpl-"),
    Path("chat-claude-adapter", "acompletion", "anthropic", "claude-haiku-4-5-20251001", "claude-haiku-4-5",
         _ANT, _ANT, "anthropic", "/chat/completions", 15, 250, 30, 250, 140, 0.0, 250, 1e-6, 5e-6, "chatcmpl-"),
    Path("embedding", "aembedding", "openai", "text-embedding-3-small", "text-embedding-3-small",
         "https://api.openai.com/v1/", "https://api.openai.com/v1/", "none", "/embeddings", 25, 80, 0, 0,
         1e9, 0.0, 1, 0.02e-6, 0.0, ""),
    Path("completion-legacy", "completion", "openai", "gpt-4.1-nano", "gpt-4.1-nano", "https://api.openai.com/v1/",
         "https://api.openai.com/v1/", "openai_chat", "/completions", 5, 200, 150, 30, 150, 0.0, 120,
         0.1e-6, 0.4e-6, "chatcmpl-"),
)
_CANDIDATE_PATHS: Final = [i for i, p in enumerate(PATHS) if p.call_type in CANDIDATE_CALL_TYPES]
_OTHER_PATHS: Final = [i for i, p in enumerate(PATHS) if p.call_type not in CANDIDATE_CALL_TYPES]
_SYNC_PATHS: Final = [i for i in _CANDIDATE_PATHS if PATHS[i].call_type in ("anthropic_messages", "aresponses")]


def _eligible(kind: str) -> list[int]:
    if kind == "other_call_type":
        return _OTHER_PATHS
    if kind in ("non_streaming", "retried_stream"):
        return _SYNC_PATHS
    return _CANDIDATE_PATHS


METADATA_TEMPLATE: Final = (
    '{"user_api_key": "%s", "user_api_key_alias": "%s", "user_api_key_team_id": "%s", '
    '"user_api_key_org_id": null, "user_api_key_user_id": "%s", "user_api_key_team_alias": "%s", '
    '"user_api_key_project_id": null, "spend_logs_metadata": {"client_trace": "%s"}, '
    '"requester_ip_address": "%s", "applied_guardrails": [], "batch_models": null, '
    '"mcp_tool_call_metadata": null, "vector_store_request_metadata": null, "guardrail_information": null, '
    '"usage_object": {"prompt_tokens": %d, "completion_tokens": %d, "total_tokens": %d, '
    '"prompt_tokens_details": {"cached_tokens": %d}, "completion_tokens_details": null}, '
    '"model_map_information": {"model_map_key": "%s", "model_map_value": null}, '
    '"additional_usage_values": {"cache_creation_input_tokens": 0, "cache_read_input_tokens": %d}, '
    '"status": "%s", "error_information": %s, "attempted_retries": %d, "max_retries": 2, '
    '"cold_storage_object_key": null, "litellm_overhead_time_ms": %.3f, '
    '"cost_breakdown": {"input_cost": %.8f, "output_cost": %.8f, "total_cost": %.8f}, '
    '"proxy_server_request": null}'
)
METADATA_PROBE: Final = (
    "0" * 64, "team-07-key", "team-07", "user-0007", "team-07", "", "10.20.7.7", 1800, 350, 2150, 0,
    "claude-sonnet-4-5-20250929", 0, "success", "null", 0, 4.2, 0.0054, 0.00525, 0.01065,
)
_ERROR_INFO: Final = (
    '{"error_code": "500", "error_class": "APIConnectionError", '
    '"error_message": "upstream closed the stream before the first byte", "llm_provider": "%s"}'
)
_TAGS: Final = (
    '["User-Agent: claude-cli", "User-Agent: claude-cli/2.0.14 (external, cli)"]',
    '["User-Agent: OpenAI", "User-Agent: OpenAI/Python 1.109.1"]',
    '["User-Agent: AsyncOpenAI", "User-Agent: AsyncOpenAI/Python 1.109.1"]',
    '["User-Agent: curl", "User-Agent: curl/7.88.1"]',
    "[]",
)
_KEYS: Final = 40
_SESSIONS: Final = 2000


@dataclass(frozen=True)
class Context:
    """Per-run constants for the chunk generator (instants in epoch microseconds, UTC)."""

    era: str
    since_us: int
    until_us: int
    rows: int
    shares: npt.NDArray[np.float64]
    metadata_bytes: int
    has_call_id_column: bool
    evidence: bool


@dataclass(frozen=True)
class Chunk:
    spend_text: str
    trace_text: str
    traces: int
    kinds: dict[str, int]
    truth: pd.DataFrame
    cpu_seconds: float  # thread CPU time spent building this chunk


def _hex(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


_KEY_HASH: Final = [_hex(f"sk-synthetic-{i}") for i in range(_KEYS)]
_SESSION_IDS: Final = [
    f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"
    for h in (hashlib.md5(f"session-{i}".encode()).hexdigest() for i in range(_SESSIONS))  # noqa: S324
]
_MODEL_IDS: Final = [_hex(p.name) for p in PATHS]
_B62: Final = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
_HEX: Final = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _strings(rng: np.random.Generator, m: int, length: int, alphabet: npt.NDArray[np.uint8]) -> list[str]:
    codes = alphabet[rng.integers(0, len(alphabet), size=(m, length))]
    text = codes.tobytes().decode("ascii")
    return [text[i * length:(i + 1) * length] for i in range(m)]


def _uuid4(rng: np.random.Generator, m: int) -> list[str]:
    raw = rng.integers(0, 256, size=(m, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    h = raw.tobytes().hex()
    out = []
    for i in range(m):
        s = h[i * 32:(i + 1) * 32]
        out.append(f"{s[:8]}-{s[8:12]}-{s[12:16]}-{s[16:20]}-{s[20:]}")
    return out


def _lognormal(rng: np.random.Generator, median: F64 | float, sigma: float, m: int) -> F64:
    return np.asarray(median * rng.lognormal(0.0, sigma, size=m), dtype=np.float64)


def round_ms(us: F64) -> F64:
    """Microseconds -> whole milliseconds, half up (Postgres' rounding into timestamp(3))."""
    return np.floor((us + 500.0) / MS)


def _ts_ms(ms: F64) -> list[str]:
    """Naive UTC `timestamp(3)` text (NULL for NaN)."""
    values = np.where(np.isnan(ms), 0, ms).astype(np.int64).astype("datetime64[ms]")
    text = np.datetime_as_string(values, unit="ms").tolist()
    return [NULL if bad else t for t, bad in zip(text, np.isnan(ms).tolist(), strict=True)]


def _tstz(us: F64) -> list[str]:
    """Aware UTC `timestamptz` text (NULL for NaN)."""
    values = np.where(np.isnan(us), 0, us).astype(np.int64).astype("datetime64[us]")
    text = np.datetime_as_string(values, unit="us").tolist()
    return [NULL if bad else t + "+00" for t, bad in zip(text, np.isnan(us).tolist(), strict=True)]


def _tstz_at(us: F64, rows: I64) -> dict[int, str]:
    """`_tstz` of the listed rows only, keyed by row."""
    return dict(zip(rows.tolist(), _tstz(us[rows]), strict=True))


def _attr(paths: I64, name: str) -> npt.NDArray[np.object_]:
    return np.array([getattr(p, name) for p in PATHS], dtype=object)[paths]


def _num(paths: I64, name: str) -> F64:
    return np.array([float(getattr(p, name)) for p in PATHS])[paths]


def generate_chunk(ctx: Context, rng: np.random.Generator, lo: int, m: int, extra: tuple[str, ...]) -> Chunk:
    """Rows lo..lo+m of the run: SpendLogs COPY text, trace COPY text, counts and ground truth."""
    cpu_started = time.thread_time()
    old = ctx.era == "old"
    span = max(ctx.until_us - ctx.since_us - 60 * S, 1.0)
    t0 = np.floor(ctx.since_us + (np.arange(lo, lo + m) + rng.random(m)) * span / max(ctx.rows, 1))
    kind = rng.choice(len(KINDS), size=m, p=ctx.shares)
    paths = np.zeros(m, dtype=np.int64)
    for k, name in enumerate(KINDS):
        mask = kind == k
        count = int(mask.sum())
        if count:
            eligible = _eligible(name)
            weights = np.array([PATHS[i].weight for i in eligible], dtype=np.float64)
            paths[mask] = np.array(eligible)[rng.choice(len(eligible), size=count, p=weights / weights.sum())]
    u = rng.random((m, 10))
    is_k = {name: kind == K[name] for name in KINDS}
    fmt = _attr(paths, "fmt")
    call_type = _attr(paths, "call_type")
    provider = _attr(paths, "provider")
    anthropic_messages = call_type == "anthropic_messages"
    streaming = ~is_k["non_streaming"] & ~(is_k["other_call_type"] & ((fmt == "none") | (u[:, 0] < 0.4)))
    thinking = u[:, 1] < _num(paths, "reasoning")
    keepalive = (u[:, 2] < 0.08) & (fmt != "unknown") & ~is_k["confirmed"]
    nfo = np.where(u[:, 3] < 0.3, 0, np.where((u[:, 3] < 0.65) | (fmt == "unknown"), 1, 2))  # zero/framing/tool
    nfo = np.where(is_k["no_first_output"], nfo, -1)
    agentic = is_k["retried_stream"] & anthropic_messages & (u[:, 3] < 0.4)
    retry = is_k["retried_stream"] & ~agentic
    after_end = is_k["out_of_bounds"] & (u[:, 3] < 0.5)
    before_start = is_k["out_of_bounds"] & ~after_end
    healthy_traced = is_k["healthy_stream"] & (u[:, 4] < 0.7)

    # --- the selected stream's timeline (µs) ---------------------------------------------------
    pre = np.clip(_lognormal(rng, 8 * MS, 0.5, m), 2 * MS, 80 * MS)
    hdr_d = _lognormal(rng, _num(paths, "hdr_ms") * MS, 0.35, m)
    fc_d = np.maximum(_lognormal(rng, _num(paths, "fc_ms") * MS, 0.4, m), 500.0)
    keep_d = np.where(keepalive, _lognormal(rng, 40 * MS, 0.5, m), 0.0)
    think_d = np.maximum(_lognormal(rng, _num(paths, "think_ms") * MS, 0.5, m), 5 * MS)
    reason_d = np.where(thinking, _lognormal(rng, 2500 * MS, 0.6, m), 0.0)
    tokens = np.clip(np.floor(_lognormal(rng, _num(paths, "out_tokens"), 0.7, m)), 8, 8000)
    tps = _lognormal(rng, _num(paths, "tps"), 0.2, m)
    body_d = np.maximum(tokens / tps * S, 20 * MS)
    tail_d = rng.uniform(2 * MS, 15 * MS, m)
    end_d = rng.uniform(300.0, 3 * MS, m)
    api = t0 + pre
    # a retried call: stream 0 failed at its first chunk, the retry starts after a backoff
    hdr0 = api + hdr_d * rng.uniform(0.5, 1.2, m)
    fc0 = hdr0 + fc_d
    shift = np.where(retry, fc0 - api + rng.uniform(100 * MS, 1500 * MS, m), 0.0)
    api = api + shift
    hdr = api + hdr_d
    fc = hdr + fc_d
    fe = fc + keep_d
    fo = fe + think_d
    fv = fo + reason_d
    last = fv + body_d + tail_d
    end = last + end_d
    # an agentic loop: a second round after a tool call; the row ends with it
    tool_d = _lognormal(rng, 400 * MS, 0.6, m)
    api1 = last + tool_d
    fc1 = api1 + hdr_d * rng.uniform(0.8, 1.2, m) + fc_d
    fv1 = fc1 + think_d * 0.7
    last1 = fv1 + body_d * 0.6 + tail_d
    end = np.where(agentic, last1 + end_d, end)
    # malformed: no bytes at all / framing then an error / tool call only
    zero = nfo == 0
    end = np.where(zero, hdr + rng.uniform(5 * MS, 2000 * MS, m), end)
    err_t = fe + rng.uniform(10 * MS, 800 * MS, m)
    last = np.where(nfo == 1, err_t, last)
    end = np.where(nfo == 1, err_t + end_d, end)
    nan = np.full(m, np.nan)
    fo = np.where((nfo == 1) | (fmt == "unknown"), nan, fo)
    fv = np.where((nfo >= 1) | (fmt == "unknown"), nan, fv)
    fc, fe, fo, fv, last = (np.where(zero, nan, x) for x in (fc, fe, fo, fv, last))  # no byte, no instant

    # --- SpendLogs instants (ms) ----------------------------------------------------------------
    late = old & anthropic_messages & streaming
    start_us = np.where(late, hdr + rng.uniform(1 * MS, 4 * MS, m),
                        np.where(streaming & ~is_k["other_call_type"] & ~old, t0,
                                 t0 + rng.uniform(2 * MS, 5 * MS, m)))
    start_ms = round_ms(start_us)
    end_ms = np.maximum(round_ms(end), start_ms + 1)
    # one-chunk streams whose only chunk arrived 0.3 ms before the end
    single = is_k["confirmed"]
    one = end_ms * MS - 300.0
    fc, fe, last = (np.where(single, one, x) for x in (fc, fe, last))
    fo = np.where(single & (fmt != "unknown"), one, fo)
    fv = np.where(single & (fmt != "unknown"), one, fv)
    # clock steps: the trace's instants land after endTime or before startTime
    step = rng.uniform(200 * MS, 3000 * MS, m)
    move = np.where(after_end, end_ms * MS - fc + step, np.where(before_start, start_ms * MS - fc - step, 0.0))
    fc, fe, fo, fv, last = (x + move for x in (fc, fe, fo, fv, last))
    trace_t0 = np.where(before_start, t0 + move, t0)
    trace_api = np.where(before_start, api + move, api)
    fc, fe, fo, fv, last = (np.floor(x) for x in (fc, fe, fo, fv, last))

    fallback = np.isin(kind, [K[n] for n in FALLBACK_KINDS])
    minus_one = old & fallback & (u[:, 5] < 0.35)
    stamp = round_ms(fc) + np.floor(u[:, 6] * 3)
    cst_ms = np.where(fallback, end_ms - minus_one, end_ms)
    cst_ms = np.where(is_k["healthy_stream"] | (is_k["other_call_type"] & streaming & (fmt != "none")),
                      np.minimum(stamp, end_ms - 20), cst_ms)
    cst_ms = np.where(is_k["broken_stream"] & (u[:, 7] < 0.01), np.nan, cst_ms)

    # --- ids ---------------------------------------------------------------------------------------
    call_id = _uuid4(rng, m)
    other_uuid = _uuid4(rng, m)
    b62 = _strings(rng, m, 22, _B62)
    b62b = _strings(rng, m, 22, _B62)
    b62c = _strings(rng, m, 29, _B62)
    hex48 = _strings(rng, m, 48, _HEX)
    prefix = _attr(paths, "id_prefix").tolist()
    fmts = fmt.tolist()
    response_id: list[str | None] = []
    second_id: list[str | None] = []
    for i in range(m):
        f = fmts[i]
        if f == "anthropic" and prefix[i].startswith("msg_"):
            response_id.append(prefix[i] + b62[i])
            second_id.append(prefix[i] + b62b[i])
        elif f == "responses":
            response_id.append("resp_" + hex48[i])
            second_id.append(None)
        elif f == "openai_chat" or prefix[i] == "chatcmpl-":
            response_id.append("chatcmpl-" + b62c[i])
            second_id.append(None)
        else:
            response_id.append(None)
            second_id.append(None)
    cts = call_type.tolist()
    kinds_l = kind.tolist()
    agentic_l = agentic.tolist()
    request_id: list[str] = []
    for i in range(m):
        ct, kname = cts[i], KINDS[kinds_l[i]]
        rid = response_id[i]
        if ct == "anthropic_messages" and kname == "non_streaming" and old:
            request_id.append("chatcmpl-" + other_uuid[i])
        elif ct == "aresponses" or ct in ("acompletion", "completion"):
            request_id.append(rid or call_id[i])
        elif ct == "anthropic_messages" and not old:
            request_id.append((second_id[i] if agentic_l[i] else rid) or call_id[i])
        elif ct == "pass_through_endpoint" and not old:
            request_id.append(rid or call_id[i])
        else:
            request_id.append(call_id[i])

    # --- traces -----------------------------------------------------------------------------------
    traced = np.isin(kind, [K[n] for n in TRACED_KINDS]) | healthy_traced
    trace_lines: list[str] = []
    version = LITELLM_VERSION[ctx.era]
    route = _attr(paths, "route").tolist()
    prov = provider.tolist()
    mdl = _attr(paths, "model").tolist()
    rows_t = np.flatnonzero(traced)
    rows_h = np.flatnonzero(retry | agentic)
    rows_d = np.flatnonzero(is_k["ambiguous"])
    t = {name: _tstz_at(arr, rows_t) for name, arr in (("t0", trace_t0), ("api", trace_api), ("fc", fc), ("fe", fe),
                                             ("fo", fo), ("fv", fv), ("last", last),
                                             ("rec", np.floor(end + rng.uniform(50 * MS, 900 * MS, m))))}
    helper = {name: _tstz_at(np.floor(arr), rows_h)
              for name, arr in (("api0", api - shift), ("fc0", fc0), ("api1", api1), ("fc1", fc1), ("fv1", fv1),
                                ("last1", last1))}
    decoy_d = np.floor(rng.uniform(50 * MS, 900 * MS, m))
    decoy = {name: _tstz_at(arr + decoy_d, rows_d) for name, arr in (("t0", trace_t0), ("api", trace_api), ("fc", fc),
                                                           ("fe", fe), ("fo", fo), ("fv", fv), ("last", last))}
    n_vis = np.maximum(1, tokens // np.where(fmt == "anthropic", 3, np.where(fmt == "unknown", 2, 1))).astype(int)
    n_think = np.maximum(1, np.floor(reason_d / S * tps / 3)).astype(int)
    ints = {name: arr.tolist() for name, arr in (("fc", fc), ("fe", fe), ("fo", fo), ("fv", fv), ("last", last))}
    variant = np.where(single, "single", np.where(nfo == 0, "zero", np.where(nfo == 1, "framing_error",
                       np.where(nfo == 2, "tool_only", "normal")))).tolist()
    n_traces = 0
    for i in rows_t.tolist():
        base = Stream(call_id=call_id[i], seq=0, response_id=response_id[i], route=route[i], call_type=cts[i],
                      provider=prov[i], model=mdl[i], version=version, request_start=t["t0"][i],
                      api_start=t["api"][i], first_chunk=t["fc"][i], first_event=t["fe"][i],
                      first_output=t["fo"][i], first_visible=t["fv"][i], last_chunk=t["last"][i],
                      recorded=t["rec"][i], fmt=fmts[i], variant=variant[i], thinking=bool(thinking[i]),
                      keepalive=bool(keepalive[i]), n_visible=int(n_vis[i]), n_think=int(n_think[i]),
                      offsets=(ints["fc"][i], ints["fe"][i], ints["fo"][i], ints["fv"][i], ints["last"][i]),
                      evidence=ctx.evidence)
        streams = [base]
        kname = KINDS[kinds_l[i]]
        if retry[i]:
            fc0_us = float(np.floor(fc0[i]))
            failed = Stream(call_id=call_id[i], seq=0, response_id=None, route=route[i], call_type=cts[i],
                            provider=prov[i], model=mdl[i], version=version, request_start=t["t0"][i],
                            api_start=helper["api0"][i], first_chunk=helper["fc0"][i],
                            first_event=helper["fc0"][i], first_output=NULL, first_visible=NULL,
                            last_chunk=helper["fc0"][i], recorded=t["rec"][i], fmt=fmts[i],
                            variant="error_first", thinking=False, keepalive=False, n_visible=0, n_think=0,
                            offsets=(fc0_us, fc0_us, float("nan"), float("nan"), fc0_us), evidence=ctx.evidence)
            streams = [failed, base.with_seq(1)]
        elif agentic[i]:
            fc1_us, fv1_us, l1_us = (float(np.floor(x[i])) for x in (fc1, fv1, last1))
            second = Stream(call_id=call_id[i], seq=1, response_id=second_id[i], route=route[i],
                            call_type=cts[i], provider=prov[i], model=mdl[i], version=version,
                            request_start=t["t0"][i], api_start=helper["api1"][i],
                            first_chunk=helper["fc1"][i], first_event=helper["fc1"][i],
                            first_output=helper["fv1"][i], first_visible=helper["fv1"][i],
                            last_chunk=helper["last1"][i], recorded=t["rec"][i], fmt=fmts[i], variant="normal",
                            thinking=False, keepalive=False, n_visible=max(1, int(n_vis[i]) // 2), n_think=0,
                            offsets=(fc1_us, fc1_us, fv1_us, fv1_us, l1_us), evidence=ctx.evidence)
            streams.append(second)
        elif kname == "ambiguous":
            rid = request_id[i]
            decoy_call, decoy_resp = (other_uuid[i], rid) if rid == call_id[i] else (rid, None)
            d = float(decoy_d[i])
            streams.append(
                Stream(call_id=decoy_call, seq=0, response_id=decoy_resp, route=route[i], call_type=cts[i],
                       provider=prov[i], model=mdl[i], version=version, request_start=decoy["t0"][i],
                       api_start=decoy["api"][i], first_chunk=decoy["fc"][i], first_event=decoy["fe"][i],
                       first_output=decoy["fo"][i], first_visible=decoy["fv"][i], last_chunk=decoy["last"][i],
                       recorded=t["rec"][i], fmt=fmts[i], variant=variant[i], thinking=bool(thinking[i]),
                       keepalive=bool(keepalive[i]), n_visible=int(n_vis[i]), n_think=int(n_think[i]),
                       offsets=(base.offsets[0] + d, base.offsets[1] + d, base.offsets[2] + d,
                                base.offsets[3] + d, base.offsets[4] + d), evidence=ctx.evidence)
            )
        for stream in streams:
            trace_lines.append(stream_row(stream))
        n_traces += len(streams)

    model_group = _attr(paths, "model_group").tolist()
    spend_text = _spend_text(
        ctx, rng, paths=paths, request_id=request_id, call_type=cts, model=mdl, model_group=model_group,
        provider=prov, streaming=streaming, failed=zero, completion=np.where((fmt == "none") | zero, 0, tokens),
        uniform=u, start_ms=start_ms, end_ms=end_ms, cst_ms=cst_ms, call_id=call_id, extra=extra,
    )

    truth = _truth(
        request_id=request_id, kind=kind, call_type=call_type, model_group=model_group, provider=prov,
        start_ms=start_ms, end_ms=end_ms, cst_ms=cst_ms, t0=t0, traced=traced,
        instants={"first_chunk": fc, "first_event": fe, "first_output": fo, "first_visible": fv},
        evidence=is_k["non_streaming"] & ((old & anthropic_messages) | np.isin(provider, ["bedrock", "vertex_ai"])),
    )
    counts = {name: int(is_k[name].sum()) for name in KINDS}
    return Chunk(spend_text, "".join(trace_lines), n_traces, counts, truth, time.thread_time() - cpu_started)


def _spend_text(
    ctx: Context, rng: np.random.Generator, *, paths: I64, request_id: list[str], call_type: list[str],
    model: list[str], model_group: list[str], provider: list[str], streaming: B, failed: B, completion: F64,
    uniform: F64, start_ms: F64, end_ms: F64, cst_ms: F64, call_id: list[str], extra: tuple[str, ...],
) -> str:
    """SpendLogs COPY text: the columns of `synth.SPEND_COLUMNS`, then `extra` (newer schemas)."""
    m = len(request_id)
    key = rng.integers(0, _KEYS, size=m)
    prompt = np.clip(np.floor(_lognormal(rng, 1800.0, 1.0, m)), 10, 200_000).astype(np.int64)
    cached = np.where(uniform[:, 8] < 0.4, np.floor(prompt * 0.6), 0).astype(np.int64)
    completion = completion.astype(np.int64)
    cost_in = prompt * _num(paths, "price_in")
    cost_out = completion * _num(paths, "price_out")
    status = np.where(failed, "failure", "success")
    session = rng.integers(0, _SESSIONS, size=m)
    has_session = uniform[:, 9] < 0.3
    api_base = np.where(streaming, _attr(paths, "api_base"), _attr(paths, "api_base_sync")).tolist()
    blob_len = max(0, ctx.metadata_bytes - len(METADATA_TEMPLATE % METADATA_PROBE))
    blob = base64.b64encode(rng.bytes((m * blob_len * 3) // 4 + 3)).decode("ascii") if blob_len else ""
    overhead = rng.uniform(1.0, 12.0, m)
    key_l, prompt_l, cached_l, compl_l = key.tolist(), prompt.tolist(), cached.tolist(), completion.tolist()
    cin_l, cout_l, status_l = cost_in.tolist(), cost_out.tolist(), status.tolist()
    over_l, session_l, has_session_l = overhead.tolist(), session.tolist(), has_session.tolist()
    tags = np.array(_TAGS, dtype=object)[rng.integers(0, len(_TAGS), size=m)].tolist()
    metadata: list[str] = []
    for i in range(m):
        k = key_l[i]
        metadata.append(METADATA_TEMPLATE % (
            _KEY_HASH[k], f"team-{k % 8:02d}-key-{k}", f"team-{k % 8:02d}", f"user-{k:04d}", f"team-{k % 8:02d}",
            blob[i * blob_len:(i + 1) * blob_len], f"10.20.{k % 8}.{k}", prompt_l[i], compl_l[i],
            prompt_l[i] + compl_l[i], cached_l[i], model[i], cached_l[i], status_l[i],
            (_ERROR_INFO % provider[i]) if status_l[i] == "failure" else "null", 0, over_l[i], cin_l[i], cout_l[i],
            cin_l[i] + cout_l[i],
        ))
    start_s, end_s, cst_s = _ts_ms(start_ms), _ts_ms(end_ms), _ts_ms(cst_ms)
    duration = (end_ms - start_ms).astype(np.int64).tolist()
    model_id = [_MODEL_IDS[p] for p in paths.tolist()]
    columns: list[list[str]] = [
        request_id, call_type, [_KEY_HASH[k] for k in key_l], [repr(a + b) for a, b in zip(cin_l, cout_l, strict=True)],
        [str(a + b) for a, b in zip(prompt_l, compl_l, strict=True)], list(map(str, prompt_l)),
        list(map(str, compl_l)), start_s, end_s, cst_s, model, model_id, model_group, provider, api_base,
        [f"user-{k:04d}" for k in key_l], metadata, ["None"] * m, ["Cache OFF"] * m, tags,
        [f"team-{k % 8:02d}" for k in key_l], [""] * m, [f"10.20.{k % 8}.{k}" for k in key_l], ["{}"] * m,
        ["{}"] * m, ["{}"] * m,
        [_SESSION_IDS[s] if h else NULL for s, h in zip(session_l, has_session_l, strict=True)], status_l,
        list(map(str, duration)),
    ]
    if extra:
        written = _ts_ms(end_ms + np.floor(rng.uniform(10_000, 15_000, m)))
        by_name = {"created_at": written, "updated_at": written,
                   "litellm_call_id": call_id if ctx.era == "new" else [NULL] * m}
        columns.extend(by_name[name] for name in extra)
    return "".join("\t".join(row) + "\n" for row in zip(*columns, strict=True))



def _truth(
    *, request_id: list[str], kind: I64, call_type: npt.NDArray[np.object_], model_group: list[str],
    provider: list[str], start_ms: F64, end_ms: F64, cst_ms: F64, t0: F64, traced: B,
    instants: dict[str, F64], evidence: B,
) -> pd.DataFrame:
    """Expected outcome and final completionStartTime per row and policy (DESIGN's rules)."""
    has_cst = ~np.isnan(cst_ms)
    candidate = np.isin(call_type, CANDIDATE_CALL_TYPES) & (~has_cst | (np.abs(end_ms - cst_ms) <= 5))
    ambiguous = kind == K["ambiguous"]
    frame: dict[str, object] = {
        "request_id": request_id,
        "kind": np.array(KINDS, dtype=object)[kind],
        "call_type": call_type,
        "model_group": model_group,
        "provider": provider,
        "start_time": start_ms.astype(np.int64).astype("datetime64[ms]"),
        "end_time": end_ms.astype(np.int64).astype("datetime64[ms]"),
        "completion_start_time": np.where(has_cst, cst_ms, 0).astype(np.int64).astype("datetime64[ms]"),
        "request_start_at": t0.astype(np.int64).astype("datetime64[us]"),
        "traced": traced,
        "candidate": candidate,
    }
    for policy in POLICIES:
        inst = instants[policy]
        new_ms = round_ms(inst)
        outcome = np.select(
            [~candidate, ambiguous, ~traced & evidence, ~traced, np.isnan(inst),
             (new_ms < start_ms) | (new_ms > end_ms), has_cst & (np.abs(new_ms - cst_ms) <= 1)],
            ["", "ambiguous", "not_streaming", "no_trace", "no_first_token", "out_of_bounds", "confirmed"],
            default="repaired",
        )
        after = np.where(outcome == "repaired", new_ms, np.where(has_cst, cst_ms, 0))
        frame[f"outcome_{policy}"] = outcome.astype(object)
        frame[f"cst_{policy}"] = after.astype(np.int64).astype("datetime64[ms]")
    result = pd.DataFrame(frame)
    result.loc[~has_cst, "completion_start_time"] = pd.NaT
    for policy in POLICIES:
        missing = ~has_cst & (result[f"outcome_{policy}"] != "repaired").to_numpy()
        result.loc[missing, f"cst_{policy}"] = pd.NaT
    return result


def empty_truth() -> pd.DataFrame:
    columns = ["request_id", "kind", "call_type", "model_group", "provider", "start_time", "end_time",
               "completion_start_time", "request_start_at", "traced", "candidate"]
    for policy in POLICIES:
        columns += [f"outcome_{policy}", f"cst_{policy}"]
    return pd.DataFrame(columns=columns)
