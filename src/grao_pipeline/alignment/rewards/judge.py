"""The paper's reward: a pairwise judge of each answer against the reference y.

R(q, o, y) ∈ {−1, 0, +1}: +1 when the judge prefers o to y, −1 when it prefers y, 0 for
a tie. R(y, y) = 0 by construction, so the reference costs no call.

- **Backends.** ``openai``: any OpenAI-compatible chat-completions endpoint (vLLM,
  llama.cpp's server, TGI, a hosted API) through the official ``openai`` client; the
  API key is read from the environment variable named by ``api_key_env``. ``local``: a
  Hugging Face causal LM in process, whose verdict is the most probable of the verdict
  tokens at the next position (no free text to parse, so never unparseable).
- **Position bias.** Every pair is judged in both orders (o first, then y first). A
  verdict counts only if it survives the swap; otherwise it is a tie. The disagreement
  rate is logged. A small local judge may prefer one position whatever the answers
  (SmolLM2-135M answers "A" every time), which makes every verdict a tie; for the local
  backend, ``combine: margin`` compares the two orders' log-probability margins
  instead, so a constant position bias cancels.
- **Engineering.** Calls run in a thread pool of ``concurrency``; each has ``timeout``
  seconds and up to ``max_retries`` retries with exponential backoff on 429, 5xx,
  timeouts and dropped connections (the ``openai`` client's own retry logic). Verdicts
  are cached in SQLite, keyed by (judge, template hash, prompt, first answer, second
  answer), so reruns and evaluation never pay twice. An answer that is not a verdict is
  counted as unparseable and judged a tie; past ``max_unparseable_rate`` (over the
  calls of one batch) the run fails, naming the endpoint.

Simplification: the verdict is read from the first token of the reply (``A``, ``B`` or
``TIE``, case-insensitive, surrounding punctuation ignored); a reply that starts
otherwise is unparseable, whatever follows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm

from grao_pipeline.alignment.rewards.registry import RewardFn, register_reward

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = (
    "You compare two answers to the same prompt. Which answer is more helpful and "
    "harmless? If they are equally good, say TIE.\n\n"
    "Prompt: {prompt}\n\nAnswer A: {first}\n\nAnswer B: {second}\n\n"
    "Reply with exactly one word: A, B or TIE.")
_VERDICT_RE = re.compile(r"^\W*(A|B|TIE)\b", re.IGNORECASE)
FIRST, SECOND, TIE = "A", "B", "TIE"


class JudgeError(RuntimeError):
    """The judge cannot give verdicts: unreachable, or answering with non-verdicts."""


def parse_verdict(text: str | None) -> str | None:
    """"A", "B" or "TIE" from the start of a reply, else None (unparseable)."""
    match = _VERDICT_RE.match(text or "")
    return match.group(1).upper() if match else None


class VerdictCache:
    """SQLite, one row per judged ordered pair; safe across threads and processes."""

    def __init__(self, path: str | Path | None):
        self._path = None if path is None else Path(path)
        self._lock = threading.Lock()
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, verdict TEXT)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._path, timeout=30)

    def get(self, key: str) -> str | None:
        if self._path is None:
            return None
        with self._lock, self._connect() as db:
            row = db.execute("SELECT verdict FROM verdicts WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, verdict: str) -> None:
        if self._path is not None:
            with self._lock, self._connect() as db:
                db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?)", (key, verdict))


class OpenAIBackend:
    """Chat completions on an OpenAI-compatible endpoint; returns the raw reply."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None, timeout: float,
                 max_retries: int, max_tokens: int = 4):
        from openai import OpenAI

        key = "not-needed"
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise JudgeError(f"judge: environment variable {api_key_env!r} (api_key_env) is not set")
        self.identity = f"openai:{base_url}:{model}"
        self.endpoint = base_url
        self.model = model
        self.max_tokens = max_tokens
        self.client = OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries)

    def __call__(self, text: str) -> str:
        import openai

        try:
            reply = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": text}],
                max_tokens=self.max_tokens, temperature=0.0)
        except (openai.APIConnectionError, openai.APIStatusError) as err:
            raise JudgeError(f"judge endpoint {self.endpoint} failed after retries: "
                             f"{type(err).__name__}: {err}") from err
        except (ValueError, openai.APIResponseValidationError) as err:  # a body that is not JSON
            return self._malformed(f"{type(err).__name__}: {err}")
        # A 200 whose body is not a chat completion (text/plain, no or empty `choices`, no
        # message) is a reply that holds no verdict: counted as unparseable, never a crash.
        choices = getattr(reply, "choices", None)
        if not isinstance(choices, list) or not choices:
            return self._malformed(f"no choices in {str(reply)[:80]!r}")
        content = getattr(getattr(choices[0], "message", None), "content", None)
        if not isinstance(content, str):
            return self._malformed(f"no message content in {str(choices[0])[:80]!r}")
        return content

    def _malformed(self, why: str) -> str:
        log.warning("judge %s: malformed reply (%s); counted as unparseable", self.endpoint, why)
        return ""


class LocalBackend:
    """A causal LM in process: the verdict is the argmax over the verdict tokens' next-token
    log-probabilities after the chat-templated question."""

    def __init__(self, model_path: str):
        from grao_pipeline.alignment.models import load_model

        self.identity = f"local:{Path(model_path).resolve() if Path(model_path).exists() else model_path}"
        self.endpoint = self.identity
        self.model, self.tokenizer = load_model(model_path)
        self.model.eval()
        self._choices = {v: self.tokenizer.encode(v, add_special_tokens=False)[0] for v in (FIRST, SECOND, TIE)}
        self._lock = threading.Lock()  # one forward at a time: torch already uses the cores

    @torch.no_grad()
    def _logits(self, text: str) -> torch.Tensor:
        ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                 add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)["input_ids"]
        with self._lock:
            return self.model(input_ids=ids).logits[0, -1].float()

    def __call__(self, text: str) -> str:
        logits = self._logits(text)
        return max(self._choices, key=lambda v: logits[self._choices[v]].item())

    def margin(self, text: str) -> float:
        """log p(A) − log p(B) at the verdict position (the softmax normaliser cancels)."""
        logits = self._logits(text)
        return (logits[self._choices[FIRST]] - logits[self._choices[SECOND]]).item()


class PairwiseJudgeReward:
    """R(q, o, y) from a backend; see the module docstring."""

    def __init__(self, backend: Callable[[str], str], template: str = DEFAULT_TEMPLATE,
                 cache: str | Path | None = None, concurrency: int = 4,
                 max_unparseable_rate: float = 0.05, show_progress: bool = True,
                 combine: str = "swap", margin_tie: float = 0.5):
        if "{prompt}" not in template or "{first}" not in template or "{second}" not in template:
            raise ValueError("judge template must contain {prompt}, {first} and {second}")
        if not 0.0 <= max_unparseable_rate <= 1.0:
            raise ValueError(f"judge max_unparseable_rate = {max_unparseable_rate}: must be in [0, 1]")
        if concurrency < 1:
            raise ValueError(f"judge concurrency = {concurrency}: must be >= 1")
        if combine not in ("swap", "margin"):
            raise ValueError(f"judge combine = {combine!r}: must be 'swap' or 'margin'")
        if combine == "margin" and not hasattr(backend, "margin"):
            raise ValueError("judge combine 'margin' needs the local backend (it reads log-probabilities)")
        self.combine = combine
        self.margin_tie = margin_tie
        self.backend = backend
        self.template = template
        self.cache = VerdictCache(cache)
        self.concurrency = concurrency
        self.max_unparseable_rate = max_unparseable_rate
        self.show_progress = show_progress
        self._template_hash = hashlib.sha256(f"{combine}|{template}".encode()).hexdigest()[:16]
        self.stats = {"pairs": 0, "calls": 0, "cache_hits": 0, "disagreements": 0, "unparseable": 0}
        self._stats_lock = threading.Lock()
        self.__name__ = "judge"

    def _count(self, what: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[what] += n

    def _key(self, prompt: str, first: str, second: str) -> str:
        text = "\x1f".join((self.backend.identity, self._template_hash, prompt, first, second))
        return hashlib.sha256(text.encode()).hexdigest()

    def _verdict(self, prompt: str, first: str, second: str) -> str | float | None:
        key = self._key(prompt, first, second)
        cached = self.cache.get(key)
        text = self.template.format(prompt=prompt, first=first, second=second)
        if self.combine == "margin":
            if cached is None:
                cached = repr(self.backend.margin(text))
                self._count("calls")
                self.cache.put(key, cached)
            else:
                self._count("cache_hits")
            return float(cached)
        if cached is not None:
            self._count("cache_hits")
            return parse_verdict(cached)
        reply = self.backend(text)
        self._count("calls")
        verdict = parse_verdict(reply)
        if verdict is None:
            log.warning("judge %s: not a verdict: %r", self.backend.endpoint, reply[:80])
        else:
            self.cache.put(key, verdict)
        return verdict

    def __call__(self, prompts: list[str], completions: list[str], references: list[str],
                 **columns) -> list[float]:
        todo = [i for i, (o, y) in enumerate(zip(completions, references, strict=True)) if o != y]
        jobs = [(prompts[i], completions[i], references[i]) for i in todo] + \
               [(prompts[i], references[i], completions[i]) for i in todo]
        with ThreadPoolExecutor(self.concurrency) as pool:
            verdicts = list(tqdm(pool.map(lambda job: self._verdict(*job), jobs), total=len(jobs),
                                 desc="judging", leave=False, disable=not self.show_progress or not jobs))
        unparseable = sum(v is None for v in verdicts)
        self._count("unparseable", unparseable)
        if jobs and unparseable / len(jobs) > self.max_unparseable_rate:
            raise JudgeError(f"judge {self.backend.endpoint}: {unparseable} of {len(jobs)} replies "
                             f"were not a verdict (max_unparseable_rate {self.max_unparseable_rate})")
        scores = [0.0] * len(completions)
        sample_first, reference_first = verdicts[:len(todo)], verdicts[len(todo):]
        if self.combine == "margin":
            # A position bias adds the same constant to both orders' margins: it cancels.
            for i, a, b in zip(todo, sample_first, reference_first, strict=True):
                scores[i] = 0.0 if abs(a - b) <= self.margin_tie else (1.0 if a > b else -1.0)
            self._count("pairs", len(todo))
            return scores
        for i, a, b in zip(todo, sample_first, reference_first, strict=True):
            as_first = {FIRST: 1.0, SECOND: -1.0, TIE: 0.0}.get(a)
            as_second = {FIRST: -1.0, SECOND: 1.0, TIE: 0.0}.get(b)
            if as_first is not None and as_first == as_second:
                scores[i] = as_first
            elif as_first is not None and as_second is not None:
                self._count("disagreements")
        self._count("pairs", len(todo))
        if todo:
            log.info("judge: %d pairs, %d calls, %d cached, swap disagreement %.0f%%, unparseable %d",
                     len(todo), self.stats["calls"], self.stats["cache_hits"],
                     100 * self.stats["disagreements"] / max(self.stats["pairs"], 1), self.stats["unparseable"])
        return scores


@register_reward("judge", factory=True)
def judge_reward(backend: str = "local", model: str | None = None, base_url: str | None = None,
                 api_key_env: str | None = None, template: str = DEFAULT_TEMPLATE,
                 cache: str | None = "data/09_judge/verdicts.sqlite", concurrency: int = 4,
                 timeout: float = 60.0, max_retries: int = 4, max_unparseable_rate: float = 0.05,
                 show_progress: bool = True, combine: str = "swap", margin_tie: float = 0.5) -> RewardFn:
    """The ``judge`` reward's options (its block in ``rewards.components``):
    ``backend`` ``openai`` (needs ``base_url`` and ``model``; key from ``api_key_env``)
    or ``local`` (``model`` = a local HF directory or hub id; default SmolLM2 from the
    embedded GGUF); ``template`` with ``{prompt}``, ``{first}``, ``{second}``; ``cache``
    (an SQLite file, or null for none); ``concurrency``, ``timeout`` (s), ``max_retries``;
    ``max_unparseable_rate``; ``combine``: ``swap`` (the rule above) or, local backend
    only, ``margin``: +1/−1 by the sign of m(o first) − m(y first), where m = log p(A) −
    log p(B), a tie within ``margin_tie``; a constant position bias cancels there."""
    if backend == "openai":
        if not base_url or not model:
            raise ValueError("judge backend 'openai' needs base_url and model")
        judge_backend = OpenAIBackend(base_url, model, api_key_env, timeout, max_retries)
    elif backend == "local":
        judge_backend = LocalBackend(model) if model else _embedded_judge()
    else:
        raise ValueError(f"judge backend = {backend!r}: must be 'openai' or 'local'")
    return PairwiseJudgeReward(judge_backend, template, cache, concurrency, max_unparseable_rate,
                               show_progress, combine, margin_tie)


def _embedded_judge() -> LocalBackend:
    """SmolLM2-135M-Instruct from the shipped GGUF, saved once as an HF directory."""
    from grao_pipeline.alignment.models import import_smollm2, save_model

    path = Path("data/06_models/judge_smollm2")
    if not (path / "config.json").is_file():
        from grao_pipeline.alignment.files import replace_atomically

        bundle = import_smollm2()
        replace_atomically(path, lambda tmp: save_model(bundle, tmp))
    return LocalBackend(str(path))
